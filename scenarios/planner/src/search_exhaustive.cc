// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// search = "exhaustive": every valid plan within the horizons whose items the proposal (or the
// protocol and constraints) holds, scored in one batch.
#include <algorithm>
#include <set>

#include "mewm/tace/plan_space.h"
#include "search.h"

namespace mewm::scenarios::detail {

Expected<CandidateScore> SearchExhaustive(Search& search, const SearchSpace& space,
                                          const PlannerSpec& spec,
                                          const PlannerObserver& observer) {
  MEWM_TRY(const std::vector<Plan> all,
           EnumeratePlans(space.actions, spec.drug_horizon, spec.embolic_horizon, space.protocol));
  std::set<std::string> items(space.root_items.begin(), space.root_items.end());
  for (const SearchStage& stage : space.stages)
    items.insert(stage.items.begin(), stage.items.end());
  std::vector<Plan> plans;
  for (const Plan& p : all) {
    const bool staged = std::all_of(p.items().begin(), p.items().end(),
                                    [&](const std::string& i) { return items.count(i) > 0; });
    const bool has_required = std::all_of(space.root_items.begin(), space.root_items.end(),
                                          [&](const std::string& i) { return p.Contains(i); });
    if (staged && has_required && space.Inside(p)) plans.push_back(p);
  }
  MEWM_TRY(std::vector<CandidateScore> scores, search.Evaluate(plans, "exhaustive", 1));
  std::sort(scores.begin(), scores.end(), space.better);
  if (observer.beam) {
    const auto kept = std::min<std::ptrdiff_t>(spec.beams, std::ptrdiff_t(scores.size()));
    observer.beam("exhaustive", 1,
                  std::vector<CandidateScore>(scores.begin(), scores.begin() + kept));
  }
  return scores.front();
}

}  // namespace mewm::scenarios::detail

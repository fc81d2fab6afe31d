// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// search = "beam" (the default): a true beam search over distinct plans. Each step expands every
// kept plan by every valid next item of the stage, scores the kept plans and their expansions in
// one batch (the memo answers the kept ones), and keeps the B best distinct plans.
#include <algorithm>
#include <set>

#include "search.h"

namespace mewm::scenarios::detail {

Expected<CandidateScore> SearchBeam(Search& search, const SearchSpace& space,
                                    const PlannerSpec& spec, const PlannerObserver& observer) {
  MEWM_TRY(std::vector<CandidateScore> kept, search.Evaluate({space.root}, "root", 0));
  for (const SearchStage& stage : space.stages) {
    for (int step = 1; step <= stage.steps; ++step) {
      std::vector<Plan> candidates;
      std::set<Plan> seen;
      for (const CandidateScore& k : kept) {
        if (seen.insert(k.plan).second) candidates.push_back(k.plan);
      }
      for (const CandidateScore& k : kept) {
        for (Plan& next : space.Expand(k.plan, stage)) {
          if (seen.insert(next).second) candidates.push_back(std::move(next));
        }
      }
      MEWM_TRY(std::vector<CandidateScore> scores, search.Evaluate(candidates, stage.name, step));
      std::sort(scores.begin(), scores.end(), space.better);
      scores.resize(std::min(scores.size(), std::size_t(spec.beams)));
      kept = std::move(scores);
      if (observer.beam) observer.beam(stage.name, step, kept);
    }
  }
  return kept.front();
}

}  // namespace mewm::scenarios::detail

// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// search = "reference": MeWM's released loop, kept to compare side by side. Beams start without
// the protocol's mandatory items; the drug stage scores drug-only plans; a beam takes its argmin
// candidate only when it beats the beam's current score; the worst beam is then overwritten by
// the best; the mandatory items are appended unscored; the embolic stage repeats the same. No
// memo, one candidate per call. docs/SCENARIOS.md describes it step by step.
#include <algorithm>
#include <cmath>
#include <optional>

#include "search.h"

namespace mewm::scenarios::detail {
namespace {

struct Beam {
  Plan plan;
  std::optional<CandidateScore> score;
};

/// One stage of `steps` steps over all beams.
Status RunStage(Search& search, const SearchSpace& space, const SearchStage& stage,
                const PlannerObserver& observer, std::vector<Beam>& beams) {
  const auto rules_ok = [&](const Plan& p) { return space.actions.Violations(p, "").empty(); };
  for (int step = 1; step <= stage.steps; ++step) {
    for (std::size_t b = 0; b < beams.size(); ++b) {
      bool improved = false;
      for (const std::string& item : stage.items) {
        const Plan next = beams[b].plan.With(item);
        if (beams[b].plan.Contains(item) || !rules_ok(next)) continue;
        MEWM_TRY(CandidateScore score, search.EvaluateFresh(next, int(b), stage.name, step));
        if (!beams[b].score || score.risk_mean < beams[b].score->risk_mean) {
          beams[b].score = std::move(score);
          improved = true;
        }
      }
      // Only an improving candidate changes the plan; otherwise the beam keeps its items.
      if (improved) beams[b].plan = beams[b].score->plan;
    }
    const auto by_score = [](const Beam& x, const Beam& y) {
      const double a = x.score ? x.score->risk_mean : HUGE_VAL;
      const double c = y.score ? y.score->risk_mean : HUGE_VAL;
      return a < c;
    };
    auto best = std::min_element(beams.begin(), beams.end(), by_score);
    auto worst = std::max_element(beams.begin(), beams.end(), by_score);
    *worst = *best;
    if (observer.beam) {
      std::vector<CandidateScore> kept;
      for (const Beam& beam : beams) {
        if (beam.score) kept.push_back(*beam.score);
      }
      observer.beam(stage.name, step, kept);
    }
  }
  return {};
}

}  // namespace

Expected<CandidateScore> SearchReference(Search& search, const SearchSpace& space,
                                         const PlannerSpec& spec, const PlannerObserver& observer) {
  std::vector<Beam> beams(std::size_t(spec.beams), Beam{Plan(space.require), std::nullopt});
  MEWM_RETURN_IF_ERROR(RunStage(search, space, space.stages[0], observer, beams));
  MEWM_TRY(const std::vector<std::string> mandatory, space.actions.MandatoryItems(space.protocol));
  for (Beam& beam : beams) {
    for (const std::string& item : mandatory) beam.plan = beam.plan.With(item);
  }
  MEWM_RETURN_IF_ERROR(RunStage(search, space, space.stages[1], observer, beams));
  const Beam* best = nullptr;
  for (const Beam& beam : beams) {
    if (beam.score && (!best || beam.score->risk_mean < best->score->risk_mean)) best = &beam;
  }
  if (best == nullptr) {
    // No candidate at all (empty proposal): score the mandatory plan once.
    return search.EvaluateFresh(beams.front().plan, 0, "root", 0);
  }
  CandidateScore chosen = *best->score;
  chosen.plan = best->plan;  // as released: the score may predate the last items
  return chosen;
}

}  // namespace mewm::scenarios::detail

// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Private to the planner: the state of one patient's search (memoised, batched evaluation of
// plans) and the three search strategies, one file each (search_beam.cc, search_reference.cc,
// search_exhaustive.cc). Planner::Plan builds the search space and calls one of them.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "mewm/core/expected.h"
#include "mewm/planner/planner.h"
#include "mewm/policy/policy_model.h"
#include "mewm/tace/action_base.h"

namespace mewm::scenarios::detail {

/// One simulated outcome's score.
struct SampleScore {
  double risk = 0.0;
  survival::RiskScore curve;
};

/// The order in which plans are chosen: lower mean risk first. Equal mean risks go to the plan
/// the policy ranks higher, then to the plan whose text sorts first, so orders are deterministic.
///
/// A world model that cannot tell two plans apart gives them exactly the same score (the
/// diffusion backend with one shared drug embedding scores a plan with Nedaplatin and the same
/// plan with Raltitrexed alike). The choice between them is then the policy's, not the alphabet's.
class PlanOrder {
 public:
  /// Ties by plan text alone.
  PlanOrder() = default;
  /// A policy that proposes items: a plan's rank is the list of its proposed items' positions in
  /// the proposal (drugs in `proposal.drugs`, embolics in `proposal.embolics`), sorted, compared
  /// element by element; a plan whose list is a prefix of another's (fewer items, the same
  /// first ones) ranks higher. Items the proposal does not hold (mandatory, required) do not count.
  static PlanOrder ByItems(const policy::Proposal& proposal);
  /// A policy that writes whole plans: a plan's rank is its position in `plans`, best first;
  /// plans not among them rank below all of them.
  static PlanOrder ByPlans(const std::vector<Plan>& plans);

  /// Whether `a` is chosen before `b`.
  bool operator()(const CandidateScore& a, const CandidateScore& b) const;

 private:
  std::vector<int> Rank(const Plan& plan) const;

  std::map<std::string, int> item_rank_;
  std::map<std::string, int> plan_rank_;
};

/// How many items of `kind` the plan holds.
int CountKind(const Plan& plan, const ActionBase& actions, ItemKind kind);

/// The state of one patient's search: the memo of (plan, sample) scores, the counters and the
/// list of evaluated plans it fills in `out`.
class Search {
 public:
  Search(const PlannerSpec& spec, const PatientCase& patient, std::uint64_t run_seed,
         dynamics::DynamicsModel& dynamics, survival::SurvivalModel& survival,
         const PlannerObserver& observer, PlanDecision* out);

  /// Scores `plans` with T samples each: memoised samples are reused, the rest go to the
  /// dynamics model in batches of at most max_batch requests.
  Expected<std::vector<CandidateScore>> Evaluate(const std::vector<Plan>& plans,
                                                 const std::string& stage, int step);

  /// Scores one plan with fresh samples, one request per Simulate call and no memo: MeWM's loop.
  Expected<CandidateScore> EvaluateFresh(const Plan& plan, int beam, const std::string& stage,
                                         int step);

 private:
  Expected<std::vector<SampleScore>> Simulate(const std::vector<SimulationRequest>& batch);
  CandidateScore Aggregate(const Plan& plan, const std::vector<const SampleScore*>& samples);
  void Report(const CandidateScore& score, const std::string& stage, int step, bool memo_hit);

  const PlannerSpec& spec_;
  const PatientCase& patient_;
  std::uint64_t run_seed_;
  dynamics::DynamicsModel& dynamics_;
  survival::SurvivalModel& survival_;
  const PlannerObserver& observer_;
  PlanDecision* out_;
  std::map<std::pair<std::string, int>, SampleScore> memo_;
  std::set<std::pair<std::string, int>> pending_;
  std::map<std::string, std::size_t> evaluated_index_;
  std::uint64_t fresh_counter_ = 0;
};

/// One stage of the plan space: drugs, then embolics.
struct SearchStage {
  const char* name;
  std::vector<std::string> items;  ///< the proposal's items of this kind that may be added
  ItemKind kind;
  int horizon;  ///< at most this many items of the kind in a plan
  int steps;    ///< items the stage may add (the horizon less the root's items of the kind)
};

/// What every strategy searches: the root plan (mandatory plus required items) and the stages.
struct SearchSpace {
  const ActionBase& actions;
  const std::string& protocol;
  std::vector<std::string> require;
  std::vector<std::string> root_items;  ///< mandatory, then required items
  Plan root;
  std::vector<SearchStage> stages;  ///< drug, embolic
  /// With whole plans from the policy: the plans searched are these and their sub-plans.
  std::vector<Plan> within;
  /// How the strategies rank scored plans (ties by the proposal's order of items).
  PlanOrder better;

  /// Whether every item of `plan` is in one of `within` (always, when it is empty).
  bool Inside(const Plan& plan) const;
  /// The valid plans Inside() that add one of `stage.items` to `plan` within the stage's horizon.
  std::vector<Plan> Expand(const Plan& plan, const SearchStage& stage) const;
};

/// Every valid plan within the horizons and the proposal, scored at once.
Expected<CandidateScore> SearchExhaustive(Search& search, const SearchSpace& space,
                                          const PlannerSpec& spec, const PlannerObserver& observer);
/// A true beam search: each step expands every kept plan by every valid next item and keeps the
/// B best distinct plans.
Expected<CandidateScore> SearchBeam(Search& search, const SearchSpace& space,
                                    const PlannerSpec& spec, const PlannerObserver& observer);
/// MeWM's released loop (docs/SCENARIOS.md, "search = reference").
Expected<CandidateScore> SearchReference(Search& search, const SearchSpace& space,
                                         const PlannerSpec& spec, const PlannerObserver& observer);

}  // namespace mewm::scenarios::detail

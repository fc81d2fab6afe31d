// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The planner: searches the plan space (drug horizon, the protocol's mandatory items such as
// Lipiodol, then the embolic horizon) for the plan with the lowest predicted risk, scoring each
// candidate by the mean survival-model risk over T simulated outcomes. docs/SCENARIOS.md and
// docs/DESIGN.md ("The planner") describe the three search modes.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "mewm/core/expected.h"
#include "mewm/dynamics/dynamics_model.h"
#include "mewm/policy/policy_model.h"
#include "mewm/survival/survival_model.h"
#include "mewm/tace/action_base.h"
#include "mewm/tace/patient.h"

namespace mewm::scenarios {

enum class SearchMode {
  kBeam,        ///< true beam search over distinct partial plans (default)
  kReference,   ///< MeWM's released loop: per-beam greedy argmin, batch 1, no memo
  kExhaustive,  ///< every valid plan within the horizons
};
const char* ToString(SearchMode mode);

/// What the planner does with whole plans from a plan-writing policy (`vlm`, `openai`).
enum class ProposalMode {
  kSearch,  ///< the scenario's search over the proposed plans and their sub-plans (default)
  kScore,   ///< score each proposed plan, and the control arm, as it stands
};

struct PlannerSpec {
  SearchMode search = SearchMode::kBeam;
  int beams = 5;            ///< B
  int drug_horizon = 2;     ///< H_d: at most this many drugs
  int embolic_horizon = 2;  ///< H_e: embolics including Lipiodol
  int samples = 4;          ///< T: samples per candidate plan
  int max_batch = 1024;     ///< requests per DynamicsModel::Simulate call (bounds memory)
  /// With whole plans from the policy: search among them and their sub-plans, or score each.
  /// `reference` search always scores each (MeWM's loop starts without the mandatory items).
  ProposalMode proposals = ProposalMode::kSearch;
  /// With whole plans scored as they stand: also score the root plan (the mandatory and required
  /// items alone) when the policy did not propose it, as beam search over items scores it first.
  /// A search over the proposals always scores the root, where it starts.
  bool control_arm = true;
};

/// One scored candidate plan.
struct CandidateScore {
  Plan plan;
  double risk_mean = 0.0;            ///< mean relative risk over the samples (the score)
  double risk_std = 0.0;             ///< its spread (sample standard deviation; 0 for T = 1)
  std::vector<double> sample_risks;  ///< one per sample, in sample order
  survival::RiskScore curve;         ///< mean survival curve over the samples
  /// The spread of the samples' curves: at each time of `curve`, the lowest and the highest
  /// sample's S(t) (for plots; result.json does not store them).
  std::vector<double> survival_lo, survival_hi;
};

struct PlannerCounters {
  std::int64_t simulations = 0;        ///< outcomes simulated by the dynamics model
  std::int64_t memo_hits = 0;          ///< (plan, sample) scores reused instead of simulated
  std::int64_t batches = 0;            ///< DynamicsModel::Simulate calls
  std::int64_t model_evaluations = 0;  ///< backend work units (PDE solves, denoiser forwards)
  std::int64_t survival_scores = 0;    ///< SurvivalModel::Score calls
  std::int64_t candidates = 0;         ///< candidate evaluations reported (with repeats)
  double dynamics_seconds = 0.0;
  double survival_seconds = 0.0;
  double search_seconds = 0.0;  ///< the whole search, wall time
};

/// Called as the search goes; all optional. `stage` is "drug", "embolic" or "exhaustive".
struct PlannerObserver {
  std::function<void(const CandidateScore&, const std::string& stage, int step, bool memo_hit)>
      candidate;
  std::function<void(const std::string& stage, int step, const std::vector<CandidateScore>& kept)>
      beam;
  /// Polled between simulation batches; returning true stops the search with kCancelled.
  std::function<bool()> cancelled;
  /// Wall time of each model call: "dynamics" (one Simulate batch), "survival" (its scoring).
  std::function<void(const char* stage, double seconds)> stage_seconds;
};

struct PlanDecision {
  CandidateScore best;
  std::vector<CandidateScore> evaluated;  ///< every distinct plan scored, in first-scored order
  PlannerCounters counters;
};

namespace detail {
struct SearchSpace;  // scenarios/planner/src/search.h
}  // namespace detail

class Planner {
 public:
  /// Borrowed models must outlive the planner. kInvalidArgument for a bad spec (B, T < 1,
  /// horizons out of range), or when the constraints themselves break a rule.
  static Expected<Planner> Create(const PlannerSpec& spec, const ActionBase& actions,
                                  const std::string& protocol,
                                  const std::vector<std::string>& require,
                                  const std::vector<std::string>& forbid,
                                  dynamics::DynamicsModel& dynamics,
                                  survival::SurvivalModel& survival);

  /// Plans for one patient within the proposal's items. When the proposal carries whole plans
  /// (a plan-writing policy such as `vlm`), only those that keep the constraints, horizons and
  /// rules count. With spec.proposals = kSearch the search runs from the root plan over them and
  /// their sub-plans only (an item is added only on the way to a proposed plan); with kScore, or
  /// `reference` search, each is scored (stage "proposals", T samples each), with the root plan
  /// as a control arm (spec.control_arm), and the best is chosen. `run_seed` and
  /// the patient id seed every sample: seed = f(run seed, patient, plan, sample index), so scores
  /// never depend on batching or on the search mode's visiting order (except `reference`, which
  /// re-draws per beam as MeWM's loop does). kCancelled when the observer asks to stop.
  Expected<PlanDecision> Plan(const PatientCase& patient, const policy::Proposal& proposal,
                              std::uint64_t run_seed, const PlannerObserver& observer = {});

  /// The part of a patient the planner hands its models: the tumor's neighbourhood, wide enough
  /// for `dynamics`'s context.
  static Expected<PatientCase> ModelRegion(const PatientCase& patient,
                                           const dynamics::DynamicsModel& dynamics);

  /// The sample seed of (run, patient, plan, sample).
  static std::uint64_t SampleSeed(std::uint64_t run_seed, const std::string& patient_id,
                                  const mewm::Plan& plan, int sample_index);
  /// The shared seed of (run, patient, sample): the same simulated patient for every plan.
  static std::uint64_t SharedSeed(std::uint64_t run_seed, const std::string& patient_id,
                                  int sample_index);
  /// The planner's request for sample `sample_index` of `plan`, seeded with SampleSeed and
  /// SharedSeed: what an evaluation, an export or the run's chosen outcome asks a dynamics model
  /// for to reproduce the outcome the planner scored.
  static SimulationRequest Request(std::uint64_t run_seed, const std::string& patient_id,
                                   const mewm::Plan& plan, int sample_index);

 private:
  Planner(const PlannerSpec& spec, const ActionBase& actions, std::string protocol,
          std::vector<std::string> require, std::vector<std::string> forbid,
          dynamics::DynamicsModel& dynamics, survival::SurvivalModel& survival)
      : spec_(spec),
        actions_(actions),
        protocol_(std::move(protocol)),
        require_(std::move(require)),
        forbid_(std::move(forbid)),
        dynamics_(&dynamics),
        survival_(&survival) {}

  /// Whether a whole plan keeps the forbidden and required items, the horizons and the rules.
  bool Keeps(const mewm::Plan& plan) const;
  /// The proposal's whole plans that Keep(); kInvalidArgument when none does.
  Expected<std::vector<mewm::Plan>> ProposalPlans(const policy::Proposal& proposal) const;
  /// The mandatory and required items alone: where beam search starts, and the control arm.
  Expected<mewm::Plan> RootPlan() const;
  /// The root plan and the stages' items for this proposal (forbidden items dropped); with
  /// `within`, the search stays among those plans and their sub-plans.
  Expected<detail::SearchSpace> Space(const policy::Proposal& proposal,
                                      std::vector<mewm::Plan> within = {}) const;

  PlannerSpec spec_;
  ActionBase actions_;
  std::string protocol_;
  std::vector<std::string> require_, forbid_;
  dynamics::DynamicsModel* dynamics_;
  survival::SurvivalModel* survival_;
};

}  // namespace mewm::scenarios

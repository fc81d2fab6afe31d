// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/planner/planner.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "mewm/core/seed.h"
#include "search.h"

namespace mewm::scenarios {

const char* ToString(SearchMode mode) {
  switch (mode) {
    case SearchMode::kBeam:
      return "beam";
    case SearchMode::kReference:
      return "reference";
    case SearchMode::kExhaustive:
      return "exhaustive";
  }
  return "?";
}

namespace {

/// The drugs and embolics that `plans` hold, each once, in order of first appearance.
policy::Proposal ItemsOf(const std::vector<Plan>& plans, const ActionBase& actions) {
  policy::Proposal items;
  for (const Plan& plan : plans) {
    for (const std::string& item : plan.items()) {
      auto found = actions.Find(item);
      auto& list = found && found->kind == ItemKind::kDrug ? items.drugs : items.embolics;
      if (std::find(list.begin(), list.end(), item) == list.end()) list.push_back(item);
    }
  }
  return items;
}

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

/// Models see the tumor's neighbourhood only; outcomes then cost a small copy instead of the
/// whole CT. 20 mm covers the mechanistic margin (6 mm) plus a follow-up's growth; a backend that
/// reads more context (the diffusion model's crops) asks for more.
constexpr double kPlanningMarginMm = 20.0;

}  // namespace

Expected<PatientCase> Planner::ModelRegion(const PatientCase& patient,
                                           const dynamics::DynamicsModel& dynamics) {
  return TumorRegion(patient, std::max(kPlanningMarginMm, dynamics.context_margin_mm()));
}

std::uint64_t Planner::SampleSeed(std::uint64_t run_seed, const std::string& patient_id,
                                  const mewm::Plan& plan, int sample_index) {
  // Seed 0 means "unperturbed" to the mechanistic model; sample seeds are never 0.
  const std::uint64_t seed = DeriveSeed(
      run_seed, {HashString(patient_id), HashString(plan.ToString()), std::uint64_t(sample_index)});
  return seed == 0 ? 1 : seed;
}

std::uint64_t Planner::SharedSeed(std::uint64_t run_seed, const std::string& patient_id,
                                  int sample_index) {
  const std::uint64_t seed = DeriveSeed(
      run_seed, {HashString(patient_id), HashString("shared"), std::uint64_t(sample_index)});
  return seed == 0 ? 1 : seed;
}

SimulationRequest Planner::Request(std::uint64_t run_seed, const std::string& patient_id,
                                   const mewm::Plan& plan, int sample_index) {
  return {plan, sample_index, SampleSeed(run_seed, patient_id, plan, sample_index),
          SharedSeed(run_seed, patient_id, sample_index)};
}

Expected<Planner> Planner::Create(const PlannerSpec& spec, const ActionBase& actions,
                                  const std::string& protocol,
                                  const std::vector<std::string>& require,
                                  const std::vector<std::string>& forbid,
                                  dynamics::DynamicsModel& dynamics,
                                  survival::SurvivalModel& survival) {
  if (spec.beams < 1 || spec.samples < 1 || spec.max_batch < 1 || spec.drug_horizon < 0 ||
      spec.embolic_horizon < 0) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "planner: beams, samples and max_batch must be >= 1, horizons >= 0");
  }
  MEWM_TRY(std::vector<std::string> root, actions.MandatoryItems(protocol));
  root.insert(root.end(), require.begin(), require.end());
  MEWM_TRY(const mewm::Plan root_plan, actions.MakePlan(root));
  if (auto valid = actions.Validate(root_plan, protocol); !valid) {
    return valid.error().WithContext("planner: the required items");
  }
  if (detail::CountKind(root_plan, actions, ItemKind::kDrug) > spec.drug_horizon ||
      detail::CountKind(root_plan, actions, ItemKind::kEmbolic) > spec.embolic_horizon) {
    return MakeError(ErrorCode::kInvalidArgument, "planner: the mandatory and required items (" +
                                                      root_plan.ToString() +
                                                      ") exceed the horizons");
  }
  return Planner(spec, actions, protocol, require, forbid, dynamics, survival);
}

Expected<PlanDecision> Planner::Plan(const PatientCase& full_patient,
                                     const policy::Proposal& proposal, std::uint64_t run_seed,
                                     const PlannerObserver& observer) {
  const auto t0 = Clock::now();
  MEWM_TRY(const PatientCase patient, ModelRegion(full_patient, *dynamics_));
  PlanDecision decision;
  detail::Search search(spec_, patient, run_seed, *dynamics_, *survival_, observer, &decision);
  const policy::Proposal* items = &proposal;
  policy::Proposal proposed_items;  // with whole plans: the items they hold
  std::vector<mewm::Plan> within;
  if (!proposal.plans.empty()) {
    // A policy that writes whole plans (`vlm`, `openai`): only those that keep the scenario's
    // constraints and horizons count.
    MEWM_TRY(std::vector<mewm::Plan> plans, ProposalPlans(proposal));
    if (spec_.proposals == ProposalMode::kScore || spec_.search == SearchMode::kReference) {
      MEWM_TRY(const mewm::Plan root, RootPlan());
      if (spec_.control_arm && std::find(plans.begin(), plans.end(), root) == plans.end() &&
          Keeps(root)) {
        // A plan-writing policy rarely proposes the least intensive plan (the VLM ranks Lipiodol
        // alone below its top 15 for most patients whose optimum it is); beam search over items
        // always scores it first. It costs T simulations.
        plans.push_back(root);
      }
      MEWM_TRY(std::vector<CandidateScore> scores, search.Evaluate(plans, "proposals", 1));
      // Equal scores go to the plan the policy ranked higher; the control arm ranks last.
      std::sort(scores.begin(), scores.end(), detail::PlanOrder::ByPlans(plans));
      if (observer.beam) observer.beam("proposals", 1, scores);
      decision.best = scores.front();
      decision.counters.search_seconds = Since(t0);
      return decision;
    }
    // Search them as beam search searches every item: from the root, through their sub-plans.
    proposed_items = ItemsOf(plans, actions_);
    items = &proposed_items;
    within = std::move(plans);
  }
  MEWM_TRY(const detail::SearchSpace space, Space(*items, std::move(within)));
  const auto strategy = spec_.search == SearchMode::kExhaustive ? detail::SearchExhaustive
                        : spec_.search == SearchMode::kBeam     ? detail::SearchBeam
                                                                : detail::SearchReference;
  MEWM_TRY(decision.best, strategy(search, space, spec_, observer));
  decision.counters.search_seconds = Since(t0);
  return decision;
}

bool Planner::Keeps(const mewm::Plan& p) const {
  const bool forbidden = std::any_of(forbid_.begin(), forbid_.end(),
                                     [&](const std::string& i) { return p.Contains(i); });
  const bool has_required = std::all_of(require_.begin(), require_.end(),
                                        [&](const std::string& i) { return p.Contains(i); });
  const bool within = detail::CountKind(p, actions_, ItemKind::kDrug) <= spec_.drug_horizon &&
                      detail::CountKind(p, actions_, ItemKind::kEmbolic) <= spec_.embolic_horizon;
  return !forbidden && has_required && within && actions_.Violations(p, protocol_).empty();
}

Expected<std::vector<mewm::Plan>> Planner::ProposalPlans(const policy::Proposal& proposal) const {
  std::vector<mewm::Plan> plans;
  for (const policy::RankedPlan& ranked : proposal.plans) {
    if (Keeps(ranked.plan)) plans.push_back(ranked.plan);
  }
  if (plans.empty()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "none of the policy's " + std::to_string(proposal.plans.size()) +
                         " proposed plans keeps the scenario's constraints and horizons");
  }
  return plans;
}

Expected<mewm::Plan> Planner::RootPlan() const {
  MEWM_TRY(std::vector<std::string> items, actions_.MandatoryItems(protocol_));
  items.insert(items.end(), require_.begin(), require_.end());
  return actions_.MakePlan(items);
}

Expected<detail::SearchSpace> Planner::Space(const policy::Proposal& proposal,
                                             std::vector<mewm::Plan> within) const {
  const auto allowed = [&](const std::string& item) {
    return std::find(forbid_.begin(), forbid_.end(), item) == forbid_.end();
  };
  std::vector<std::string> drugs, embolics;
  for (const std::string& d : proposal.drugs) {
    if (allowed(d)) drugs.push_back(d);
  }
  MEWM_TRY(std::vector<std::string> root_items, actions_.MandatoryItems(protocol_));
  for (const std::string& e : proposal.embolics) {
    if (allowed(e) && std::find(root_items.begin(), root_items.end(), e) == root_items.end()) {
      embolics.push_back(e);
    }
  }
  root_items.insert(root_items.end(), require_.begin(), require_.end());
  MEWM_TRY(const mewm::Plan root, RootPlan());
  const auto count = [&](ItemKind kind) { return detail::CountKind(root, actions_, kind); };
  return detail::SearchSpace{
      actions_,
      protocol_,
      require_,
      root_items,
      root,
      {{"drug", std::move(drugs), ItemKind::kDrug, spec_.drug_horizon,
        spec_.drug_horizon - count(ItemKind::kDrug)},
       {"embolic", std::move(embolics), ItemKind::kEmbolic, spec_.embolic_horizon,
        spec_.embolic_horizon - count(ItemKind::kEmbolic)}},
      std::move(within),
      detail::PlanOrder::ByItems(proposal)};
}

}  // namespace mewm::scenarios

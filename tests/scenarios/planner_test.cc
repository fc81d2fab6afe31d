// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/planner/planner.h"

#include <gtest/gtest.h>

#include <map>
#include <optional>
#include <set>

#include "mewm/tace/plan_space.h"
#include "planning_fixture.h"

namespace mewm::scenarios {
namespace {

using testing::HandCox;
using testing::SmallWorld;

/// Counts every request that reaches the model, to prove what the planner claims.
class CountingDynamics final : public dynamics::DynamicsModel {
 public:
  explicit CountingDynamics(std::unique_ptr<dynamics::DynamicsModel> inner)
      : inner_(std::move(inner)) {}
  Expected<std::vector<Outcome>> Simulate(const PatientCase& patient,
                                          const std::vector<SimulationRequest>& requests) override {
    batch_sizes.push_back(requests.size());
    for (const SimulationRequest& r : requests) {
      ++requests_per_key[{r.plan.ToString(), r.sample_index}];
      seen.push_back(r);
    }
    if (!blind_drug) return inner_->Simulate(patient, requests);
    // A model blind to which drug a plan holds (as a generator with one shared drug embedding
    // is): any drugs become `*blind_drug` alone, and the noise is the shared draw's, so plans
    // that differ only in their drugs get exactly the same outcome.
    std::vector<SimulationRequest> blind = requests;
    for (SimulationRequest& r : blind) {
      std::vector<std::string> items;
      bool drug = false;
      for (const std::string& item : r.plan.items()) {
        const bool is_drug = ActionBase::Default().Find(item)->kind == ItemKind::kDrug;
        drug = drug || is_drug;
        if (!is_drug) items.push_back(item);
      }
      if (drug) items.push_back(*blind_drug);
      r.plan = Plan(items);
      r.seed = r.shared_seed;
    }
    MEWM_TRY(std::vector<Outcome> outcomes, inner_->Simulate(patient, blind));
    for (std::size_t i = 0; i < outcomes.size(); ++i) outcomes[i].plan = requests[i].plan;
    return outcomes;
  }
  std::int64_t evaluations() const override { return inner_->evaluations(); }
  std::string name() const override { return "counting"; }

  std::map<std::pair<std::string, int>, int> requests_per_key;
  std::vector<std::size_t> batch_sizes;
  std::vector<SimulationRequest> seen;
  std::optional<std::string> blind_drug;

 private:
  std::unique_ptr<dynamics::DynamicsModel> inner_;
};

class PlannerTest : public testing::VdbTest {
 protected:
  void SetUp() override {
    auto world = SyntheticWorld::Create(SmallWorld(), ActionBase::Default());
    ASSERT_TRUE(world);
    const SyntheticPatient sp = world->Sample(5, 0);
    auto rendered = world->Render(sp, /*tumor_region_only=*/true);
    ASSERT_TRUE(rendered) << rendered.error().message;
    patient_ = std::make_unique<PatientCase>(std::move(*rendered));
    const dynamics::TumorBiology biology = sp.biology;
    auto mech = dynamics::MechanisticDynamics::Create(
        {}, [biology](const PatientCase&) -> Expected<dynamics::TumorBiology> { return biology; });
    ASSERT_TRUE(mech);
    dynamics_ = std::make_unique<CountingDynamics>(std::move(*mech));
    auto cox = survival::CoxSurvival::Create(HandCox());
    ASSERT_TRUE(cox);
    survival_ = std::move(*cox);
    proposal_.drugs = actions_.Drugs();
    proposal_.embolics = actions_.Embolics();
  }

  Expected<PlanDecision> Run(PlannerSpec spec, const std::vector<std::string>& require = {},
                             const std::vector<std::string>& forbid = {},
                             const PlannerObserver& observer = {}) {
    MEWM_TRY(Planner planner,
             Planner::Create(spec, actions_, "cTACE", require, forbid, *dynamics_, *survival_));
    return planner.Plan(*patient_, proposal_, 42, observer);
  }

  /// A plan-writing policy's (vlm, openai) four proposals. With PVA forbidden and the default
  /// horizons only two keep the rules: Lipiodol+Epirubicin and Lipiodol+Epirubicin+Gelatin Sponge
  /// (PVA is forbidden, three drugs exceed the horizon).
  void ProposeFourPlans() {
    const auto plan = [&](const char* text) { return *actions_.ParsePlan(text); };
    proposal_.plans = {{plan("Lipiodol+Epirubicin"), -0.5},
                       {plan("Lipiodol+Cisplatin+PVA"), -1.0},
                       {plan("Lipiodol+Epirubicin+Gelatin Sponge"), -2.0},
                       {plan("Lipiodol+Epirubicin+Cisplatin+Mitomycin"), -3.0}};
  }

  /// The plans a decision scored, as a multiset: a plan scored twice shows twice.
  static std::multiset<std::string> Scored(const PlanDecision& decision) {
    std::multiset<std::string> out;
    for (const CandidateScore& c : decision.evaluated) out.insert(c.plan.ToString());
    return out;
  }

  /// Checks the error of a policy whose `n` plans all break the rules (Raltitrexed required).
  void ExpectNoProposalKeepsTheRules(PlannerSpec spec, int n) {
    auto none = Run(spec, {"Raltitrexed"});
    ASSERT_FALSE(none);
    EXPECT_NE(
        none.error().message.find("none of the policy's " + std::to_string(n) + " proposed plans"),
        std::string::npos)
        << none.error().message;
  }

  static PlannerSpec Spec(SearchMode mode, int beams = 3, int samples = 2) {
    PlannerSpec spec;
    spec.search = mode;
    spec.beams = beams;
    spec.samples = samples;
    return spec;
  }

  const ActionBase& actions_ = ActionBase::Default();
  std::unique_ptr<PatientCase> patient_;
  std::unique_ptr<CountingDynamics> dynamics_;
  std::unique_ptr<survival::SurvivalModel> survival_;
  policy::Proposal proposal_;
};

TEST_F(PlannerTest, BeamNeverSimulatesAPlanSampleTwiceAndBatchesEachStep) {
  PlannerObserver observer;
  int beam_updates = 0;
  observer.beam = [&](const std::string&, int, const std::vector<CandidateScore>& kept) {
    ++beam_updates;
    EXPECT_LE(kept.size(), 3u);
    std::set<Plan> distinct;
    for (const CandidateScore& c : kept) distinct.insert(c.plan);
    EXPECT_EQ(distinct.size(), kept.size()) << "beams must hold distinct plans";
    for (std::size_t i = 1; i < kept.size(); ++i)
      EXPECT_LE(kept[i - 1].risk_mean, kept[i].risk_mean);
  };
  auto decision = Run(Spec(SearchMode::kBeam), {}, {}, observer);
  ASSERT_TRUE(decision) << decision.error().message;
  for (const auto& [key, count] : dynamics_->requests_per_key) {
    EXPECT_EQ(count, 1) << key.first << " #" << key.second << " simulated " << count << " times";
  }
  const PlannerCounters& k = decision->counters;
  EXPECT_EQ(k.simulations, std::int64_t(dynamics_->requests_per_key.size()));
  EXPECT_EQ(k.simulations, std::int64_t(decision->evaluated.size()) * 2);
  EXPECT_GT(k.memo_hits, 0);  // kept beams are re-ranked from the memo
  // One batch for the root, then one per step: 2 drug steps + 1 embolic step.
  EXPECT_EQ(k.batches, 4);
  EXPECT_EQ(beam_updates, 3);
  EXPECT_EQ(k.model_evaluations, k.simulations);  // one PDE solve per mechanistic outcome
  EXPECT_TRUE(actions_.Validate(decision->best.plan));
  EXPECT_EQ(decision->best.sample_risks.size(), 2u);
  EXPECT_TRUE(decision->best.curve.Validate());
}

TEST_F(PlannerTest, TheSearchAsksForPlannerRequests) {
  // Evaluations, exports and the run's chosen outcome rebuild a scored outcome with
  // Planner::Request; the search must ask its model for exactly those requests.
  ASSERT_TRUE(Run(Spec(SearchMode::kBeam)));
  ASSERT_FALSE(dynamics_->seen.empty());
  std::map<int, std::set<std::uint64_t>> shared_by_sample;
  for (const SimulationRequest& r : dynamics_->seen) {
    const SimulationRequest expected = Planner::Request(42, patient_->id, r.plan, r.sample_index);
    EXPECT_EQ(r.plan, expected.plan);
    EXPECT_EQ(r.seed, expected.seed) << r.plan.ToString() << " #" << r.sample_index;
    EXPECT_EQ(r.shared_seed, expected.shared_seed);
    EXPECT_NE(r.seed, 0u);
    shared_by_sample[r.sample_index].insert(r.shared_seed);
  }
  // Common random numbers: one shared seed per sample index, whatever the plan.
  ASSERT_EQ(shared_by_sample.size(), 2u);
  EXPECT_EQ(shared_by_sample[0].size(), 1u);
  EXPECT_EQ(shared_by_sample[1].size(), 1u);
  EXPECT_NE(*shared_by_sample[0].begin(), *shared_by_sample[1].begin());
}

TEST_F(PlannerTest, BatchingNeverChangesAScore) {
  auto batched = Run(Spec(SearchMode::kBeam));
  PlannerSpec one = Spec(SearchMode::kBeam);
  one.max_batch = 1;
  auto serial = Run(one);
  ASSERT_TRUE(batched && serial);
  ASSERT_EQ(batched->evaluated.size(), serial->evaluated.size());
  for (std::size_t i = 0; i < batched->evaluated.size(); ++i) {
    EXPECT_EQ(batched->evaluated[i].plan, serial->evaluated[i].plan);
    EXPECT_EQ(batched->evaluated[i].sample_risks, serial->evaluated[i].sample_risks);
  }
  EXPECT_EQ(batched->best.plan, serial->best.plan);
  EXPECT_EQ(serial->counters.batches, serial->counters.simulations);
}

TEST_F(PlannerTest, ExhaustiveScoresEveryValidPlanAndBeamCannotBeatIt) {
  auto exhaustive = Run(Spec(SearchMode::kExhaustive, 3, 1));
  ASSERT_TRUE(exhaustive) << exhaustive.error().message;
  EXPECT_EQ(exhaustive->evaluated.size(), EnumeratePlans(actions_, 2, 2)->size());
  for (const CandidateScore& c : exhaustive->evaluated) {
    EXPECT_GE(c.risk_mean, exhaustive->best.risk_mean);
  }
  auto beam = Run(Spec(SearchMode::kBeam, 3, 1));
  ASSERT_TRUE(beam);
  EXPECT_GE(beam->best.risk_mean, exhaustive->best.risk_mean);
  // Same seeds, same plan: identical scores whatever the search mode.
  for (const CandidateScore& c : beam->evaluated) {
    for (const CandidateScore& e : exhaustive->evaluated) {
      if (e.plan == c.plan) {
        EXPECT_EQ(e.sample_risks, c.sample_risks);
      }
    }
  }
}

TEST_F(PlannerTest, ReferenceLoopRunsSeriallyWithoutMemoAndCostsMore) {
  auto beam = Run(Spec(SearchMode::kBeam));
  const std::size_t beam_requests = dynamics_->batch_sizes.size();
  auto reference = Run(Spec(SearchMode::kReference));
  ASSERT_TRUE(beam && reference) << (reference ? "" : reference.error().message);
  EXPECT_EQ(reference->counters.memo_hits, 0);
  EXPECT_EQ(reference->counters.batches, reference->counters.simulations);
  for (std::size_t i = beam_requests; i < dynamics_->batch_sizes.size(); ++i) {
    EXPECT_EQ(dynamics_->batch_sizes[i], 1u);
  }
  EXPECT_GT(reference->counters.simulations, beam->counters.simulations);
  EXPECT_TRUE(actions_.Validate(reference->best.plan));
  // As released, the drug stage scores drug-only plans (no Lipiodol yet).
  bool drug_only = false;
  for (const CandidateScore& c : reference->evaluated) drug_only |= !c.plan.Contains("Lipiodol");
  EXPECT_TRUE(drug_only);
}

TEST_F(PlannerTest, ReferenceKeepsMandatoryItemsWhenNoEmbolicImproves) {
  proposal_.embolics = {"Lipiodol"};  // nothing to add in the embolic stage
  auto reference = Run(Spec(SearchMode::kReference));
  ASSERT_TRUE(reference) << reference.error().message;
  EXPECT_TRUE(reference->best.plan.Contains("Lipiodol")) << reference->best.plan.ToString();
  EXPECT_TRUE(actions_.Validate(reference->best.plan));
}

TEST_F(PlannerTest, ConstraintsHoldForEveryCandidate) {
  auto decision = Run(Spec(SearchMode::kBeam), {"Epirubicin"}, {"PVA", "Cisplatin"});
  ASSERT_TRUE(decision) << decision.error().message;
  for (const CandidateScore& c : decision->evaluated) {
    EXPECT_TRUE(c.plan.Contains("Epirubicin")) << c.plan.ToString();
    EXPECT_FALSE(c.plan.Contains("PVA")) << c.plan.ToString();
    EXPECT_FALSE(c.plan.Contains("Cisplatin")) << c.plan.ToString();
  }
}

TEST_F(PlannerTest, ProposalLimitsTheSearch) {
  proposal_.drugs = {"Raltitrexed"};
  proposal_.embolics = {"Lipiodol", "Gelatin Sponge"};
  auto decision = Run(Spec(SearchMode::kExhaustive, 2, 1));
  ASSERT_TRUE(decision);
  // {}, {R} x {}, {GS}: four plans, all with Lipiodol.
  EXPECT_EQ(decision->evaluated.size(), 4u);
}

TEST_F(PlannerTest, WholePlansFromThePolicyAreScoredAsTheyStand) {
  // A plan-writing policy (vlm) with proposals = "score": the planner scores exactly its plans
  // that keep the constraints and horizons, T samples each, and picks the best of them; with the
  // control arm on (the default) also the root plan, Lipiodol alone, which this policy did not
  // propose.
  const auto plan = [&](const char* text) { return *actions_.ParsePlan(text); };
  const auto scoring = [](SearchMode mode) {
    PlannerSpec spec = Spec(mode, 3, 2);
    spec.proposals = ProposalMode::kScore;
    return spec;
  };
  ProposeFourPlans();
  const std::set<std::string> proposed = {"Epirubicin+Lipiodol",
                                          "Epirubicin+Gelatin Sponge+Lipiodol"};
  for (SearchMode mode : {SearchMode::kBeam, SearchMode::kExhaustive}) {
    for (bool control_arm : {false, true}) {
      PlannerSpec spec = scoring(mode);
      spec.control_arm = control_arm;
      auto decision = Run(spec, {}, {"PVA"});
      ASSERT_TRUE(decision) << decision.error().message;
      const std::multiset<std::string> scored = Scored(*decision);
      std::multiset<std::string> expected(proposed.begin(), proposed.end());
      if (control_arm) expected.insert("Lipiodol");
      EXPECT_EQ(scored, expected) << control_arm;
      EXPECT_TRUE(scored.count(decision->best.plan.ToString()));
      for (const CandidateScore& c : decision->evaluated) {
        EXPECT_GE(decision->best.risk_mean, 0.0);
        EXPECT_LE(decision->best.risk_mean, c.risk_mean);
        EXPECT_EQ(c.sample_risks.size(), 2u);
      }
    }
  }
  // A policy that proposes the root itself: it is scored once. With a required item the root
  // is the mandatory and required items together.
  proposal_.plans.push_back({plan("Lipiodol"), -4.0});
  auto once = Run(scoring(SearchMode::kBeam), {}, {"PVA"});
  ASSERT_TRUE(once) << once.error().message;
  EXPECT_EQ(once->evaluated.size(), 3u);
  auto required = Run(scoring(SearchMode::kBeam), {"Epirubicin"}, {"PVA"});
  ASSERT_TRUE(required) << required.error().message;
  EXPECT_EQ(Scored(*required), (std::multiset<std::string>{"Epirubicin+Lipiodol",
                                                           "Epirubicin+Gelatin Sponge+Lipiodol"}));
  // None of them keeps the constraints: a clear error, not an empty plan nor the control arm
  // alone.
  ExpectNoProposalKeepsTheRules(scoring(SearchMode::kBeam), 5);
}

TEST_F(PlannerTest, WholePlansFromThePolicyBoundTheSearch) {
  // proposals = "search" (the default): the search walks from the root plan through the sub-plans
  // of the proposed plans that keep the constraints, and nowhere else. Here those are
  // Lipiodol+Epirubicin and Lipiodol+Epirubicin+Gelatin Sponge (PVA is forbidden, three drugs
  // exceed the horizon), so the plans to search are the root, the two, and Lipiodol+Gelatin
  // Sponge: with 3 beams, beam search scores all four, as exhaustive search does.
  ProposeFourPlans();
  const std::multiset<std::string> walk = {"Lipiodol", "Epirubicin+Lipiodol",
                                           "Gelatin Sponge+Lipiodol",
                                           "Epirubicin+Gelatin Sponge+Lipiodol"};
  for (SearchMode mode : {SearchMode::kBeam, SearchMode::kExhaustive}) {
    for (bool control_arm : {false, true}) {  // no effect: the root is where the search starts
      PlannerSpec spec = Spec(mode, 3, 2);
      spec.control_arm = control_arm;
      auto decision = Run(spec, {}, {"PVA"});
      ASSERT_TRUE(decision) << decision.error().message;
      EXPECT_EQ(Scored(*decision), walk) << ToString(mode) << " " << control_arm;
      EXPECT_TRUE(walk.count(decision->best.plan.ToString()));
    }
  }
  // With one beam, beam search keeps one plan per step: it scores fewer than the walk holds and
  // still nothing outside it (never Cisplatin, though the other items' plans would allow it).
  auto narrow = Run(Spec(SearchMode::kBeam, 1, 2), {}, {"PVA"});
  ASSERT_TRUE(narrow) << narrow.error().message;
  for (const std::string& p : Scored(*narrow)) EXPECT_TRUE(walk.count(p)) << p;
  EXPECT_LE(narrow->evaluated.size(), walk.size());
  // A required item is in the root: the walk starts there.
  auto required = Run(Spec(SearchMode::kBeam), {"Epirubicin"}, {"PVA"});
  ASSERT_TRUE(required) << required.error().message;
  EXPECT_EQ(Scored(*required), (std::multiset<std::string>{"Epirubicin+Lipiodol",
                                                           "Epirubicin+Gelatin Sponge+Lipiodol"}));
  // MeWM's loop has no sub-plans to walk (it starts without Lipiodol): it scores the plans as
  // they stand, with the control arm.
  auto reference = Run(Spec(SearchMode::kReference), {}, {"PVA"});
  ASSERT_TRUE(reference) << reference.error().message;
  EXPECT_EQ(Scored(*reference), (std::multiset<std::string>{"Lipiodol", "Epirubicin+Lipiodol",
                                                            "Epirubicin+Gelatin Sponge+Lipiodol"}));
  // None of them keeps the constraints: the same clear error as when scoring.
  ExpectNoProposalKeepsTheRules(Spec(SearchMode::kBeam), 4);
}

TEST_F(PlannerTest, PlansTheModelCannotTellApartGoToThePolicysRanking) {
  // A model that cannot tell the drugs apart scores every single-drug plan exactly alike (and a
  // second drug adds nothing). The choice between them is then the policy's: its first drug, in
  // beam and exhaustive search, whichever end of the alphabet it sits at. It used to be the plan
  // whose text sorts first (Cisplatin, whatever the policy proposed).
  dynamics_->blind_drug = "Epirubicin";
  survival::CoxFit fit = HandCox();
  fit.beta[4] = 0.0;  // no toxicity term: only the outcome, which cannot tell the drugs apart
  auto cox = survival::CoxSurvival::Create(fit);
  ASSERT_TRUE(cox);
  survival_ = std::move(*cox);
  PlannerSpec spec = Spec(SearchMode::kBeam, 3, 2);
  spec.embolic_horizon = 1;  // Lipiodol alone: the drugs decide
  for (SearchMode mode : {SearchMode::kBeam, SearchMode::kExhaustive}) {
    spec.search = mode;
    for (const std::vector<std::string>& drugs :
         {std::vector<std::string>{"Raltitrexed", "Nedaplatin", "Cisplatin"},
          std::vector<std::string>{"Nedaplatin", "Cisplatin", "Raltitrexed"},
          std::vector<std::string>{"Cisplatin", "Raltitrexed", "Nedaplatin"}}) {
      proposal_.drugs = drugs;
      auto decision = Run(spec);
      ASSERT_TRUE(decision) << decision.error().message;
      // The tie is real: every plan with a drug scored alike, and better than Lipiodol alone.
      int with_drug = 0;
      for (const CandidateScore& c : decision->evaluated) {
        if (c.plan.size() == 1) {
          EXPECT_GT(c.risk_mean, decision->best.risk_mean);
        } else {
          EXPECT_EQ(c.risk_mean, decision->best.risk_mean) << c.plan.ToString();
          ++with_drug;
        }
      }
      EXPECT_GE(with_drug, 3);
      EXPECT_EQ(decision->best.plan, *actions_.MakePlan({"Lipiodol", drugs.front()}))
          << ToString(mode) << " chose " << decision->best.plan.ToString();
    }
  }
  // A policy that writes whole plans: equal scores go to the plan it ranked higher.
  const auto plan = [&](const char* text) { return *actions_.ParsePlan(text); };
  spec.proposals = ProposalMode::kScore;
  for (const bool reversed : {false, true}) {
    proposal_.plans = {{plan("Lipiodol+Raltitrexed"), -0.5}, {plan("Lipiodol+Nedaplatin"), -0.9}};
    if (reversed) std::swap(proposal_.plans[0], proposal_.plans[1]);
    auto decision = Run(spec);
    ASSERT_TRUE(decision) << decision.error().message;
    EXPECT_EQ(decision->best.plan, proposal_.plans.front().plan) << reversed;
  }
}

TEST_F(PlannerTest, CancelStopsBetweenBatches) {
  PlannerObserver observer;
  int polls = 0;
  observer.cancelled = [&] { return ++polls > 2; };
  auto decision = Run(Spec(SearchMode::kBeam), {}, {}, observer);
  ASSERT_FALSE(decision);
  EXPECT_EQ(decision.error().code, ErrorCode::kCancelled);
  EXPECT_EQ(dynamics_->batch_sizes.size(), 2u);
}

TEST_F(PlannerTest, RejectsBadSpecsAndRuleBreakingConstraints) {
  PlannerSpec bad = Spec(SearchMode::kBeam, 0);
  EXPECT_FALSE(Planner::Create(bad, actions_, "cTACE", {}, {}, *dynamics_, *survival_));
  auto rule = Planner::Create(Spec(SearchMode::kBeam), actions_, "cTACE",
                              {"Cisplatin", "Oxaliplatin"}, {}, *dynamics_, *survival_);
  ASSERT_FALSE(rule);
  EXPECT_NE(rule.error().message.find("platinum"), std::string::npos) << rule.error().message;
  auto horizon =
      Planner::Create(Spec(SearchMode::kBeam), actions_, "cTACE",
                      {"Epirubicin", "Raltitrexed", "Mitomycin"}, {}, *dynamics_, *survival_);
  ASSERT_FALSE(horizon);
  EXPECT_NE(horizon.error().message.find("horizon"), std::string::npos);
}

}  // namespace
}  // namespace mewm::scenarios

// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/policy/plan_grammar.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <set>

#include "mewm/tace/plan_space.h"

namespace mewm::policy {
namespace {

PlanGrammar DefaultGrammar(int drugs = 2, int embolics = 2) {
  auto g = PlanGrammar::Create(ActionBase::Default(), {drugs, embolics, "cTACE"});
  EXPECT_TRUE(g) << g.error().ToString();
  return std::move(g).value();
}

TEST(PlanGrammarTest, AcceptsExactlyThePlannersPlanSpace) {
  const ActionBase& actions = ActionBase::Default();
  const PlanGrammar g = DefaultGrammar();
  auto all = EnumeratePlans(actions, 2, 2, "cTACE");
  ASSERT_TRUE(all);
  std::set<Plan> expected(all->begin(), all->end());
  expected.erase(Plan());
  EXPECT_EQ(std::set<Plan>(g.plans().begin(), g.plans().end()), expected);
  EXPECT_EQ(g.plans().size(), 185u);  // the synthetic world's plan space
  EXPECT_EQ(g.max_length(), 5);       // Lipiodol + 1 embolic + 2 drugs + end
  for (const Plan& p : g.plans()) {
    EXPECT_TRUE(actions.Validate(p)) << p.ToString();
    EXPECT_TRUE(p.Contains("Lipiodol")) << p.ToString();
  }
  // Plans are written embolics first, in file order: the example sentence.
  auto tokens = g.Encode(*actions.ParsePlan("Lipiodol+Gelatin Sponge+Raltitrexed+THP"));
  ASSERT_TRUE(tokens) << tokens.error().ToString();
  std::vector<std::string> written;
  for (int t : *tokens) {
    if (t != PlanGrammar::kEnd) written.push_back(g.items()[std::size_t(t - 1)]);
  }
  EXPECT_EQ(written,
            (std::vector<std::string>{"Lipiodol", "Gelatin Sponge", "Raltitrexed", "Pirarubicin"}));
  auto back = g.Decode(*tokens);
  ASSERT_TRUE(back);
  EXPECT_EQ(back->ToString(), "Gelatin Sponge+Lipiodol+Pirarubicin+Raltitrexed");
}

TEST(PlanGrammarTest, AllowedTokensFollowTheRules) {
  const PlanGrammar g = DefaultGrammar();
  const std::vector<bool> none(g.items().size(), false);
  const auto token = [&](const std::string& item) {
    for (std::size_t i = 0; i < g.items().size(); ++i) {
      if (g.items()[i] == item) return int(i) + 1;
    }
    return -1;
  };
  // Mandatory Lipiodol is the first embolic: nothing may start without it, and no empty plan.
  EXPECT_EQ(g.Allowed({}, none), (std::vector<int>{token("Lipiodol")}));
  // After Lipiodol + PVA: no Gelatin Sponge or Alcohol (exclusions), no second extra embolic
  // (horizon); the plan may end.
  const std::vector<int> after = g.Allowed({token("Lipiodol"), token("PVA")}, none);
  EXPECT_EQ(after.front(), PlanGrammar::kEnd);
  for (const char* banned : {"Gelatin Sponge", "Absolute Alcohol", "NBCA"}) {
    EXPECT_EQ(std::count(after.begin(), after.end(), token(banned)), 0) << banned;
  }
  // One platinum at most.
  const std::vector<int> platinum = g.Allowed({token("Lipiodol"), token("Oxaliplatin")}, none);
  EXPECT_EQ(std::count(platinum.begin(), platinum.end(), token("Cisplatin")), 0);
  EXPECT_EQ(std::count(platinum.begin(), platinum.end(), token("Mitomycin")), 1);
  // A contraindicated item is never reachable.
  Covariates cp_b;
  cp_b.child_pugh = 'B';
  const auto contra = Contraindications(cp_b, ActionBase::Default());
  ASSERT_EQ(contra.size(), 1u);
  EXPECT_EQ(contra[0].item, "Absolute Alcohol");
  EXPECT_TRUE(Contraindications(Covariates{}, ActionBase::Default()).empty());
  const std::vector<bool> no_alcohol = g.ForbiddenMask({"Absolute Alcohol"});
  const std::vector<int> first = g.Allowed({token("Lipiodol")}, no_alcohol);
  EXPECT_EQ(std::count(first.begin(), first.end(), token("Absolute Alcohol")), 0);
  EXPECT_FALSE(
      g.Accepts(*ActionBase::Default().ParsePlan("Lipiodol+Absolute Alcohol"), no_alcohol));
  EXPECT_TRUE(g.Accepts(*ActionBase::Default().ParsePlan("Lipiodol+Absolute Alcohol"), none));
}

/// The validator agrees with every plan the decoder writes, whatever the model says: random
/// logits (some huge, some tied) for 2,000 patients with random contraindications and K.
TEST(PlanGrammarTest, EveryDecodedPlanIsValidUnderRandomLogits) {
  const ActionBase& actions = ActionBase::Default();
  std::mt19937_64 rng(16);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::uniform_int_distribution<int> pick(0, 3);
  int decoded = 0;
  for (const auto& [hd, he] : std::vector<std::pair<int, int>>{{2, 2}, {1, 2}, {2, 3}, {0, 1}}) {
    const PlanGrammar g = DefaultGrammar(hd, he);
    for (int trial = 0; trial < 500; ++trial) {
      const float scale = trial % 3 == 0 ? 50.f : trial % 3 == 1 ? 1.f : 0.f;  // 0: all ties
      const StepFunction step = [&](const std::vector<std::vector<int>>& prefixes) {
        std::vector<std::vector<float>> rows(prefixes.size());
        for (auto& row : rows) {
          for (int t = 0; t < g.vocab_size(); ++t) row.push_back(scale * normal(rng));
        }
        return Expected<std::vector<std::vector<float>>>(rows);
      };
      std::vector<std::string> forbidden;
      if (pick(rng) == 0) forbidden.push_back("Absolute Alcohol");
      if (pick(rng) == 0) forbidden.push_back("Cisplatin");
      const std::vector<bool> mask = g.ForbiddenMask(forbidden);
      const int k = 1 + trial % 12;
      auto plans = BeamDecode(g, mask, step, k, std::max(16, 2 * k));
      ASSERT_TRUE(plans) << plans.error().ToString();
      ASSERT_FALSE(plans->empty());
      EXPECT_LE(int(plans->size()), k);
      std::set<Plan> distinct;
      double previous = 0.0;
      for (const RankedPlan& r : *plans) {
        ++decoded;
        EXPECT_TRUE(actions.Validate(r.plan)) << r.plan.ToString();
        EXPECT_TRUE(g.Accepts(r.plan, mask)) << r.plan.ToString();
        for (const std::string& f : forbidden) EXPECT_FALSE(r.plan.Contains(f));
        int drugs = 0, embolics = 0;
        for (const std::string& item : r.plan.items()) {
          (actions.Find(item)->kind == ItemKind::kDrug ? drugs : embolics) += 1;
        }
        EXPECT_LE(drugs, hd);
        EXPECT_LE(embolics, he);
        EXPECT_LE(r.log_prob, 1e-9);
        EXPECT_LE(r.log_prob, previous + 1e-9);
        previous = r.log_prob;
        EXPECT_TRUE(distinct.insert(r.plan).second) << "repeated " << r.plan.ToString();
      }
    }
  }
  EXPECT_GT(decoded, 10000);
}

TEST(PlanGrammarTest, FullBeamGivesAProbabilityDistributionOverAllPlans) {
  const PlanGrammar g = DefaultGrammar();
  std::mt19937_64 rng(3);
  std::normal_distribution<float> normal(0.f, 2.f);
  // A deterministic function of the prefix, as a real model is.
  const StepFunction step = [&](const std::vector<std::vector<int>>& prefixes) {
    std::vector<std::vector<float>> rows;
    for (const auto& p : prefixes) {
      std::seed_seq seq(p.begin(), p.end());
      std::mt19937 local(seq);
      std::vector<float> row;
      for (int t = 0; t < g.vocab_size(); ++t) row.push_back(float(local() % 1000) / 250.f);
      rows.push_back(row);
    }
    return Expected<std::vector<std::vector<float>>>(rows);
  };
  const int all = int(g.plans().size());
  auto plans = BeamDecode(g, std::vector<bool>(g.items().size(), false), step, all, 4 * all);
  ASSERT_TRUE(plans) << plans.error().ToString();
  EXPECT_EQ(int(plans->size()), all);
  double total = 0.0;
  for (const RankedPlan& r : *plans) total += std::exp(r.log_prob);
  EXPECT_NEAR(total, 1.0, 1e-6);
  // A narrow beam finds the same best plan here as the full search (greedy-consistent logits
  // are not guaranteed, but the best plan's probability can only be at most the full one's).
  auto top = BeamDecode(g, std::vector<bool>(g.items().size(), false), step, 1, 16);
  ASSERT_TRUE(top);
  EXPECT_LE(top->front().log_prob, plans->front().log_prob + 1e-12);
  (void)normal;
}

TEST(PlanGrammarTest, BadArgumentsAndBadModelOutputsAreErrors) {
  EXPECT_EQ(PlanGrammar::Create(ActionBase::Default(), {-1, 2, "cTACE"}).error().code,
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(PlanGrammar::Create(ActionBase::Default(), {2, 2, "nope"}).error().code,
            ErrorCode::kNotFound);
  const PlanGrammar g = DefaultGrammar();
  const std::vector<bool> none(g.items().size(), false);
  const auto rows_of = [&](std::vector<float> row) {
    return StepFunction([row](const std::vector<std::vector<int>>& prefixes) {
      return Expected<std::vector<std::vector<float>>>(
          std::vector<std::vector<float>>(prefixes.size(), row));
    });
  };
  const StepFunction good = rows_of(std::vector<float>(std::size_t(g.vocab_size()), 0.f));
  EXPECT_EQ(BeamDecode(g, none, good, 0, 4).error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(BeamDecode(g, none, good, 5, 4).error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(BeamDecode(g, none, rows_of({0.f, 1.f}), 1, 4).error().code, ErrorCode::kCorruptData);
  std::vector<float> nan_row(std::size_t(g.vocab_size()), std::nanf(""));
  EXPECT_EQ(BeamDecode(g, none, rows_of(nan_row), 1, 4).error().code, ErrorCode::kCorruptData);
  const StepFunction failing = [](const std::vector<std::vector<int>>&) {
    return Expected<std::vector<std::vector<float>>>(MakeError(ErrorCode::kIo, "model fell over"));
  };
  EXPECT_EQ(BeamDecode(g, none, failing, 1, 4).error().code, ErrorCode::kIo);
  // Every plan forbidden (Lipiodol is mandatory): no plan, a clear error.
  EXPECT_EQ(BeamDecode(g, g.ForbiddenMask({"Lipiodol"}), good, 1, 4).error().code,
            ErrorCode::kInvalidArgument);
  // Encode refuses what the grammar does not accept; Decode refuses unknown tokens.
  EXPECT_FALSE(g.Encode(*ActionBase::Default().ParsePlan("Cisplatin+Oxaliplatin+Lipiodol")));
  EXPECT_FALSE(g.Encode(*ActionBase::Default().ParsePlan("Cisplatin")));
  EXPECT_FALSE(g.Decode({99}));
}

TEST(PlanGrammarTest, ProposalPlansAreCanonicalAndDistinct) {
  const ActionBase& actions = ActionBase::Default();
  Proposal p;
  p.plans = {{Plan({"THP", "lipiodol"}), -0.1}, {Plan({"Cisplatin", "Lipiodol"}), -2.0}};
  auto c = CanonicalizeProposal(p, actions);
  ASSERT_TRUE(c) << c.error().ToString();
  EXPECT_EQ(c->plans[0].plan.ToString(), "Lipiodol+Pirarubicin");
  EXPECT_DOUBLE_EQ(c->plans[1].log_prob, -2.0);
  p.plans.push_back({Plan({"Pirarubicin", "Lipiodol"}), -3.0});
  auto twice = CanonicalizeProposal(p, actions);
  ASSERT_FALSE(twice);
  EXPECT_NE(twice.error().message.find("more than once"), std::string::npos);
  p.plans = {{Plan({"Cisplatn"}), 0.0}};
  EXPECT_EQ(CanonicalizeProposal(p, actions).error().code, ErrorCode::kNotFound);
}

}  // namespace
}  // namespace mewm::policy

// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/eval/policy_eval.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "mewm/policy/guideline.h"

namespace mewm::scenarios {
namespace {

TEST(PolicyEvalTest, GuidelineOrderStartsWithItsFirstChoiceAndCoversEveryAllowedPlan) {
  const ActionBase& actions = ActionBase::Default();
  auto grammar = policy::PlanGrammar::Create(actions, {});
  ASSERT_TRUE(grammar);
  policy::Proposal proposal;
  proposal.drugs = {"Epirubicin", "Cisplatin", "Raltitrexed"};
  proposal.embolics = {"Lipiodol", "Gelatin Sponge"};
  const Plan first = *actions.ParsePlan("Lipiodol+Epirubicin+Cisplatin+Gelatin Sponge");
  const std::vector<bool> no_alcohol = grammar->ForbiddenMask({"Absolute Alcohol"});
  const std::vector<Plan> order =
      GuidelinePlanOrder(proposal, first, *grammar, no_alcohol, actions);
  ASSERT_FALSE(order.empty());
  EXPECT_EQ(order.front(), first);
  // Every plan the grammar allows for this patient, once; none with the forbidden item.
  std::set<Plan> seen(order.begin(), order.end());
  EXPECT_EQ(seen.size(), order.size());
  std::size_t allowed = 0;
  for (const Plan& p : grammar->plans()) allowed += grammar->Accepts(p, no_alcohol) ? 1 : 0;
  EXPECT_EQ(order.size(), allowed);
  for (const Plan& p : order) EXPECT_FALSE(p.Contains("Absolute Alcohol"));
  // Plans of proposed items come before plans with items the guideline did not propose.
  const auto position = [&](const char* text) {
    const Plan p = *actions.ParsePlan(text);
    return std::find(order.begin(), order.end(), p) - order.begin();
  };
  EXPECT_LT(position("Lipiodol+Epirubicin"), position("Lipiodol+Mitomycin"));
  EXPECT_LT(position("Lipiodol+Gelatin Sponge"), position("Lipiodol+NBCA"));
}

TEST(PolicyEvalTest, AMissingCohortIsAnErrorNamingIt) {
  auto guideline = policy::GuidelinePolicy::Create(ActionBase::Default());
  ASSERT_TRUE(guideline);
  PolicyEvalOptions options;
  options.cohort_dir = "/nonexistent/cohort-for-policy-eval";
  auto eval = EvaluatePolicies({{"guideline", guideline->get()}}, ActionBase::Default(), options);
  ASSERT_FALSE(eval);
  EXPECT_NE(eval.error().message.find("cohort-for-policy-eval"), std::string::npos)
      << eval.error().message;
}

}  // namespace
}  // namespace mewm::scenarios

// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/tace/plan_space.h"

#include <gtest/gtest.h>

#include <set>

namespace mewm {
namespace {

TEST(PlanSpaceTest, CountsMatchTheRulesForHorizonsTwoAndTwo) {
  auto plans = EnumeratePlans(ActionBase::Default(), 2, 2);
  ASSERT_TRUE(plans) << plans.error().ToString();
  // Drug sets: 1 empty + 9 singles + (36 pairs - 6 platinum pairs - 3 anthracycline pairs) = 37.
  // Embolics: Lipiodol alone or with one of 4 others = 5. All combinations are valid: 185.
  EXPECT_EQ(plans->size(), 185u);
  std::set<Plan> unique(plans->begin(), plans->end());
  EXPECT_EQ(unique.size(), plans->size());
  for (const Plan& p : *plans) {
    EXPECT_TRUE(p.Contains("Lipiodol")) << p.ToString();
    EXPECT_TRUE(ActionBase::Default().Validate(p)) << p.ToString();
  }
}

TEST(PlanSpaceTest, LargerEmbolicHorizonExcludesConflictingPairs) {
  auto plans = EnumeratePlans(ActionBase::Default(), 0, 3);
  ASSERT_TRUE(plans);
  // Lipiodol + subsets of size <= 2 of {Gelatin, PVA, Alcohol, NBCA} minus the 2 excluded pairs.
  EXPECT_EQ(plans->size(), 1u + 4u + 6u - 2u);
}

TEST(PlanSpaceTest, TheBoundCountsThePlansBeforeTheRulesRemoveAny) {
  const ActionBase& base = ActionBase::Default();
  // Drugs: 1 + 9 + 36 subsets of at most 2 (the rules then remove 9 pairs); embolics: Lipiodol
  // alone or with one of 4 others.
  EXPECT_EQ(PlanSpaceBound(base, 2, 2), 46u * 5u);
  EXPECT_GE(PlanSpaceBound(base, 2, 2), EnumeratePlans(base, 2, 2)->size());
  EXPECT_EQ(PlanSpaceBound(base, 0, 3), 1u + 4u + 6u);
  EXPECT_GE(PlanSpaceBound(base, 0, 3), EnumeratePlans(base, 0, 3)->size());
  EXPECT_EQ(PlanSpaceBound(base, 0, 1), 1u);  // Lipiodol alone
  EXPECT_EQ(PlanSpaceBound(base, 4, 5), (1u + 9u + 36u + 84u + 126u) * 16u);
  // Where EnumeratePlans fails, 0.
  EXPECT_EQ(PlanSpaceBound(base, -1, 2), 0u);
  EXPECT_EQ(PlanSpaceBound(base, 2, 0), 0u);
  EXPECT_EQ(PlanSpaceBound(base, 2, 2, "DEB-TACE"), 0u);
}

TEST(PlanSpaceTest, BadHorizonsAndProtocolsAreErrors) {
  EXPECT_FALSE(EnumeratePlans(ActionBase::Default(), -1, 2));
  EXPECT_FALSE(EnumeratePlans(ActionBase::Default(), 2, 0));
  EXPECT_FALSE(EnumeratePlans(ActionBase::Default(), 2, 2, "DEB-TACE"));
}

}  // namespace
}  // namespace mewm

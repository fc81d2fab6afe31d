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

TEST(PlanSpaceTest, BadHorizonsAndProtocolsAreErrors) {
  EXPECT_FALSE(EnumeratePlans(ActionBase::Default(), -1, 2));
  EXPECT_FALSE(EnumeratePlans(ActionBase::Default(), 2, 0));
  EXPECT_FALSE(EnumeratePlans(ActionBase::Default(), 2, 2, "DEB-TACE"));
}

}  // namespace
}  // namespace mewm

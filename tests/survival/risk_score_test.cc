// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include <gtest/gtest.h>

#include "mewm/survival/survival_model.h"

namespace mewm::survival {
namespace {

TEST(RiskScoreTest, StepFunctionLookupAndMedian) {
  RiskScore r{1.2, {3.0, 10.0, 20.0}, {0.9, 0.6, 0.4}};
  EXPECT_DOUBLE_EQ(*r.SurvivalAt(0.0), 1.0);
  EXPECT_DOUBLE_EQ(*r.SurvivalAt(3.0), 0.9);  // right-continuous
  EXPECT_DOUBLE_EQ(*r.SurvivalAt(15.0), 0.6);
  EXPECT_DOUBLE_EQ(*r.SurvivalAt(99.0), 0.4);
  EXPECT_DOUBLE_EQ(*r.MedianMonths(), 20.0);
  // The lookup without the check gives the same steps.
  for (double t : {0.0, 2.999, 3.0, 9.0, 10.0, 15.0, 20.0, 99.0}) {
    EXPECT_DOUBLE_EQ(r.SurvivalAtUnchecked(t), *r.SurvivalAt(t)) << t;
  }
  EXPECT_DOUBLE_EQ((RiskScore{1.0, {}, {}}).SurvivalAtUnchecked(5.0), 1.0);
  RiskScore never{1.0, {5.0}, {0.8}};
  auto m = never.MedianMonths();
  ASSERT_FALSE(m);
  EXPECT_EQ(m.error().code, ErrorCode::kNotFound);
}

TEST(RiskScoreTest, MalformedCurvesAreRejected) {
  EXPECT_FALSE((RiskScore{1.0, {1.0, 2.0}, {0.9}}).Validate());
  EXPECT_FALSE((RiskScore{1.0, {2.0, 1.0}, {0.9, 0.8}}).Validate());
  EXPECT_FALSE((RiskScore{1.0, {1.0, 2.0}, {0.8, 0.9}}).Validate());
  EXPECT_FALSE((RiskScore{1.0, {1.0}, {1.5}}).Validate());
  EXPECT_FALSE((RiskScore{std::nan(""), {}, {}}).Validate());
  EXPECT_FALSE((RiskScore{1.0, {1.0, 2.0}, {0.8, 0.9}}).SurvivalAt(1.0));
}

}  // namespace
}  // namespace mewm::survival

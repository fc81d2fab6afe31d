// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The synthetic world's validity checks on three seeds of 100 patients each (label: slow; a
// few minutes): one world sample could pass or fail a check by chance.
#include <gtest/gtest.h>

#include <iostream>

#include "../core/test_env.h"
#include "mewm/world/cohort.h"

namespace mewm::scenarios {
namespace {

class WorldValidityTest : public ::testing::TestWithParam<std::uint64_t> {};

TEST_P(WorldValidityTest, HundredPatientsPassEveryCheck) {
  auto stats = SimulateWorldStats(WorldConfig{}, ActionBase::Default(), GetParam(), 100,
                                  /*visibility_plans=*/2);
  ASSERT_TRUE(stats) << stats.error().ToString();
  std::cout << stats->Format();
  for (const std::string& failure : stats->Failures()) ADD_FAILURE() << failure;
  EXPECT_GE(stats->mean_hr_median_vs_optimal.value, 1.3);
  EXPECT_LE(stats->max_optimal_share, 0.35);
  EXPECT_GE(stats->oracle_c_index, 0.70);
  EXPECT_LE(stats->oracle_c_index, 0.85);
  EXPECT_LT(stats->visible_cox_c_index, stats->oracle_c_index - 0.03);
  EXPECT_GE(stats->visibility_r2, 0.9);
}

INSTANTIATE_TEST_SUITE_P(Seeds, WorldValidityTest, ::testing::Values(1, 2, 3));

}  // namespace
}  // namespace mewm::scenarios

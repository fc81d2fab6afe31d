// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The synthetic world's validity checks on 200 patients (label: slow; about two minutes).
#include <gtest/gtest.h>

#include <iostream>

#include "../core/test_env.h"
#include "mewm/scenarios/cohort.h"

namespace mewm::scenarios {
namespace {

TEST(WorldValidityTest, TwoHundredPatientsPassEveryCheck) {
  auto stats = SimulateWorldStats(WorldConfig{}, ActionBase::Default(), 1, 200);
  ASSERT_TRUE(stats) << stats.error().ToString();
  std::cout << stats->Format();
  for (const std::string& failure : stats->Failures()) ADD_FAILURE() << failure;
  EXPECT_GE(stats->mean_hr_median_vs_optimal, 1.3);
  EXPECT_LE(stats->max_optimal_share, 0.35);
  EXPECT_GE(stats->oracle_c_index, 0.70);
  EXPECT_LE(stats->oracle_c_index, 0.85);
  EXPECT_LT(stats->visible_cox_c_index, stats->oracle_c_index - 0.03);
  EXPECT_GE(stats->km_median_os_months, 15.0);
  EXPECT_LE(stats->km_median_os_months, 35.0);
}

}  // namespace
}  // namespace mewm::scenarios

// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/core/stats.h"

#include <gtest/gtest.h>

#include <cmath>

namespace mewm {
namespace {

TEST(StatsTest, MeanStdUsesTheSampleStandardDeviation) {
  EXPECT_EQ(MeanStd({}).first, 0.0);
  EXPECT_EQ(MeanStd({2.0}).second, 0.0);
  const auto [mean, sd] = MeanStd({1.0, 2.0, 3.0});
  EXPECT_DOUBLE_EQ(mean, 2.0);
  EXPECT_DOUBLE_EQ(sd, 1.0);
}

TEST(StatsTest, MedianOfOddEvenAndEmptyLists) {
  EXPECT_EQ(Median({}), 0.0);
  EXPECT_EQ(Median({3.0, 1.0, 2.0}), 2.0);
  EXPECT_EQ(Median({4.0, 1.0, 3.0, 2.0}), 2.5);
}

TEST(StatsTest, RanksAverageTies) {
  EXPECT_EQ(Ranks({10.0, 30.0, 20.0, 20.0}), (std::vector<double>{0.0, 3.0, 1.5, 1.5}));
}

TEST(StatsTest, SpearmanRanksWithTiesAndRefusesConstantSides) {
  EXPECT_DOUBLE_EQ(Spearman({1, 2, 3, 4}, {10, 20, 30, 40}), 1.0);
  EXPECT_DOUBLE_EQ(Spearman({1, 2, 3, 4}, {4, 3, 2, 1}), -1.0);
  EXPECT_NEAR(Spearman({1, 2, 2, 3}, {1, 2, 3, 4}), 0.9487, 1e-4);
  EXPECT_TRUE(std::isnan(Spearman({1, 1, 1}, {1, 2, 3})));
  EXPECT_TRUE(std::isnan(Spearman({1, 2}, {1, 2, 3})));
}

}  // namespace
}  // namespace mewm

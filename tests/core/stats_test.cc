// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/core/stats.h"

#include <gtest/gtest.h>

#include <cmath>
#include <tuple>

namespace mewm {
namespace {

TEST(StatsTest, MeanStdUsesTheSampleStandardDeviation) {
  EXPECT_EQ(MeanStd({}).first, 0.0);
  EXPECT_EQ(MeanStd({2.0}).second, 0.0);
  const auto [mean, sd] = MeanStd({1.0, 2.0, 3.0});
  EXPECT_DOUBLE_EQ(mean, 2.0);
  EXPECT_DOUBLE_EQ(sd, 1.0);
}

TEST(StatsTest, BootstrapMeanIsReproducibleAndBracketsTheMean) {
  const std::vector<double> values = {0.0, 1.0, 4.0, 2.0, 8.0, 3.0, 1.0, 5.0};
  const MeanInterval m = BootstrapMean(values, 7);
  EXPECT_DOUBLE_EQ(m.mean, 3.0);
  EXPECT_LT(m.lo, m.mean);
  EXPECT_GT(m.hi, m.mean);
  EXPECT_GE(m.lo, 0.0);  // a resampled mean stays within the values
  EXPECT_LE(m.hi, 8.0);
  // Same seed, same interval; another seed moves it a little, not the mean.
  const MeanInterval again = BootstrapMean(values, 7);
  EXPECT_EQ(again.lo, m.lo);
  EXPECT_EQ(again.hi, m.hi);
  EXPECT_DOUBLE_EQ(BootstrapMean(values, 8).mean, 3.0);
  // The 95% interval of a mean of 8 values with SD 2.6 is about 3.6 wide (normal theory).
  EXPECT_GT(m.hi - m.lo, 2.0);
  EXPECT_LT(m.hi - m.lo, 5.0);
  // Degenerate inputs: no spread to resample.
  const MeanInterval one = BootstrapMean({2.5}, 7);
  EXPECT_DOUBLE_EQ(one.lo, 2.5);
  EXPECT_DOUBLE_EQ(one.hi, 2.5);
  const MeanInterval none = BootstrapMean({}, 7);
  EXPECT_DOUBLE_EQ(none.mean, 0.0);
  const MeanInterval constant = BootstrapMean({1.0, 1.0, 1.0}, 7);
  EXPECT_DOUBLE_EQ(constant.lo, 1.0);
  EXPECT_DOUBLE_EQ(constant.hi, 1.0);
  const MeanInterval no_resamples = BootstrapMean(values, 7, 0);
  EXPECT_DOUBLE_EQ(no_resamples.lo, 3.0);
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

// R 4.x: prop.test(8, 10, correct = FALSE)$conf.int = 0.4901625 0.9433178 (the Wilson interval);
// for 0/10 the upper end is z^2 / (n + z^2) = 0.2775328 (hand).
TEST(StatsTest, WilsonIntervalMatchesR) {
  auto [lo, hi] = WilsonInterval(8, 10);
  EXPECT_NEAR(lo, 0.4901625, 1e-7);
  EXPECT_NEAR(hi, 0.9433178, 1e-7);
  std::tie(lo, hi) = WilsonInterval(0, 10);
  EXPECT_NEAR(lo, 0.0, 1e-12);
  EXPECT_NEAR(hi, 3.841459 / (10 + 3.841459), 1e-6);
  std::tie(lo, hi) = WilsonInterval(0, 0);
  EXPECT_EQ(lo, 0.0);
  EXPECT_EQ(hi, 1.0);
}

// Exact values by hand: P = 2 * sum_{i >= k} C(10, i) / 2^10. R's binom.test(7, 10)$p.value =
// 0.34375 and binom.test(9, 10)$p.value = 0.02148438 agree.
TEST(StatsTest, ExactBinomialTestAgainstOneHalf) {
  EXPECT_NEAR(BinomialTestHalf(7, 10), 352.0 / 1024.0, 1e-12);
  EXPECT_NEAR(BinomialTestHalf(3, 10), 352.0 / 1024.0, 1e-12);
  EXPECT_NEAR(BinomialTestHalf(9, 10), 22.0 / 1024.0, 1e-12);
  EXPECT_NEAR(BinomialTestHalf(0, 10), 2.0 / 1024.0, 1e-12);
  EXPECT_DOUBLE_EQ(BinomialTestHalf(5, 10), 1.0);
  EXPECT_DOUBLE_EQ(BinomialTestHalf(0, 0), 1.0);
  // 40 of 40 trials: 2 / 2^40.
  EXPECT_NEAR(BinomialTestHalf(40, 40) / (2.0 / std::pow(2.0, 40)), 1.0, 1e-9);
}

// scikit-learn's roc_auc_score docs example: scores (0.1, 0.4, 0.35, 0.8), truth (0, 0, 1, 1)
// gives 0.75. Ties count one half: (1, 1, 2) with truth (0, 1, 1) gives (0.5 + 1) / 2.
TEST(StatsTest, RocAucCountsTiesAsHalf) {
  EXPECT_DOUBLE_EQ(RocAuc({0.1, 0.4, 0.35, 0.8}, {0, 0, 1, 1}), 0.75);
  EXPECT_DOUBLE_EQ(RocAuc({1, 1, 2}, {0, 1, 1}), 0.75);
  EXPECT_DOUBLE_EQ(RocAuc({3, 2, 1}, {1, 0, 0}), 1.0);
  EXPECT_TRUE(std::isnan(RocAuc({1, 2}, {1, 1})));
}

// The worked example of Wikipedia's "Fleiss' kappa" article (10 subjects, 14 raters, 5
// categories): P-bar = 0.378, P-bar_e = 0.213, kappa = 0.210 (0.2099307 computed exactly by hand
// from the table: P-bar = 0.3780220, P-bar_e = 0.2127551).
TEST(StatsTest, FleissKappaOfTheTextbookExample) {
  const std::vector<std::vector<int>> table = {
      {0, 0, 0, 0, 14}, {0, 2, 6, 4, 2}, {0, 0, 3, 5, 6}, {0, 3, 9, 2, 0}, {2, 2, 8, 1, 1},
      {7, 7, 0, 0, 0},  {3, 2, 6, 3, 0}, {2, 5, 3, 2, 2}, {6, 5, 2, 1, 0}, {0, 2, 2, 3, 7}};
  EXPECT_NEAR(FleissKappa(table), 0.2099307, 1e-7);
  // Perfect agreement across two categories is 1; unequal rater counts are refused.
  EXPECT_DOUBLE_EQ(FleissKappa({{3, 0}, {0, 3}}), 1.0);
  EXPECT_TRUE(std::isnan(FleissKappa({{3, 0}, {0, 2}})));
}

// Wikipedia's "Cohen's kappa" example: 50 proposals, both yes 20, A yes / B no 5, A no / B yes 10,
// both no 15: p_o = 0.7, p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5, kappa = 0.4.
TEST(StatsTest, CohenKappaOfTheTextbookExample) {
  std::vector<int> a, b;
  const auto add = [&](int x, int y, int n) {
    for (int i = 0; i < n; ++i) {
      a.push_back(x);
      b.push_back(y);
    }
  };
  add(1, 1, 20);
  add(1, 0, 5);
  add(0, 1, 10);
  add(0, 0, 15);
  EXPECT_NEAR(CohenKappa(a, b), 0.4, 1e-12);
  EXPECT_TRUE(std::isnan(CohenKappa({1, 1}, {1, 1})));
}

}  // namespace
}  // namespace mewm

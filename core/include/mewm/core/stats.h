// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Small statistics shared by the planner, the evaluations and the trainers: one home for each.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

namespace mewm {

/// Mean and sample SD (n - 1); (0, 0) for an empty list and SD 0 for one value.
std::pair<double, double> MeanStd(const std::vector<double>& values);

/// A mean with its 95% percentile-bootstrap interval.
struct MeanInterval {
  double mean = 0.0, lo = 0.0, hi = 0.0;
};

/// The mean of `values` and its 95% percentile-bootstrap interval: `resamples` means of draws
/// with replacement, from an Rng seeded with `seed` (the interval is reproducible). lo = hi =
/// mean for fewer than 2 values or resamples < 1; all 0 for an empty list. Values are
/// independent units (patients): for paired figures, pass the per-unit differences.
MeanInterval BootstrapMean(const std::vector<double>& values, std::uint64_t seed,
                           int resamples = 2000);

/// Median; 0 for an empty list.
double Median(std::vector<double> values);

/// Ranks from 0, ties given their average rank.
std::vector<double> Ranks(const std::vector<double>& values);

/// Spearman rank correlation (average ranks for ties); NaN when either side is constant or the
/// lengths differ or are below 2.
double Spearman(const std::vector<double>& a, const std::vector<double>& b);

/// Wilson score interval of k successes in n trials at z (1.96: 95%); (0, 1) when n = 0.
std::pair<double, double> WilsonInterval(int k, int n, double z = 1.959963984540054);

/// Exact two-sided binomial test of k successes in n trials against p = 0.5: the probability of
/// an outcome no more likely than k (for p = 0.5, 2 * min(P(X <= k), P(X >= k)), capped at 1).
/// 1 when n = 0.
double BinomialTestHalf(int k, int n);

/// Area under the ROC curve of `scores` for `positive` (Mann-Whitney, ties count one half);
/// NaN when either class is empty or the lengths differ.
double RocAuc(const std::vector<double>& scores, const std::vector<int>& positive);

/// Fleiss' kappa. counts[i][j] = raters who put subject i in category j; every subject needs the
/// same number of raters (>= 2). NaN when there are no subjects, the rater counts differ, or the
/// chance agreement is 1.
double FleissKappa(const std::vector<std::vector<int>>& counts);

/// Cohen's kappa of two raters' categories (same length, >= 1); NaN when the chance agreement
/// is 1 or the lengths differ.
double CohenKappa(const std::vector<int>& a, const std::vector<int>& b);

}  // namespace mewm

// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Small statistics shared by the planner, the evaluations and the trainers: one home for each.
#pragma once

#include <utility>
#include <vector>

namespace mewm {

/// Mean and sample SD (n - 1); (0, 0) for an empty list and SD 0 for one value.
std::pair<double, double> MeanStd(const std::vector<double>& values);

/// Median; 0 for an empty list.
double Median(std::vector<double> values);

/// Ranks from 0, ties given their average rank.
std::vector<double> Ranks(const std::vector<double>& values);

/// Spearman rank correlation (average ranks for ties); NaN when either side is constant or the
/// lengths differ or are below 2.
double Spearman(const std::vector<double>& a, const std::vector<double>& b);

}  // namespace mewm

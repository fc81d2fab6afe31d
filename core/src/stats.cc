// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/core/stats.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>

#include "mewm/core/seed.h"

namespace mewm {

std::pair<double, double> MeanStd(const std::vector<double>& values) {
  if (values.empty()) return {0.0, 0.0};
  const double mean = std::accumulate(values.begin(), values.end(), 0.0) / double(values.size());
  if (values.size() < 2) return {mean, 0.0};
  double ss = 0.0;
  for (double v : values) ss += (v - mean) * (v - mean);
  return {mean, std::sqrt(ss / double(values.size() - 1))};
}

MeanInterval BootstrapMean(const std::vector<double>& values, std::uint64_t seed, int resamples) {
  MeanInterval r;
  if (values.empty()) return r;
  const std::size_t n = values.size();
  r.mean = r.lo = r.hi = std::accumulate(values.begin(), values.end(), 0.0) / double(n);
  if (n < 2 || resamples < 1) return r;
  Rng rng(seed);
  std::vector<double> means(static_cast<std::size_t>(resamples));
  for (double& m : means) {
    double total = 0.0;
    for (std::size_t k = 0; k < n; ++k)
      total += values[std::size_t(rng.UniformInt(0, std::int64_t(n) - 1))];
    m = total / double(n);
  }
  std::sort(means.begin(), means.end());
  r.lo = means[std::size_t(0.025 * double(means.size() - 1))];
  r.hi = means[std::size_t(0.975 * double(means.size() - 1))];
  return r;
}

double Median(std::vector<double> values) {
  if (values.empty()) return 0.0;
  std::sort(values.begin(), values.end());
  const std::size_t n = values.size();
  return n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

std::vector<double> Ranks(const std::vector<double>& values) {
  std::vector<std::size_t> order(values.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(),
            [&](std::size_t a, std::size_t b) { return values[a] < values[b]; });
  std::vector<double> rank(values.size());
  for (std::size_t i = 0; i < order.size();) {
    std::size_t j = i;
    while (j + 1 < order.size() && values[order[j + 1]] == values[order[i]]) ++j;
    for (std::size_t k = i; k <= j; ++k) rank[order[k]] = 0.5 * double(i + j);
    i = j + 1;
  }
  return rank;
}

double Spearman(const std::vector<double>& a, const std::vector<double>& b) {
  if (a.size() != b.size() || a.size() < 2) return std::nan("");
  const std::vector<double> ra = Ranks(a), rb = Ranks(b);
  const double ma = MeanStd(ra).first, mb = MeanStd(rb).first;
  double sab = 0, saa = 0, sbb = 0;
  for (std::size_t i = 0; i < ra.size(); ++i) {
    sab += (ra[i] - ma) * (rb[i] - mb);
    saa += (ra[i] - ma) * (ra[i] - ma);
    sbb += (rb[i] - mb) * (rb[i] - mb);
  }
  if (saa <= 0.0 || sbb <= 0.0) return std::nan("");
  return sab / std::sqrt(saa * sbb);
}

std::pair<double, double> WilsonInterval(int k, int n, double z) {
  if (n <= 0) return {0.0, 1.0};
  const double p = double(k) / double(n), z2 = z * z, nn = double(n);
  const double centre = (p + z2 / (2.0 * nn)) / (1.0 + z2 / nn);
  const double half = z / (1.0 + z2 / nn) * std::sqrt(p * (1.0 - p) / nn + z2 / (4.0 * nn * nn));
  return {std::max(0.0, centre - half), std::min(1.0, centre + half)};
}

double BinomialTestHalf(int k, int n) {
  if (n <= 0) return 1.0;
  // As R's binom.test: sum the probabilities of outcomes no more likely than k, with a relative
  // tolerance of 1e-7 so that the symmetric outcome counts despite rounding.
  const auto log_pmf = [n](int i) {
    return std::lgamma(n + 1.0) - std::lgamma(i + 1.0) - std::lgamma(n - i + 1.0) -
           double(n) * std::log(2.0);
  };
  const double observed = log_pmf(k) + std::log1p(1e-7);
  double p = 0.0;
  for (int i = 0; i <= n; ++i) {
    const double l = log_pmf(i);
    if (l <= observed) p += std::exp(l);
  }
  return std::min(1.0, p);
}

double RocAuc(const std::vector<double>& scores, const std::vector<int>& positive) {
  if (scores.size() != positive.size()) return std::nan("");
  const std::vector<double> ranks = Ranks(scores);
  double rank_sum = 0.0, np = 0.0, nn = 0.0;
  for (std::size_t i = 0; i < scores.size(); ++i) {
    if (positive[i] != 0) {
      rank_sum += ranks[i] + 1.0;
      np += 1.0;
    } else {
      nn += 1.0;
    }
  }
  if (np == 0.0 || nn == 0.0) return std::nan("");
  return (rank_sum - np * (np + 1.0) / 2.0) / (np * nn);
}

double FleissKappa(const std::vector<std::vector<int>>& counts) {
  if (counts.empty() || counts.front().empty()) return std::nan("");
  const std::size_t categories = counts.front().size();
  int raters = 0;
  for (int c : counts.front()) raters += c;
  if (raters < 2) return std::nan("");
  std::vector<double> column(categories, 0.0);
  double p_bar = 0.0;
  for (const std::vector<int>& row : counts) {
    if (row.size() != categories) return std::nan("");
    int total = 0;
    double agree = 0.0;
    for (std::size_t j = 0; j < categories; ++j) {
      total += row[j];
      agree += double(row[j]) * double(row[j] - 1);
      column[j] += row[j];
    }
    if (total != raters) return std::nan("");
    p_bar += agree / (double(raters) * double(raters - 1));
  }
  const double subjects = double(counts.size());
  p_bar /= subjects;
  double p_e = 0.0;
  for (double c : column) p_e += (c / (subjects * raters)) * (c / (subjects * raters));
  if (p_e >= 1.0) return std::nan("");
  return (p_bar - p_e) / (1.0 - p_e);
}

double CohenKappa(const std::vector<int>& a, const std::vector<int>& b) {
  if (a.size() != b.size() || a.empty()) return std::nan("");
  std::map<int, double> ma, mb;
  double agree = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    agree += a[i] == b[i] ? 1.0 : 0.0;
    ma[a[i]] += 1.0;
    mb[b[i]] += 1.0;
  }
  const double n = double(a.size());
  double p_e = 0.0;
  for (const auto& [category, count] : ma) {
    const auto it = mb.find(category);
    if (it != mb.end()) p_e += (count / n) * (it->second / n);
  }
  if (p_e >= 1.0) return std::nan("");
  return (agree / n - p_e) / (1.0 - p_e);
}

}  // namespace mewm

// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/survival/metrics.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <limits>
#include <numeric>
#include <string>

namespace mewm::survival {
namespace {

std::string Num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", v);
  return buf;
}

Unexpected Invalid(const std::string& message) {
  return MakeError(ErrorCode::kInvalidArgument, message);
}

Status CheckRecords(const std::vector<SurvivalRecord>& y, const std::string& what) {
  if (y.empty()) return Invalid(what + " is empty (expected at least one record)");
  for (std::size_t i = 0; i < y.size(); ++i) {
    if (!std::isfinite(y[i].time) || y[i].time < 0.0) {
      return Invalid(what + "[" + std::to_string(i) + "].time must be finite and >= 0 (got " +
                     Num(y[i].time) + ")");
    }
  }
  return {};
}

Status CheckRisk(const std::vector<double>& risk, const std::vector<SurvivalRecord>& y) {
  MEWM_RETURN_IF_ERROR(CheckRecords(y, "survival records"));
  if (risk.size() != y.size()) {
    return Invalid("risk has " + std::to_string(risk.size()) + " entries but there are " +
                   std::to_string(y.size()) + " survival records");
  }
  for (std::size_t i = 0; i < risk.size(); ++i) {
    if (!std::isfinite(risk[i])) return Invalid("risk[" + std::to_string(i) + "] is not finite");
  }
  return {};
}

Status CheckTime(double t, const std::string& what) {
  if (!std::isfinite(t) || t < 0.0)
    return Invalid(what + " must be finite and >= 0 (got " + Num(t) + ")");
  return {};
}

/// Indices of `y` sorted by increasing time.
std::vector<std::size_t> ByTime(const std::vector<SurvivalRecord>& y) {
  std::vector<std::size_t> order(y.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return y[a].time < y[b].time; });
  return order;
}

/// Reverse Kaplan-Meier: the estimate of G(t) = P(C > t), with censorings as the "events".
/// At a time with both, the deaths are taken to come first, so they leave the censoring risk set.
KaplanMeier FitCensoringKaplanMeier(const std::vector<SurvivalRecord>& y) {
  const std::vector<std::size_t> order = ByTime(y);
  KaplanMeier km;
  double g = 1.0;
  const std::size_t n = y.size();
  for (std::size_t k = 0; k < n;) {
    const double t = y[order[k]].time;
    int deaths = 0;
    int censored = 0;
    std::size_t end = k;
    for (; end < n && y[order[end]].time == t; ++end) (y[order[end]].event ? deaths : censored)++;
    const int at_risk = int(n - k) - deaths;
    if (censored > 0) {
      g *= 1.0 - double(censored) / double(at_risk);
      km.times.push_back(t);
      km.survival.push_back(g);
      km.at_risk.push_back(at_risk);
      km.events.push_back(censored);
    }
    k = end;
  }
  return km;
}

/// The left limit of a Kaplan-Meier step function, S(t-).
double LeftLimit(const KaplanMeier& km, double t) {
  const auto it = std::lower_bound(km.times.begin(), km.times.end(), t);
  if (it == km.times.begin()) return 1.0;
  return km.survival[std::size_t(it - km.times.begin()) - 1];
}

/// 1 / G(t-) for an event at `t`, or an error when the censoring estimate has reached 0.
Expected<double> EventWeight(const KaplanMeier& censoring, double t) {
  const double g = LeftLimit(censoring, t);
  if (!(g > 0.0)) {
    return Invalid("censoring survival estimate G(t-) is 0 at t = " + Num(t) +
                   " months; the training follow-up does not cover the test times");
  }
  return 1.0 / g;
}

/// Shared concordance sum. `weight(i)` is called once per event with time < tau.
template <typename WeightFn>
Expected<double> Concordance(const std::vector<double>& risk, const std::vector<SurvivalRecord>& y,
                             double tau, WeightFn weight) {
  // TODO(perf): O(n^2); a Fenwick tree over risk ranks makes this O(n log n) if cohorts grow.
  double numerator = 0.0;
  double denominator = 0.0;
  std::size_t comparable = 0;
  for (std::size_t i = 0; i < y.size(); ++i) {
    if (!y[i].event || !(y[i].time < tau)) continue;
    double concordant = 0.0;
    std::size_t pairs = 0;
    for (std::size_t j = 0; j < y.size(); ++j) {
      const bool later = y[j].time > y[i].time || (y[j].time == y[i].time && !y[j].event);
      if (!later) continue;
      ++pairs;
      if (risk[i] > risk[j]) {
        concordant += 1.0;
      } else if (risk[i] == risk[j]) {
        concordant += 0.5;
      }
    }
    if (pairs == 0) continue;
    MEWM_TRY(const double w, weight(i));
    numerator += w * concordant;
    denominator += w * double(pairs);
    comparable += pairs;
  }
  if (comparable == 0) {
    return Invalid("no comparable pairs (needs an event before another subject's time)");
  }
  return numerator / denominator;
}

}  // namespace

double KaplanMeier::At(double t) const {
  const auto it = std::upper_bound(times.begin(), times.end(), t);
  if (it == times.begin()) return 1.0;
  return survival[std::size_t(it - times.begin()) - 1];
}

Expected<KaplanMeier> FitKaplanMeier(const std::vector<SurvivalRecord>& y) {
  MEWM_RETURN_IF_ERROR(CheckRecords(y, "survival records"));
  const std::vector<std::size_t> order = ByTime(y);
  KaplanMeier km;
  double s = 1.0;
  const std::size_t n = y.size();
  for (std::size_t k = 0; k < n;) {
    const double t = y[order[k]].time;
    int deaths = 0;
    std::size_t end = k;
    for (; end < n && y[order[end]].time == t; ++end) deaths += y[order[end]].event ? 1 : 0;
    if (deaths > 0) {
      const int at_risk = int(n - k);
      s *= 1.0 - double(deaths) / double(at_risk);
      km.times.push_back(t);
      km.survival.push_back(s);
      km.at_risk.push_back(at_risk);
      km.events.push_back(deaths);
    }
    k = end;
  }
  return km;
}

Expected<double> MedianSurvival(const KaplanMeier& km) {
  for (std::size_t n = 0; n < km.survival.size() && n < km.times.size(); ++n) {
    if (km.survival[n] <= 0.5) return km.times[n];
  }
  return MakeError(ErrorCode::kNotFound, "Kaplan-Meier curve never falls to 0.5");
}

Expected<double> HarrellC(const std::vector<double>& risk, const std::vector<SurvivalRecord>& y) {
  MEWM_RETURN_IF_ERROR(CheckRisk(risk, y));
  return Concordance(risk, y, std::numeric_limits<double>::infinity(),
                     [](std::size_t) -> Expected<double> { return 1.0; });
}

Expected<double> UnoC(const std::vector<double>& risk, const std::vector<SurvivalRecord>& y_test,
                      const std::vector<SurvivalRecord>& y_train, double tau) {
  MEWM_RETURN_IF_ERROR(CheckRisk(risk, y_test));
  MEWM_RETURN_IF_ERROR(CheckRecords(y_train, "training records"));
  if (!std::isfinite(tau) || !(tau > 0.0)) {
    return Invalid("tau must be finite and > 0 months (got " + Num(tau) + ")");
  }
  const KaplanMeier censoring = FitCensoringKaplanMeier(y_train);
  return Concordance(risk, y_test, tau, [&](std::size_t i) -> Expected<double> {
    MEWM_TRY(const double w, EventWeight(censoring, y_test[i].time));
    return w * w;
  });
}

namespace {

/// BrierScore without re-checking the inputs; `censoring` is the reverse KM of the training set.
Expected<double> BrierAt(const std::vector<RiskScore>& predicted,
                         const std::vector<SurvivalRecord>& y, const KaplanMeier& censoring,
                         double t) {
  const double g_t = censoring.At(t);
  double sum = 0.0;
  for (std::size_t i = 0; i < y.size(); ++i) {
    const bool is_case = y[i].event && y[i].time <= t;
    const bool is_control = y[i].time > t;
    if (!is_case && !is_control) continue;                 // censored before t: weight 0
    const double s = predicted[i].SurvivalAtUnchecked(t);  // CheckPredicted validated it
    if (is_case) {
      MEWM_TRY(const double w, EventWeight(censoring, y[i].time));
      sum += s * s * w;
    } else {
      if (!(g_t > 0.0)) {
        return Invalid("censoring survival estimate G(t) is 0 at t = " + Num(t) +
                       " months; the training follow-up does not cover the time grid");
      }
      sum += (1.0 - s) * (1.0 - s) / g_t;
    }
  }
  return sum / double(y.size());
}

Status CheckPredicted(const std::vector<RiskScore>& predicted,
                      const std::vector<SurvivalRecord>& y_test,
                      const std::vector<SurvivalRecord>& y_train) {
  MEWM_RETURN_IF_ERROR(CheckRecords(y_test, "test records"));
  MEWM_RETURN_IF_ERROR(CheckRecords(y_train, "training records"));
  if (predicted.size() != y_test.size()) {
    return Invalid("there are " + std::to_string(predicted.size()) + " predicted curves but " +
                   std::to_string(y_test.size()) + " test records");
  }
  // Once per curve here, so that BrierAt's lookups do not check it again at every time.
  for (std::size_t i = 0; i < predicted.size(); ++i) {
    if (auto valid = predicted[i].Validate(); !valid) {
      return valid.error().WithContext("predicted[" + std::to_string(i) + "]");
    }
  }
  return {};
}

}  // namespace

Expected<double> BrierScore(const std::vector<RiskScore>& predicted,
                            const std::vector<SurvivalRecord>& y_test,
                            const std::vector<SurvivalRecord>& y_train, double t) {
  MEWM_RETURN_IF_ERROR(CheckPredicted(predicted, y_test, y_train));
  MEWM_RETURN_IF_ERROR(CheckTime(t, "Brier time"));
  return BrierAt(predicted, y_test, FitCensoringKaplanMeier(y_train), t);
}

Expected<double> IntegratedBrierScore(const std::vector<RiskScore>& predicted,
                                      const std::vector<SurvivalRecord>& y_test,
                                      const std::vector<SurvivalRecord>& y_train,
                                      const std::vector<double>& times) {
  MEWM_RETURN_IF_ERROR(CheckPredicted(predicted, y_test, y_train));
  if (times.size() < 2) {
    return Invalid("integrated Brier score needs at least 2 times (got " +
                   std::to_string(times.size()) + ")");
  }
  for (std::size_t k = 0; k < times.size(); ++k) {
    MEWM_RETURN_IF_ERROR(CheckTime(times[k], "times[" + std::to_string(k) + "]"));
    if (k > 0 && !(times[k] > times[k - 1])) {
      return Invalid("times must be strictly increasing (times[" + std::to_string(k) +
                     "] = " + Num(times[k]) + " after " + Num(times[k - 1]) + ")");
    }
  }
  const KaplanMeier censoring = FitCensoringKaplanMeier(y_train);
  double integral = 0.0;
  double previous = 0.0;
  for (std::size_t k = 0; k < times.size(); ++k) {
    MEWM_TRY(const double bs, BrierAt(predicted, y_test, censoring, times[k]));
    if (k > 0) integral += 0.5 * (bs + previous) * (times[k] - times[k - 1]);
    previous = bs;
  }
  return integral / (times.back() - times.front());
}

Expected<double> TimeDependentAuc(const std::vector<double>& risk,
                                  const std::vector<SurvivalRecord>& y_test,
                                  const std::vector<SurvivalRecord>& y_train, double t) {
  MEWM_RETURN_IF_ERROR(CheckRisk(risk, y_test));
  MEWM_RETURN_IF_ERROR(CheckRecords(y_train, "training records"));
  MEWM_RETURN_IF_ERROR(CheckTime(t, "AUC time"));
  std::vector<double> controls;
  for (std::size_t j = 0; j < y_test.size(); ++j) {
    if (y_test[j].time > t) controls.push_back(risk[j]);
  }
  std::sort(controls.begin(), controls.end());
  const KaplanMeier censoring = FitCensoringKaplanMeier(y_train);
  double numerator = 0.0;
  double case_weight = 0.0;
  for (std::size_t i = 0; i < y_test.size(); ++i) {
    if (!y_test[i].event || y_test[i].time > t) continue;
    MEWM_TRY(const double w, EventWeight(censoring, y_test[i].time));
    const auto lo = std::lower_bound(controls.begin(), controls.end(), risk[i]);
    const auto hi = std::upper_bound(lo, controls.end(), risk[i]);
    numerator += w * (double(lo - controls.begin()) + 0.5 * double(hi - lo));
    case_weight += w;
  }
  if (case_weight == 0.0) return Invalid("no case (event at or before t = " + Num(t) + " months)");
  if (controls.empty())
    return Invalid("no control (subject followed beyond t = " + Num(t) + " months)");
  return numerator / (case_weight * double(controls.size()));
}

}  // namespace mewm::survival

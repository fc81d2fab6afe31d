// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Survival evaluation: Kaplan-Meier, Harrell's and Uno's concordance, the IPCW Brier score and the
// cumulative/dynamic AUC.
//   input:  per-subject predictions (a risk, higher is worse, or a RiskScore survival curve),
//           observed test records, and training records from which the censoring distribution
//           G(t) = P(C > t) is estimated by the reverse Kaplan-Meier estimator
//   output: a number
//
// Times are in months. Ties follow the usual convention that events precede censorings at the
// same time: a subject censored at t is still at risk for an event at t, and an event at t is
// weighted by 1 / G(t-), the censoring survival just before t (Graf et al. 1999). Where a test
// event time coincides with a training censoring time this differs from scikit-survival, which
// uses G(t); elsewhere the numbers agree.
#pragma once

#include <vector>

#include "mewm/core/expected.h"
#include "mewm/survival/survival_model.h"

namespace mewm::survival {

/// One observed subject: follow-up time in months and whether it ended in the event (death).
/// `event == false` means right-censored at `time`.
struct SurvivalRecord {
  double time = 0.0;
  bool event = false;
};

/// A Kaplan-Meier estimate. The vectors have one entry per distinct event time (censoring-only
/// times produce no step): the time, S just after it, the number at risk (time >= t) and the
/// number of events there.
struct KaplanMeier {
  std::vector<double> times;
  std::vector<double> survival;
  std::vector<int> at_risk;
  std::vector<int> events;

  /// S(t): 1 before the first event time, then the right-continuous step value.
  double At(double t) const;
};

/// Kaplan-Meier estimate of S(t). kInvalidArgument for empty input or a negative or non-finite
/// time. All-censored input is valid and gives an empty curve (S = 1 everywhere).
Expected<KaplanMeier> FitKaplanMeier(const std::vector<SurvivalRecord>& y);

/// First time at which S(t) <= 0.5; kNotFound when the curve never gets there.
Expected<double> MedianSurvival(const KaplanMeier& km);

/// Harrell's concordance index. Higher `risk` means shorter survival. A pair (i, j) is comparable
/// when i had the event and time_i < time_j, or time_i == time_j and j was censored; two events at
/// the same time are not comparable. A comparable pair scores 1 when risk_i > risk_j and 0.5 when
/// the risks are equal (exact equality).
/// kInvalidArgument for a size mismatch, empty input, a non-finite risk or time, a negative time,
/// or when there is no comparable pair.
Expected<double> HarrellC(const std::vector<double>& risk, const std::vector<SurvivalRecord>& y);

/// Uno's IPCW concordance (Uno et al. 2011), truncated at `tau` months: comparable pairs as in
/// HarrellC, restricted to time_i < tau, each weighted by G(time_i-)^-2 with G the reverse
/// Kaplan-Meier of `y_train`. Equals HarrellC when `y_train` has no censoring and tau exceeds
/// every test time.
/// kInvalidArgument for the input errors of HarrellC (also on `y_train`), tau <= 0 or not finite,
/// G = 0 at a weighted event time (training follow-up too short), or no comparable pair.
Expected<double> UnoC(const std::vector<double>& risk, const std::vector<SurvivalRecord>& y_test,
                      const std::vector<SurvivalRecord>& y_train, double tau);

/// IPCW Brier score at time t (Graf et al. 1999):
///   BS(t) = 1/n sum_i [ S_i(t)^2 1(T_i <= t, event_i) / G(T_i-) + (1 - S_i(t))^2 1(T_i > t) / G(t)
///   ]
/// with S_i the predicted survival curve of test subject i (RiskScore::SurvivalAt).
/// kInvalidArgument for a size mismatch, empty or invalid records, a malformed curve (the message
/// names the subject), t < 0 or not finite, or G = 0 where a weight is needed.
Expected<double> BrierScore(const std::vector<RiskScore>& predicted,
                            const std::vector<SurvivalRecord>& y_test,
                            const std::vector<SurvivalRecord>& y_train, double t);

/// Integrated Brier score: the trapezoidal integral of BrierScore over `times`, divided by
/// times.back() - times.front() (as scikit-survival's integrated_brier_score).
/// kInvalidArgument for the errors of BrierScore, or fewer than two times, or times that are not
/// strictly increasing.
Expected<double> IntegratedBrierScore(const std::vector<RiskScore>& predicted,
                                      const std::vector<SurvivalRecord>& y_test,
                                      const std::vector<SurvivalRecord>& y_train,
                                      const std::vector<double>& times);

/// Cumulative/dynamic AUC at time t (Uno et al. 2007; scikit-survival's cumulative_dynamic_auc
/// for one time): cases are events with T_i <= t, weighted by 1 / G(T_i-); controls are subjects
/// with T_j > t. AUC = sum_cases sum_controls w_i [1(r_i > r_j) + 0.5 1(r_i == r_j)] /
/// (sum_cases w_i * #controls).
/// kInvalidArgument for the input errors of HarrellC, t < 0 or not finite, no case or no control
/// at t, or G = 0 at a case's time.
Expected<double> TimeDependentAuc(const std::vector<double>& risk,
                                  const std::vector<SurvivalRecord>& y_test,
                                  const std::vector<SurvivalRecord>& y_train, double t);

}  // namespace mewm::survival

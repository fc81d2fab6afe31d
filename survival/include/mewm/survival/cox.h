// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Cox proportional hazards, fitted by Newton-Raphson on the partial likelihood (Eigen).
//   input:  a design matrix X (one row per subject, one column per named feature, original units)
//           and the subjects' SurvivalRecords (months)
//   output: CoxFit: coefficients on standardized features, the standardization, and the Breslow
//           baseline cumulative hazard, enough to score a new subject as a RiskScore
//   config: ties (default Efron), l2 ridge penalty (default 1e-4), max_iter (default 50)
#pragma once

#include <Eigen/Dense>
#include <map>
#include <string>
#include <vector>

#include "mewm/core/expected.h"
#include "mewm/survival/metrics.h"
#include "mewm/survival/survival_model.h"

namespace mewm::survival {

/// How the partial likelihood treats several events at the same time.
enum class CoxTies {
  kBreslow,  ///< every tied death sees the full risk set (biased toward 0 under heavy ties)
  kEfron,    ///< tied deaths leave the risk set gradually (close to the exact likelihood)
};

/// A fitted Cox model. The linear predictor of a subject with features x (original units) is
///   lp(x) = sum_j beta_j (x_j - mean_j) / scale_j,
/// so lp = 0 at the training mean, and the baseline hazard belongs to that mean subject.
struct CoxFit {
  std::vector<std::string> feature_names;
  Eigen::VectorXd beta;   ///< log hazard ratio per standard deviation of each feature
  Eigen::VectorXd mean;   ///< training mean of each feature
  Eigen::VectorXd scale;  ///< training standard deviation of each feature (1 for a constant one)
  std::vector<double> baseline_times;   ///< distinct event times, increasing, months
  std::vector<double> baseline_cumhaz;  ///< Breslow H0(t) just after each baseline time
  int iterations = 0;                   ///< Newton steps taken
  double log_likelihood = 0.0;          ///< partial log-likelihood at beta, without the penalty
  bool converged = false;

  /// Log hazard ratio per unit of each feature in original units: beta / scale.
  Eigen::VectorXd Coefficients() const;
  /// lp(x) for features in original units; NaN when x does not have one entry per feature.
  double LinearPredictor(const Eigen::VectorXd& x) const;
  /// exp(lp(x)): hazard relative to the training-mean subject.
  double RelativeRisk(const Eigen::VectorXd& x) const;
  /// risk = exp(lp(x)) and S(t) = exp(-H0(t) exp(lp(x))) at the baseline times. A wrong-sized x
  /// gives a NaN risk, which RiskScore::Validate rejects.
  RiskScore Predict(const Eigen::VectorXd& x) const;

  /// JSON object with a "format": "mewm.cox" tag and version; doubles round-trip exactly.
  std::string ToJson() const;
  /// Inverse of ToJson. kCorruptData for text that is not JSON, a wrong format tag or version, a
  /// missing or mistyped field, non-finite numbers, mismatched lengths, a scale <= 0, baseline
  /// times that are negative or not increasing, or a cumulative hazard that is negative or falls.
  static Expected<CoxFit> FromJson(const std::string& json);
};

/// Fits a Cox model. Columns are standardized internally; the objective is the partial
/// log-likelihood (Breslow or Efron ties) minus 0.5 * l2 * |beta|^2 on the standardized scale.
/// Newton-Raphson from beta = 0 with step halving whenever the objective falls; stops when one
/// step changes it by less than 1e-9 (converged) or after max_iter steps (converged = false,
/// e.g. under separation with l2 = 0).
/// kInvalidArgument when X's rows differ from y's size or its columns from the names, there are
/// no columns, X or a time is NaN/infinite, a time is negative, there are fewer than 2 events, or
/// l2 < 0 or max_iter < 1.
///
/// `fixed` holds features whose log hazard ratio per unit is known and is not estimated (an
/// offset), e.g. plan toxicity, which the pharmacology table defines in hazard units.
/// kInvalidArgument for a fixed name that is not a feature, or a non-finite value.
Expected<CoxFit> FitCox(const Eigen::MatrixXd& X, const std::vector<SurvivalRecord>& y,
                        const std::vector<std::string>& names, CoxTies ties = CoxTies::kEfron,
                        double l2 = 1e-4, int max_iter = 50,
                        const std::map<std::string, double>& fixed = {});

}  // namespace mewm::survival

// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Calibration of the mechanistic model for planning. The planner must not see a patient's hidden
// biology, so it uses biology *estimated* from visible features: a ridge regression, fitted on a
// training cohort (`mewm train mechanistic`), from tumor image features and covariates to the
// log-scale biology parameters.
#pragma once

#include <Eigen/Core>
#include <string>
#include <vector>

#include "mewm/core/expected.h"
#include "mewm/dynamics/mechanistic.h"
#include "mewm/tace/patient.h"

namespace mewm::dynamics {

/// Visible predictors, in vector order.
const std::vector<std::string>& BiologyFeatureNames();
/// Regression targets, in order: log proliferation, log infiltration, logit vascularity and the
/// log sensitivity of each class in kDrugClasses.
const std::vector<std::string>& BiologyTargetNames();

/// Visible predictors of one patient (measures the tumor on the CT).
Expected<Eigen::VectorXd> BiologyFeatures(const PatientCase& patient);
/// The targets of a known biology (for training).
Eigen::VectorXd BiologyTargets(const TumorBiology& biology);

class BiologyRegression {
 public:
  /// Ridge regression on standardised features. X: one row per patient. kInvalidArgument for
  /// fewer than 10 rows, mismatched sizes or non-finite values.
  static Expected<BiologyRegression> Fit(const Eigen::MatrixXd& X, const Eigen::MatrixXd& Y,
                                         double ridge = 1.0);
  static Expected<BiologyRegression> FromJson(const std::string& text, const std::string& origin);
  /// kNotFound / kIo / kCorruptData (with the path), also when the file's SHA-256 differs from
  /// its checksum file `path`.sha256 (mewm/core/sha256.h).
  static Expected<BiologyRegression> Load(const std::string& path);
  std::string ToJson() const;
  /// Writes the JSON atomically, then its checksum file `path`.sha256.
  Status Save(const std::string& path) const;

  /// The estimated biology (median of the predictive distribution).
  Expected<TumorBiology> Predict(const Eigen::VectorXd& features) const;
  Expected<TumorBiology> Predict(const PatientCase& patient) const;
  /// A BiologySource for MechanisticDynamics that uses this regression.
  BiologySource AsSource() const;

  /// In-sample fit quality: R^2 of each target on the training rows.
  const Eigen::VectorXd& r2() const { return r2_; }
  /// Residual standard deviation of each target on the training rows.
  const Eigen::VectorXd& residual_sd() const { return residual_sd_; }

  /// Free-form provenance: command, seed, data, metrics (JSON object text).
  std::string command, seed, data, metrics = "{}";

 private:
  Eigen::VectorXd mean_, scale_;  ///< feature standardisation
  Eigen::MatrixXd weights_;       ///< features x targets
  Eigen::VectorXd intercept_;     ///< per target
  Eigen::VectorXd r2_, residual_sd_;
};

}  // namespace mewm::dynamics

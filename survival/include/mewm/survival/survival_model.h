// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The survival stage (inverse dynamics): score a simulated outcome by its risk of death.
//   input:  PatientCase (pre-treatment state and covariates), a dynamics Outcome
//   output: RiskScore (relative risk plus a survival curve)
// Backends: `cox` (Cox PH on volumetric features, Eigen); planned: `deep` (libtorch).
#pragma once

#include <string>
#include <vector>

#include "mewm/core/expected.h"
#include "mewm/tace/outcome.h"
#include "mewm/tace/patient.h"

namespace mewm::survival {

/// A scored outcome. `risk` is the model's relative hazard (higher is worse); the curve is a
/// right-continuous step function S(t) with S(0) = 1.
struct RiskScore {
  double risk = 0.0;
  std::vector<double> times_months;  ///< increasing event times
  std::vector<double> survival;      ///< S(t) just after each time, non-increasing in [0, 1]

  /// S(t): 1 before the first time, then the step value. kInvalidArgument for a malformed curve.
  /// It checks the whole curve at every call; see SurvivalAtUnchecked for many lookups.
  Expected<double> SurvivalAt(double months) const;
  /// SurvivalAt's lookup alone, for a curve Validate() has accepted: a binary search, where
  /// SurvivalAt costs the curve's length (a caller reading a curve at every time of another
  /// went quadratic in it). Undefined for a curve that fails Validate().
  double SurvivalAtUnchecked(double months) const;
  /// First time where S(t) <= 0.5, or kNotFound when the curve never reaches it.
  Expected<double> MedianMonths() const;
  /// kInvalidArgument when times are not increasing, sizes differ, or S leaves [0, 1] or rises.
  Status Validate() const;
};

/// A survival backend. Resource type: not copyable; created by its backend's factory.
class SurvivalModel {
 public:
  virtual ~SurvivalModel() = default;
  SurvivalModel() = default;
  SurvivalModel(const SurvivalModel&) = delete;
  SurvivalModel& operator=(const SurvivalModel&) = delete;

  virtual Expected<RiskScore> Score(const PatientCase& pre, const Outcome& post) = 0;
  /// Backend name, e.g. "cox".
  virtual std::string name() const = 0;
};

}  // namespace mewm::survival

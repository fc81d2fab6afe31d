// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Real, small models for planner and runner tests: a synthetic patient at 2 mm, the mechanistic
// model driven by that patient's true biology, a Cox survival model with hand-set coefficients
// (risk rises with residual viable volume and plan toxicity), and model files on disk.
#pragma once

#include <Eigen/Core>
#include <memory>
#include <string>

#include "../core/test_env.h"
#include "mewm/core/seed.h"
#include "mewm/dynamics/calibration.h"
#include "mewm/survival/cox_survival.h"
#include "mewm/world/cohort.h"
#include "mewm/world/synthetic_world.h"

namespace mewm::testing {

inline scenarios::WorldConfig SmallWorld() {
  scenarios::WorldConfig config;
  config.spacing_mm = 2.0;
  return config;
}

/// Cox coefficients by hand: the residual viable volume and plan toxicity raise the risk.
inline survival::CoxFit HandCox() {
  survival::CoxFit fit;
  fit.feature_names = survival::CoxFeatureNames();
  const auto p = Eigen::Index(fit.feature_names.size());
  fit.beta = Eigen::VectorXd::Zero(p);
  fit.beta[1] = 0.7;  // log1p_post_viable_ml
  fit.beta[4] = 1.0;  // plan_toxicity
  fit.mean = Eigen::VectorXd::Zero(p);
  fit.scale = Eigen::VectorXd::Ones(p);
  fit.baseline_times = {3, 6, 12, 24, 36};
  fit.baseline_cumhaz = {0.01, 0.03, 0.08, 0.2, 0.35};
  fit.converged = true;
  return fit;
}

/// A biology regression fitted on random (but valid) data: a real model file, not a meaningful
/// one; planner quality is measured by `mewm eval`, not here.
inline dynamics::BiologyRegression RandomCalibration() {
  Rng rng(99);
  const auto p = Eigen::Index(dynamics::BiologyFeatureNames().size());
  const auto q = Eigen::Index(dynamics::BiologyTargetNames().size());
  Eigen::MatrixXd X(40, p), Y(40, q);
  for (Eigen::Index i = 0; i < X.rows(); ++i) {
    for (Eigen::Index k = 0; k < p; ++k) X(i, k) = rng.Normal();
    dynamics::TumorBiology b;
    b.proliferation_per_day = 0.018 * std::exp(0.3 * rng.Normal());
    b.infiltration_mm2_per_day = 0.06 * std::exp(0.3 * rng.Normal());
    b.vascularity = 0.5 + 0.2 * std::tanh(rng.Normal());
    for (double& s : b.sensitivity) s = std::exp(0.5 * rng.Normal());
    Y.row(i) = dynamics::BiologyTargets(b).transpose();
  }
  return *dynamics::BiologyRegression::Fit(X, Y, 1.0);
}

/// Scenario tables naming the files WriteTestModels writes (paths relative to its folder).
inline constexpr const char* kTestModelsToml = R"(
[dynamics]
backend = "mechanistic"
calibration = "models/calibration.json"

[survival]
backend = "cox"
model = "models/cox.json"
)";

/// The shipped backends with the synthetic world plugged in as the synthetic cohort source, as the
/// mewm binary's main builds them (without the diffusion model).
inline const scenarios::BackendRegistry& WorldBackends() {
  static const scenarios::BackendRegistry backends = [] {
    auto r = scenarios::BackendRegistry::Builtin();
    r.SetSyntheticCohorts(scenarios::SyntheticWorldCohorts());
    return r;
  }();
  return backends;
}

/// Writes models/cox.json and models/calibration.json under `dir`.
inline void WriteTestModels(const std::string& dir) {
  std::filesystem::create_directories(dir + "/models");
  auto cox = survival::CoxSurvival::Create(HandCox(), {"test", "0", "hand-set", "{}"});
  ASSERT_TRUE(cox) << cox.error().message;
  ASSERT_TRUE((*cox)->Save(dir + "/models/cox.json"));
  ASSERT_TRUE(RandomCalibration().Save(dir + "/models/calibration.json"));
}

}  // namespace mewm::testing

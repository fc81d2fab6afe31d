// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/dynamics/calibration.h"

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "mewm/core/file_util.h"
#include "mewm/core/sha256.h"
#include "mewm/tace/tumor_features.h"

namespace mewm::dynamics {
namespace {

using nlohmann::json;
constexpr const char* kFormat = "mewm.mechanistic_calibration";
constexpr int kFormatVersion = 1;

double Sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

std::vector<double> ToVector(const Eigen::VectorXd& v) { return {v.data(), v.data() + v.size()}; }

/// `n` numbers, each in [lo, hi]; the errors name the key (`what`).
Expected<Eigen::VectorXd> FromVector(const json& j, Eigen::Index n, const std::string& what,
                                     double lo, double hi) {
  if (!j.is_array() || Eigen::Index(j.size()) != n) {
    return MakeError(ErrorCode::kCorruptData, what + " must be an array of " + std::to_string(n) +
                                                  " numbers, not " + j.dump().substr(0, 60));
  }
  Eigen::VectorXd v(n);
  for (Eigen::Index i = 0; i < n; ++i) {
    const json& x = j[std::size_t(i)];
    v[i] = x.is_number() ? x.get<double>() : std::nan("");
    if (!(v[i] >= lo && v[i] <= hi)) {
      return MakeError(ErrorCode::kCorruptData, what + "[" + std::to_string(i) + "] is " +
                                                    x.dump().substr(0, 40) + ", outside [" +
                                                    json(lo).dump() + ", " + json(hi).dump() + "]");
    }
  }
  return v;
}

}  // namespace

const std::vector<std::string>& BiologyFeatureNames() {
  static const std::vector<std::string> names = {
      "log_tumor_ml", "enhancing_hu",     "sd_hu",     "necrotic_fraction", "sphericity",
      "lesions",      "log_max_diameter", "log10_afp", "vascular_invasion", "age_years"};
  return names;
}

const std::vector<std::string>& BiologyTargetNames() {
  static const std::vector<std::string> names = {"log_proliferation",
                                                 "log_infiltration",
                                                 "logit_vascularity",
                                                 "log_sensitivity_platinum",
                                                 "log_sensitivity_anthracycline",
                                                 "log_sensitivity_antimetabolite",
                                                 "log_sensitivity_mitomycin"};
  return names;
}

Expected<Eigen::VectorXd> BiologyFeatures(const PatientCase& patient) {
  MEWM_RETURN_IF_ERROR(patient.Validate());
  MEWM_TRY(const TumorFeatures f, ComputeTumorFeatures(patient.ct, patient.tumor));
  const Covariates& c = patient.covariates;
  Eigen::VectorXd x(10);
  x << std::log(f.volume_ml), f.enhancing_hu, f.sd_hu, f.necrotic_fraction, f.sphericity,
      double(f.lesions), std::log(std::max(c.max_diameter_mm, 1.0)),
      std::log10(std::max(c.afp_ng_ml, 0.1)), c.vascular_invasion ? 1.0 : 0.0, c.age_years;
  return x;
}

Eigen::VectorXd BiologyTargets(const TumorBiology& b) {
  const double v = std::clamp(b.vascularity, 1e-4, 1.0 - 1e-4);
  Eigen::VectorXd y(7);
  // Floors keep valid-but-zero parameters finite on the log scale.
  const auto log = [](double x) { return std::log(std::max(x, 1e-6)); };
  y << log(b.proliferation_per_day), log(b.infiltration_mm2_per_day), std::log(v / (1.0 - v)),
      log(b.sensitivity[0]), log(b.sensitivity[1]), log(b.sensitivity[2]), log(b.sensitivity[3]);
  return y;
}

Expected<BiologyRegression> BiologyRegression::Fit(const Eigen::MatrixXd& X,
                                                   const Eigen::MatrixXd& Y, double ridge) {
  const auto p = Eigen::Index(BiologyFeatureNames().size());
  const auto q = Eigen::Index(BiologyTargetNames().size());
  if (X.rows() < 10 || X.rows() != Y.rows() || X.cols() != p || Y.cols() != q) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "biology regression: need at least 10 patients and " + std::to_string(p) +
                         " features x " + std::to_string(q) + " targets per row");
  }
  if (!X.allFinite() || !Y.allFinite() || !(ridge >= 0.0)) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "biology regression: non-finite data or negative ridge");
  }
  BiologyRegression r;
  const double n = double(X.rows());
  r.mean_ = X.colwise().mean().transpose();
  r.scale_ =
      ((X.rowwise() - r.mean_.transpose()).colwise().squaredNorm() / n).cwiseSqrt().transpose();
  for (Eigen::Index k = 0; k < p; ++k) {
    if (r.scale_[k] < 1e-12) r.scale_[k] = 1.0;
  }
  const Eigen::MatrixXd Z =
      (X.rowwise() - r.mean_.transpose()).array().rowwise() / r.scale_.transpose().array();
  r.intercept_ = Y.colwise().mean().transpose();
  const Eigen::MatrixXd Yc = Y.rowwise() - r.intercept_.transpose();
  const Eigen::MatrixXd A = Z.transpose() * Z + ridge * Eigen::MatrixXd::Identity(p, p);
  r.weights_ = A.ldlt().solve(Z.transpose() * Yc);
  const Eigen::MatrixXd residual = Yc - Z * r.weights_;
  r.residual_sd_ = (residual.colwise().squaredNorm() / n).cwiseSqrt().transpose();
  r.r2_.resize(q);
  for (Eigen::Index t = 0; t < q; ++t) {
    const double total = Yc.col(t).squaredNorm();
    r.r2_[t] = total > 0 ? 1.0 - residual.col(t).squaredNorm() / total : 0.0;
  }
  return r;
}

Expected<TumorBiology> BiologyRegression::Predict(const Eigen::VectorXd& x) const {
  if (mean_.size() == 0 || x.size() != mean_.size() || !x.allFinite()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "biology regression: expected " + std::to_string(mean_.size()) +
                         " finite features, got " + std::to_string(x.size()));
  }
  const Eigen::VectorXd z = (x - mean_).cwiseQuotient(scale_);
  const Eigen::VectorXd y = intercept_ + weights_.transpose() * z;
  TumorBiology b;
  // Clamped to the validator's ranges so an outlying patient cannot produce an invalid model.
  b.proliferation_per_day = std::clamp(std::exp(y[0]), 1e-4, 0.45);
  b.infiltration_mm2_per_day = std::clamp(std::exp(y[1]), 1e-4, 9.0);
  b.vascularity = Sigmoid(y[2]);
  for (int k = 0; k < 4; ++k)
    b.sensitivity[std::size_t(k)] = std::clamp(std::exp(y[3 + k]), 0.0, 50.0);
  MEWM_RETURN_IF_ERROR(b.Validate());
  return b;
}

Expected<TumorBiology> BiologyRegression::Predict(const PatientCase& patient) const {
  MEWM_TRY(const Eigen::VectorXd x, BiologyFeatures(patient));
  auto b = Predict(x);
  if (!b) return b.error().WithContext("patient '" + patient.id + "'");
  return b;
}

BiologySource BiologyRegression::AsSource() const {
  return [self = *this](const PatientCase& patient) { return self.Predict(patient); };
}

std::string BiologyRegression::ToJson() const {
  json weights = json::array();
  for (Eigen::Index k = 0; k < weights_.rows(); ++k) {
    weights.push_back(ToVector(weights_.row(k).transpose()));
  }
  json m;
  try {
    m = json::parse(metrics);
  } catch (const std::exception&) {
    m = json::object();
  }
  const json j = {
      {"format", kFormat},
      {"version", kFormatVersion},
      {"provenance", {{"command", command}, {"seed", seed}, {"data", data}, {"metrics", m}}},
      {"features", BiologyFeatureNames()},
      {"targets", BiologyTargetNames()},
      {"feature_mean", ToVector(mean_)},
      {"feature_scale", ToVector(scale_)},
      {"intercept", ToVector(intercept_)},
      {"weights", weights},
      {"r2", ToVector(r2_)},
      {"residual_sd", ToVector(residual_sd_)}};
  return j.dump(1) + "\n";
}

Expected<BiologyRegression> BiologyRegression::FromJson(const std::string& text,
                                                        const std::string& origin) {
  const auto corrupt = [&](const std::string& what) {
    return MakeError(ErrorCode::kCorruptData, "'" + origin + "': " + what);
  };
  try {
    const json j = json::parse(text, /*cb=*/nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) {
      // Said without nlohmann's message, which quotes the file's bytes.
      return corrupt(
          "not JSON; a mechanistic calibration is the JSON file `mewm train "
          "mechanistic` writes");
    }
    if (!j.is_object() || j.value("format", "") != kFormat) {
      return corrupt(std::string("not a mewm mechanistic calibration (format must be '") + kFormat +
                     "')");
    }
    if (j.value("version", 0) != kFormatVersion) {
      return corrupt("unsupported format version " + j.value("version", json(0)).dump());
    }
    if (j.at("features").get<std::vector<std::string>>() != BiologyFeatureNames() ||
        j.at("targets").get<std::vector<std::string>>() != BiologyTargetNames()) {
      return MakeError(ErrorCode::kMismatch,
                       "'" + origin +
                           "': made with other features or targets than this build's; retrain "
                           "it with `mewm train mechanistic`");
    }
    const auto p = Eigen::Index(BiologyFeatureNames().size());
    const auto q = Eigen::Index(BiologyTargetNames().size());
    BiologyRegression r;
    // Bounds far outside any fit (features are standardised, targets on log scales), so a
    // damaged file cannot load as a model whose every prediction is clamped to a range's end.
    const auto vec = [&](const char* key, Eigen::Index n, double lo,
                         double hi) -> Expected<Eigen::VectorXd> {
      auto v = FromVector(j.at(key), n, key, lo, hi);
      if (!v) return v.error().WithContext("'" + origin + "'");
      return v;
    };
    MEWM_TRY(r.mean_, vec("feature_mean", p, -1e6, 1e6));
    MEWM_TRY(r.scale_, vec("feature_scale", p, 1e-6, 1e6));
    MEWM_TRY(r.intercept_, vec("intercept", q, -100, 100));
    MEWM_TRY(r.r2_, vec("r2", q, -100, 1));
    MEWM_TRY(r.residual_sd_, vec("residual_sd", q, 0, 100));
    const json& w = j.at("weights");
    if (!w.is_array() || Eigen::Index(w.size()) != p) {
      return corrupt("weights must have " + std::to_string(p) + " rows");
    }
    r.weights_.resize(p, q);
    for (Eigen::Index k = 0; k < p; ++k) {
      auto row = FromVector(w[std::size_t(k)], q, "weights[" + std::to_string(k) + "]", -100, 100);
      if (!row) return row.error().WithContext("'" + origin + "'");
      r.weights_.row(k) = row->transpose();
    }
    const json& prov = j.at("provenance");
    r.command = prov.at("command").get<std::string>();
    r.seed = prov.at("seed").get<std::string>();
    r.data = prov.at("data").get<std::string>();
    r.metrics = prov.at("metrics").dump();
    return r;
  } catch (const std::exception& e) {
    return corrupt(e.what());
  }
}

Expected<BiologyRegression> BiologyRegression::Load(const std::string& path) {
  // The shipped calibration is a few KB; a 200 MB file took 4.7 GB to refuse.
  constexpr std::uint64_t kMaxBytes = 16u << 20;
  MEWM_TRY(const std::string text, ReadRegularFile(path, kMaxBytes));
  MEWM_RETURN_IF_ERROR(VerifyModelChecksum(path, text));
  return FromJson(text, path);
}

Status BiologyRegression::Save(const std::string& path) const {
  MEWM_RETURN_IF_ERROR(WriteFileAtomic(path, ToJson()));
  return WriteModelChecksum(path);
}

}  // namespace mewm::dynamics

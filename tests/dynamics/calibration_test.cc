// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/dynamics/calibration.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "../core/test_env.h"
#include "mewm/tace/tumor_features.h"

namespace mewm::dynamics {
namespace {

using nlohmann::json;

constexpr int kRows = 40;
constexpr int kFeatures = 10;
constexpr int kTargets = 7;

/// Uniform draws from the raw engine output, which the standard fixes.
class Draws {
 public:
  explicit Draws(std::uint64_t seed) : rng_(seed) {}
  double Uniform(double lo = 0.0, double hi = 1.0) {
    return lo + (hi - lo) * double(rng_() >> 11) * 0x1.0p-53;
  }

 private:
  std::mt19937_64 rng_;
};

/// Synthetic training data: realistic-looking features (very different scales) and targets that
/// are an exact affine function of them, kept inside the ranges Predict does not clamp.
struct Data {
  Eigen::MatrixXd x;
  Eigen::MatrixXd y;
};

Data MakeData(int rows, std::uint64_t seed = 5) {
  Draws d(seed);
  Data data{Eigen::MatrixXd(rows, kFeatures), Eigen::MatrixXd(rows, kTargets)};
  for (int r = 0; r < rows; ++r) {
    data.x.row(r) << d.Uniform(0.0, 5.0), d.Uniform(60.0, 140.0), d.Uniform(5.0, 40.0),
        d.Uniform(0.0, 0.6), d.Uniform(0.3, 0.9), double(1 + int(d.Uniform(0.0, 3.0))),
        d.Uniform(2.0, 4.5), d.Uniform(0.0, 4.0), d.Uniform() < 0.3 ? 1.0 : 0.0,
        d.Uniform(40.0, 85.0);
  }
  // Standardised-scale weights so every feature matters comparably.
  Eigen::MatrixXd w(kFeatures, kTargets);
  Draws dw(seed + 1);
  for (int f = 0; f < kFeatures; ++f)
    for (int t = 0; t < kTargets; ++t) w(f, t) = dw.Uniform(-0.08, 0.08);
  const Eigen::RowVectorXd mean = data.x.colwise().mean();
  Eigen::RowVectorXd sd = ((data.x.rowwise() - mean).colwise().squaredNorm() / rows).cwiseSqrt();
  Eigen::RowVectorXd base(kTargets);
  base << std::log(0.02), std::log(0.05), 0.0, 0.0, 0.1, -0.1, 0.2;
  for (int r = 0; r < rows; ++r) {
    const Eigen::RowVectorXd z = (data.x.row(r) - mean).cwiseQuotient(sd);
    data.y.row(r) = base + z * w;
  }
  return data;
}

class CalibrationTest : public mewm::testing::VdbTest {
 protected:
  static BiologyRegression Fitted(double ridge = 0.0) {
    const Data data = MakeData(kRows);
    auto r = BiologyRegression::Fit(data.x, data.y, ridge);
    EXPECT_TRUE(r) << r.error().ToString();
    return *r;
  }

  /// A 48 mm cube of liver (55 HU) with a 10 mm-radius tumor: 110 HU rim, 20 HU necrotic core.
  static PatientCase Patient(const std::string& id = "K1") {
    const Geometry g = Geometry::Isotropic(2.0, {-24, -24, -24});
    DenseFloat ct({24, 24, 24}, g, 55.0f);
    DenseLabel tumor({24, 24, 24}, g, 0);
    for (int k = 0; k < 24; ++k)
      for (int j = 0; j < 24; ++j)
        for (int i = 0; i < 24; ++i) {
          const double r = g.IndexToWorld({double(i), double(j), double(k)}).norm();
          if (r < 10.0) {
            tumor.at(i, j, k) = 1;
            ct.at(i, j, k) = r < 5.0 ? 20.0f : 110.0f;
          }
        }
    PatientCase c{id, *Volume::FromDense(ct, "ct"), *LabelVolume::FromDense(tumor, "tumor"),
                  std::nullopt, Covariates{}};
    c.covariates.age_years = 67;
    c.covariates.afp_ng_ml = 400;
    c.covariates.max_diameter_mm = 20;
    c.covariates.vascular_invasion = true;
    return c;
  }

  static void ExpectSameBiology(const TumorBiology& a, const TumorBiology& b) {
    EXPECT_EQ(a.proliferation_per_day, b.proliferation_per_day);
    EXPECT_EQ(a.infiltration_mm2_per_day, b.infiltration_mm2_per_day);
    EXPECT_EQ(a.vascularity, b.vascularity);
    EXPECT_EQ(a.sensitivity, b.sensitivity);
  }
};

TEST_F(CalibrationTest, NamesMatchTheFeatureVectorAndTheDrugClasses) {
  ASSERT_EQ(BiologyFeatureNames().size(), std::size_t(kFeatures));
  ASSERT_EQ(BiologyTargetNames().size(), std::size_t(kTargets));
  EXPECT_EQ(BiologyTargetNames()[0], "log_proliferation");
  EXPECT_EQ(BiologyTargetNames()[1], "log_infiltration");
  EXPECT_EQ(BiologyTargetNames()[2], "logit_vascularity");
  for (std::size_t k = 0; k < kDrugClasses.size(); ++k) {
    EXPECT_EQ(BiologyTargetNames()[3 + k], std::string("log_sensitivity_") + kDrugClasses[k]);
  }
}

TEST_F(CalibrationTest, TargetsAreTheLogScaleBiology) {
  TumorBiology b;
  b.proliferation_per_day = 0.03;
  b.infiltration_mm2_per_day = 0.2;
  b.vascularity = 0.8;
  b.sensitivity = {0.5, 1.0, 2.0, 4.0};
  const Eigen::VectorXd y = BiologyTargets(b);
  ASSERT_EQ(y.size(), kTargets);
  EXPECT_NEAR(y[0], std::log(0.03), 1e-12);
  EXPECT_NEAR(y[1], std::log(0.2), 1e-12);
  EXPECT_NEAR(y[2], std::log(0.8 / 0.2), 1e-12);
  EXPECT_NEAR(y[3], std::log(0.5), 1e-12);
  EXPECT_NEAR(y[4], 0.0, 1e-12);
  EXPECT_NEAR(y[6], std::log(4.0), 1e-12);
  // Vascularity 0 or 1 is clamped so that its logit stays finite.
  b.vascularity = 0.0;
  EXPECT_TRUE(std::isfinite(BiologyTargets(b)[2]));
  EXPECT_LT(BiologyTargets(b)[2], -5.0);
  b.vascularity = 1.0;
  EXPECT_TRUE(std::isfinite(BiologyTargets(b)[2]));
  EXPECT_GT(BiologyTargets(b)[2], 5.0);
}

TEST_F(CalibrationTest, FitRecoversAnExactLinearRelation) {
  const Data data = MakeData(kRows);
  auto r = BiologyRegression::Fit(data.x, data.y, 0.0);
  ASSERT_TRUE(r) << r.error().ToString();
  ASSERT_EQ(r->r2().size(), kTargets);
  ASSERT_EQ(r->residual_sd().size(), kTargets);
  for (int t = 0; t < kTargets; ++t) {
    EXPECT_GT(r->r2()[t], 0.99) << BiologyTargetNames()[std::size_t(t)];
    EXPECT_LT(r->residual_sd()[t], 1e-6) << BiologyTargetNames()[std::size_t(t)];
  }
  // Each training row maps back to its own targets.
  for (int row = 0; row < kRows; ++row) {
    auto b = r->Predict(Eigen::VectorXd(data.x.row(row).transpose()));
    ASSERT_TRUE(b) << b.error().ToString();
    EXPECT_TRUE(b->Validate());
    const Eigen::VectorXd y = BiologyTargets(*b);
    for (int t = 0; t < kTargets; ++t) {
      EXPECT_NEAR(y[t], data.y(row, t), 1e-6) << "row " << row << " target " << t;
    }
  }
}

TEST_F(CalibrationTest, RidgeShrinksTheFit) {
  const Data data = MakeData(kRows);
  auto exact = BiologyRegression::Fit(data.x, data.y, 0.0);
  auto shrunk = BiologyRegression::Fit(data.x, data.y, 1000.0);
  ASSERT_TRUE(exact && shrunk);
  for (int t = 0; t < kTargets; ++t) {
    EXPECT_LT(shrunk->r2()[t], exact->r2()[t]);
    EXPECT_GT(shrunk->residual_sd()[t], exact->residual_sd()[t]);
  }
}

TEST_F(CalibrationTest, KnownBiologiesRoundTripThroughTargetsAndTheFittedModel) {
  // Each patient's true biology is a function of its features; fitting on BiologyTargets of those
  // biologies and predicting must give them back.
  Draws d(9);
  Eigen::MatrixXd x(kRows, kFeatures), y(kRows, kTargets);
  std::vector<TumorBiology> truth(kRows);
  for (int r = 0; r < kRows; ++r) {
    for (int f = 0; f < kFeatures; ++f) x(r, f) = d.Uniform(-1.0, 1.0);
    TumorBiology& b = truth[std::size_t(r)];
    b.proliferation_per_day = 0.02 * std::exp(0.5 * x(r, 0));
    b.infiltration_mm2_per_day = 0.05 * std::exp(0.3 * x(r, 1) - 0.2 * x(r, 2));
    b.vascularity = 1.0 / (1.0 + std::exp(-(0.2 + x(r, 3))));
    for (int k = 0; k < 4; ++k) {
      b.sensitivity[std::size_t(k)] = std::exp(0.4 * x(r, 4 + k) - 0.1 * x(r, 9));
    }
    ASSERT_TRUE(b.Validate());
    y.row(r) = BiologyTargets(b).transpose();
  }
  auto model = BiologyRegression::Fit(x, y, 0.0);
  ASSERT_TRUE(model) << model.error().ToString();
  for (int r = 0; r < kRows; ++r) {
    auto b = model->Predict(Eigen::VectorXd(x.row(r).transpose()));
    ASSERT_TRUE(b) << b.error().ToString();
    const TumorBiology& t = truth[std::size_t(r)];
    EXPECT_NEAR(b->proliferation_per_day, t.proliferation_per_day, 1e-9 * t.proliferation_per_day);
    EXPECT_NEAR(b->infiltration_mm2_per_day, t.infiltration_mm2_per_day,
                1e-9 * t.infiltration_mm2_per_day);
    EXPECT_NEAR(b->vascularity, t.vascularity, 1e-9);
    for (std::size_t k = 0; k < 4; ++k) {
      EXPECT_NEAR(b->sensitivity[k], t.sensitivity[k], 1e-9 * t.sensitivity[k]);
    }
  }
}

TEST_F(CalibrationTest, PredictClampsOutliersToAValidBiology) {
  const BiologyRegression r = Fitted();
  Eigen::VectorXd far = MakeData(kRows).x.row(0).transpose();
  for (const double scale : {1e3, -1e3}) {
    Eigen::VectorXd x = far * scale;
    auto b = r.Predict(x);
    ASSERT_TRUE(b) << b.error().ToString();
    EXPECT_TRUE(b->Validate()) << b->Validate().error().ToString();
    EXPECT_GE(b->proliferation_per_day, 1e-4);
    EXPECT_LE(b->proliferation_per_day, 0.45);
    EXPECT_LE(b->infiltration_mm2_per_day, 9.0);
  }
}

TEST_F(CalibrationTest, PredictRejectsWrongSizedOrNonFiniteFeatures) {
  const BiologyRegression r = Fitted();
  auto short_x = r.Predict(Eigen::VectorXd::Zero(kFeatures - 1));
  ASSERT_FALSE(short_x);
  EXPECT_EQ(short_x.error().code, ErrorCode::kInvalidArgument);
  Eigen::VectorXd nan = MakeData(kRows).x.row(0).transpose();
  nan[3] = std::numeric_limits<double>::quiet_NaN();
  auto bad = r.Predict(nan);
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code, ErrorCode::kInvalidArgument);
}

TEST_F(CalibrationTest, FitRejectsTooFewRowsBadShapesAndNonFiniteData) {
  const Data nine = MakeData(9);
  auto few = BiologyRegression::Fit(nine.x, nine.y);
  ASSERT_FALSE(few);
  EXPECT_EQ(few.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(few.error().message.find("10"), std::string::npos) << few.error().message;
  const Data ten = MakeData(10);
  EXPECT_TRUE(BiologyRegression::Fit(ten.x, ten.y));

  const Data data = MakeData(kRows);
  EXPECT_FALSE(BiologyRegression::Fit(data.x.leftCols(kFeatures - 1), data.y));
  EXPECT_FALSE(BiologyRegression::Fit(data.x, data.y.leftCols(kTargets - 1)));
  EXPECT_FALSE(BiologyRegression::Fit(data.x, data.y.topRows(kRows - 1)));

  Eigen::MatrixXd x = data.x;
  x(3, 4) = std::numeric_limits<double>::quiet_NaN();
  auto nan = BiologyRegression::Fit(x, data.y);
  ASSERT_FALSE(nan);
  EXPECT_EQ(nan.error().code, ErrorCode::kInvalidArgument);
  Eigen::MatrixXd y = data.y;
  y(5, 0) = std::numeric_limits<double>::infinity();
  auto inf = BiologyRegression::Fit(data.x, y);
  ASSERT_FALSE(inf);
  EXPECT_EQ(inf.error().code, ErrorCode::kInvalidArgument);
  auto negative = BiologyRegression::Fit(data.x, data.y, -1.0);
  ASSERT_FALSE(negative);
  EXPECT_EQ(negative.error().code, ErrorCode::kInvalidArgument);
}

TEST_F(CalibrationTest, ConstantFeaturesDoNotBreakTheFit) {
  Data data = MakeData(kRows);
  data.x.col(8).setConstant(1.0);  // every patient has vascular invasion
  auto r = BiologyRegression::Fit(data.x, data.y, 1e-3);
  ASSERT_TRUE(r) << r.error().ToString();
  auto b = r->Predict(Eigen::VectorXd(data.x.row(0).transpose()));
  ASSERT_TRUE(b) << b.error().ToString();
  EXPECT_TRUE(b->Validate());
}

TEST_F(CalibrationTest, JsonRoundTripGivesIdenticalPredictions) {
  BiologyRegression r = Fitted(0.5);
  r.command = "mewm train mechanistic --cohort c.csv";
  r.seed = "17";
  r.data = "c.csv (40 patients)";
  r.metrics = R"({"r2_mean":0.8})";
  const std::string text = r.ToJson();
  auto back = BiologyRegression::FromJson(text, "calib.json");
  ASSERT_TRUE(back) << back.error().ToString();
  EXPECT_EQ(back->command, r.command);
  EXPECT_EQ(back->seed, r.seed);
  EXPECT_EQ(back->data, r.data);
  EXPECT_EQ(json::parse(back->metrics), json::parse(r.metrics));
  EXPECT_TRUE(back->r2() == r.r2());
  EXPECT_TRUE(back->residual_sd() == r.residual_sd());
  const Data data = MakeData(kRows, 77);  // not the training rows
  for (int row = 0; row < 5; ++row) {
    const Eigen::VectorXd x = data.x.row(row).transpose();
    auto a = r.Predict(x);
    auto b = back->Predict(x);
    ASSERT_TRUE(a && b);
    ExpectSameBiology(*a, *b);
  }
  EXPECT_EQ(back->ToJson(), text);
}

TEST_F(CalibrationTest, SaveAndLoadThroughAFile) {
  mewm::testing::TempDir dir;
  const BiologyRegression r = Fitted();
  const std::string path = dir.File("calibration.json");
  ASSERT_TRUE(r.Save(path));
  auto loaded = BiologyRegression::Load(path);
  ASSERT_TRUE(loaded) << loaded.error().ToString();
  const Eigen::VectorXd x = MakeData(kRows).x.row(3).transpose();
  ExpectSameBiology(*r.Predict(x), *loaded->Predict(x));
  EXPECT_EQ(loaded->metrics, "{}");

  auto missing = BiologyRegression::Load(dir.File("absent.json"));
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, ErrorCode::kNotFound);

  {
    std::ofstream out(dir.File("garbage.json"), std::ios::binary);
    out << "not json";
  }
  auto garbage = BiologyRegression::Load(dir.File("garbage.json"));
  ASSERT_FALSE(garbage);
  EXPECT_EQ(garbage.error().code, ErrorCode::kCorruptData);
  EXPECT_NE(garbage.error().message.find(dir.File("garbage.json")), std::string::npos);
}

TEST_F(CalibrationTest, FromJsonRejectsOtherFilesAndNamesTheOrigin) {
  const json good = json::parse(Fitted().ToJson());
  const auto expect_error = [](const std::string& text, ErrorCode code, const std::string& what) {
    auto r = BiologyRegression::FromJson(text, "in.json");
    ASSERT_FALSE(r) << what;
    EXPECT_EQ(r.error().code, code) << what << ": " << r.error().ToString();
    EXPECT_NE(r.error().message.find("in.json"), std::string::npos) << r.error().message;
  };
  expect_error("{ not json", ErrorCode::kCorruptData, "not JSON");
  expect_error("[1, 2]", ErrorCode::kCorruptData, "an array");
  expect_error(R"({"format": "mewm.cox_survival", "version": 1})", ErrorCode::kCorruptData,
               "another format");

  json j = good;
  j["version"] = 2;
  expect_error(j.dump(), ErrorCode::kCorruptData, "a future version");

  j = good;
  j["features"][1] = "mean_hu";
  expect_error(j.dump(), ErrorCode::kMismatch, "other feature names");
  j = good;
  j["features"].erase(j["features"].size() - 1);
  expect_error(j.dump(), ErrorCode::kMismatch, "fewer features");
  j = good;
  j["targets"][0] = "proliferation";
  expect_error(j.dump(), ErrorCode::kMismatch, "other target names");

  j = good;
  j["feature_mean"].erase(std::size_t{0});
  expect_error(j.dump(), ErrorCode::kCorruptData, "a short feature_mean");
  j = good;
  j["intercept"].push_back(0.0);
  expect_error(j.dump(), ErrorCode::kCorruptData, "a long intercept");
  j = good;
  j["weights"].erase(std::size_t{0});
  expect_error(j.dump(), ErrorCode::kCorruptData, "too few weight rows");
  j = good;
  j["weights"][2].erase(std::size_t{0});
  expect_error(j.dump(), ErrorCode::kCorruptData, "a short weight row");
  j = good;
  j["feature_scale"][4] = 0.0;
  expect_error(j.dump(), ErrorCode::kCorruptData, "a zero scale");
  j = good;
  j["feature_mean"][0] = "one";
  expect_error(j.dump(), ErrorCode::kCorruptData, "a string in a vector");
  j = good;
  j.erase("provenance");
  expect_error(j.dump(), ErrorCode::kCorruptData, "no provenance");

  // Values no fit produces load as a model whose every prediction sits at a clamp: refused, the
  // message naming the key and the entry.
  const auto expect_named = [&](const char* key, std::size_t at, const json& value,
                                const std::string& needle) {
    json bad = good;
    if (std::string(key) == "weights") {
      bad[key][at][0] = value;
    } else {
      bad[key][at] = value;
    }
    expect_error(bad.dump(), ErrorCode::kCorruptData, needle);
    auto r = BiologyRegression::FromJson(bad.dump(), "in.json");
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find(needle), std::string::npos) << r.error().message;
  };
  expect_named("intercept", 2, 1e300, "intercept[2] is 1e+300, outside [-100.0, 100.0]");
  expect_named("feature_scale", 1, 1e-320, "feature_scale[1] is");
  expect_named("residual_sd", 0, "wide", "residual_sd[0] is \"wide\"");
  expect_named("residual_sd", 3, -1.0, "residual_sd[3] is -1.0");
  expect_named("r2", 0, 2.0, "r2[0] is 2.0");
  expect_named("weights", 4, 1e9, "weights[4][0] is");
  expect_named("feature_mean", 0, nullptr, "feature_mean[0] is null");

  // The untouched document still parses.
  EXPECT_TRUE(BiologyRegression::FromJson(good.dump(), "in.json"));
}

TEST_F(CalibrationTest, FeaturesOfAPatientAreTheMeasuredTumorAndCovariates) {
  const PatientCase patient = Patient();
  auto x = BiologyFeatures(patient);
  ASSERT_TRUE(x) << x.error().ToString();
  ASSERT_EQ(x->size(), kFeatures);
  EXPECT_TRUE(x->allFinite());
  auto f = ComputeTumorFeatures(patient.ct, patient.tumor);
  ASSERT_TRUE(f);
  EXPECT_NEAR((*x)[0], std::log(f->volume_ml), 1e-12);
  EXPECT_NEAR((*x)[1], 110.0, 1e-6);  // enhancing HU: the rim
  EXPECT_NEAR((*x)[2], f->sd_hu, 1e-12);
  EXPECT_GT((*x)[3], 0.0);  // the necrotic core
  EXPECT_LT((*x)[3], 0.5);
  EXPECT_GT((*x)[4], 0.0);
  EXPECT_LE((*x)[4], 1.0);
  EXPECT_EQ((*x)[5], 1.0);
  EXPECT_NEAR((*x)[6], std::log(20.0), 1e-12);
  EXPECT_NEAR((*x)[7], std::log10(400.0), 1e-12);
  EXPECT_EQ((*x)[8], 1.0);
  EXPECT_EQ((*x)[9], 67.0);

  // Zero AFP and diameter are floored instead of giving -inf.
  PatientCase unknown = Patient();
  unknown.covariates.afp_ng_ml = 0.0;
  unknown.covariates.max_diameter_mm = 0.0;
  auto floored = BiologyFeatures(unknown);
  ASSERT_TRUE(floored);
  EXPECT_TRUE(floored->allFinite());

  PatientCase invalid = Patient();
  invalid.tumor = LabelVolume(invalid.ct.geometry(), invalid.ct.extent(), "tumor");
  auto empty = BiologyFeatures(invalid);
  ASSERT_FALSE(empty);
  EXPECT_EQ(empty.error().code, ErrorCode::kInvalidArgument);
}

TEST_F(CalibrationTest, AsSourceGivesThePatientPrediction) {
  BiologyRegression r = Fitted();
  const PatientCase patient = Patient();
  auto direct = r.Predict(patient);
  ASSERT_TRUE(direct) << direct.error().ToString();
  EXPECT_TRUE(direct->Validate());
  auto via_features = r.Predict(*BiologyFeatures(patient));
  ASSERT_TRUE(via_features);
  ExpectSameBiology(*direct, *via_features);

  const BiologySource source = r.AsSource();
  auto sourced = source(patient);
  ASSERT_TRUE(sourced) << sourced.error().ToString();
  ExpectSameBiology(*direct, *sourced);

  // The source holds its own copy: refitting the regression afterwards does not change it.
  r = *BiologyRegression::Fit(MakeData(kRows, 123).x, MakeData(kRows, 123).y, 0.0);
  auto again = source(patient);
  ASSERT_TRUE(again);
  ExpectSameBiology(*direct, *again);

  PatientCase invalid = Patient("bad");
  invalid.covariates.age_years = -3;
  auto error = source(invalid);
  ASSERT_FALSE(error);
  EXPECT_EQ(error.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(error.error().message.find("'bad'"), std::string::npos) << error.error().message;
}

}  // namespace
}  // namespace mewm::dynamics

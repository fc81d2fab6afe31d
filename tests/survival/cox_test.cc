// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Reference values are solved by hand in the comments (no lifelines or scikit-survival on the
// build machine) or come from the simulation's known truth.
#include "mewm/survival/cox.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

namespace mewm::survival {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

struct Cohort {
  Eigen::MatrixXd x;
  std::vector<SurvivalRecord> y;
};

const std::vector<std::string> kNames = {"age_z", "vascular_invasion", "noise"};
const Eigen::Vector3d kTrueBeta(0.7, -0.5, 0.0);
constexpr double kBaselineRate = 0.05;  // events per month at x = 0

/// Uniform on [0, 1) and standard normal draws built from the raw engine output, which the
/// standard fixes, rather than std::*_distribution, whose algorithms differ between libraries.
class Draws {
 public:
  explicit Draws(std::uint64_t seed) : rng_(seed) {}
  double Uniform() { return double(rng_() >> 11) * 0x1.0p-53; }
  double Normal() {  // Box-Muller
    const double u = 1.0 - Uniform();
    return std::sqrt(-2.0 * std::log(u)) * std::cos(6.283185307179586 * Uniform());
  }

 private:
  std::mt19937_64 rng_;
};

/// Exponential survival with hazard kBaselineRate * exp(x . kTrueBeta), uniform censoring on
/// [0, 60] months (about 40% censored). With `round_to` > 0, observed times are rounded up to
/// multiples of it, which creates heavy ties.
Cohort Simulate(int n, std::uint64_t seed, double round_to = 0.0) {
  Draws draws(seed);
  Cohort c;
  c.x.resize(n, 3);
  for (int i = 0; i < n; ++i) {
    c.x(i, 0) = draws.Normal();
    c.x(i, 1) = draws.Uniform() < 0.4 ? 1.0 : 0.0;
    c.x(i, 2) = 10.0 + 5.0 * draws.Uniform();
    const double rate = kBaselineRate * std::exp(c.x.row(i).transpose().dot(kTrueBeta));
    const double event_time = -std::log(1.0 - draws.Uniform()) / rate;
    const double censor_time = 60.0 * draws.Uniform();
    double t = std::min(event_time, censor_time);
    if (round_to > 0.0) t = round_to * std::ceil(t / round_to);
    c.y.push_back({t, event_time <= censor_time});
  }
  return c;
}

void ExpectInvalid(const Expected<CoxFit>& fit) {
  ASSERT_FALSE(fit.has_value());
  EXPECT_EQ(fit.error().code, ErrorCode::kInvalidArgument) << fit.error().ToString();
}

TEST(CoxTest, RecoversKnownCoefficientsOnASimulatedCohort) {
  // Standard errors at this size are about 0.03 (age_z) and 0.06 (vascular_invasion).
  const Cohort c = Simulate(2000, 1);
  auto fit = FitCox(c.x, c.y, kNames);
  ASSERT_TRUE(fit) << fit.error().ToString();
  EXPECT_TRUE(fit->converged);
  EXPECT_LT(fit->iterations, 20);
  const Eigen::VectorXd coef = fit->Coefficients();
  for (int j = 0; j < 3; ++j) EXPECT_NEAR(coef[j], kTrueBeta[j], 0.1) << kNames[std::size_t(j)];
  EXPECT_EQ(fit->feature_names, kNames);
  EXPECT_LT(fit->log_likelihood, 0.0);

  // The Breslow baseline reproduces the true survival exp(-0.05 t) of a subject with the first two
  // features at 0 (the noise feature has no true effect; 12.5 is the middle of its range).
  const RiskScore at_zero = fit->Predict(Eigen::Vector3d(0.0, 0.0, 12.5));
  ASSERT_TRUE(at_zero.Validate());
  for (const double t : {6.0, 12.0, 24.0, 36.0}) {
    EXPECT_NEAR(*at_zero.SurvivalAt(t), std::exp(-kBaselineRate * t), 0.03) << "t = " << t;
  }
  // And the linear predictor ranks the cohort well.
  std::vector<double> risk;
  for (int i = 0; i < c.x.rows(); ++i) risk.push_back(fit->LinearPredictor(c.x.row(i).transpose()));
  EXPECT_GT(*HarrellC(risk, c.y), 0.65);
}

TEST(CoxTest, AFixedCoefficientIsKeptAndTheOthersAreFittedAroundIt) {
  const Cohort c = Simulate(2000, 3);
  // Fixing a coefficient at a wrong value moves it nowhere; fixing it at the truth leaves the
  // others where an unconstrained fit puts them.
  auto wrong = FitCox(c.x, c.y, kNames, CoxTies::kEfron, 1e-4, 50, {{"age_z", 0.2}});
  ASSERT_TRUE(wrong) << wrong.error().ToString();
  EXPECT_NEAR(wrong->Coefficients()[0], 0.2, 1e-12);
  auto right = FitCox(c.x, c.y, kNames, CoxTies::kEfron, 1e-4, 50, {{"age_z", kTrueBeta[0]}});
  ASSERT_TRUE(right) << right.error().ToString();
  EXPECT_TRUE(right->converged);
  EXPECT_NEAR(right->Coefficients()[0], kTrueBeta[0], 1e-12);
  EXPECT_NEAR(right->Coefficients()[1], kTrueBeta[1], 0.1);
  ExpectInvalid(FitCox(c.x, c.y, kNames, CoxTies::kEfron, 1e-4, 50, {{"nope", 1.0}}));
  ExpectInvalid(FitCox(c.x, c.y, kNames, CoxTies::kEfron, 1e-4, 50,
                       {{"age_z", std::numeric_limits<double>::quiet_NaN()}}));
}

TEST(CoxTest, BreslowAndEfronAgreeWithoutTies) {
  const Cohort c = Simulate(300, 11);
  auto breslow = FitCox(c.x, c.y, kNames, CoxTies::kBreslow);
  auto efron = FitCox(c.x, c.y, kNames, CoxTies::kEfron);
  ASSERT_TRUE(breslow && efron);
  for (int j = 0; j < 3; ++j) EXPECT_NEAR(breslow->beta[j], efron->beta[j], 1e-12);
  EXPECT_NEAR(breslow->log_likelihood, efron->log_likelihood, 1e-9);
}

TEST(CoxTest, EfronDiffersFromBreslowUnderHeavyTies) {
  // Times rounded up to 6-month bins: ~10 distinct times for 2000 subjects. Breslow's
  // approximation is known to pull coefficients toward 0; Efron's much less.
  const Cohort c = Simulate(2000, 5, 6.0);
  auto breslow = FitCox(c.x, c.y, kNames, CoxTies::kBreslow);
  auto efron = FitCox(c.x, c.y, kNames, CoxTies::kEfron);
  ASSERT_TRUE(breslow && efron);
  const Eigen::VectorXd b = breslow->Coefficients();
  const Eigen::VectorXd e = efron->Coefficients();
  EXPECT_GT(std::abs(e[0]) - std::abs(b[0]), 0.05);
  EXPECT_GT(std::abs(e[1]) - std::abs(b[1]), 0.02);
  EXPECT_LT(std::abs(e[0] - kTrueBeta[0]), std::abs(b[0] - kTrueBeta[0]));
}

TEST(CoxTest, MatchesAHandSolvedSingleCovariateCase) {
  // x = (1, 0, 1, 0), deaths at t = 1, 2, 3, 4; theta = exp(beta) per unit of x.
  //   L = theta/(2 theta + 2) * 1/(theta + 2) * theta/(theta + 1) * 1
  //   d log L / d theta = 2/theta - 2/(theta + 1) - 1/(theta + 2) = 0  =>  theta^2 - theta - 4 = 0
  //   theta = (1 + sqrt(17)) / 2,  beta = log(theta) ~ 0.9406
  // No ties, so Breslow and Efron coincide.
  const Eigen::MatrixXd x = (Eigen::MatrixXd(4, 1) << 1, 0, 1, 0).finished();
  const std::vector<SurvivalRecord> y = {{1, true}, {2, true}, {3, true}, {4, true}};
  const double theta = (1.0 + std::sqrt(17.0)) / 2.0;
  const double log_l =
      2 * std::log(theta) - 2 * std::log(theta + 1) - std::log(theta + 2) - std::log(2.0);
  for (const CoxTies ties : {CoxTies::kBreslow, CoxTies::kEfron}) {
    auto fit = FitCox(x, y, {"x"}, ties, /*l2=*/0.0);
    ASSERT_TRUE(fit) << fit.error().ToString();
    EXPECT_TRUE(fit->converged);
    EXPECT_NEAR(fit->Coefficients()[0], std::log(theta), 1e-6);
    EXPECT_NEAR(fit->log_likelihood, log_l, 1e-10);
    // Breslow cumulative hazard of a subject with x = 0: the sum of 1 / (risk-set total).
    const double h1 = 1.0 / (2 * theta + 2);
    const double h2 = h1 + 1.0 / (theta + 2);
    const double h3 = h2 + 1.0 / (theta + 1);
    const double h4 = h3 + 1.0;
    const RiskScore s = fit->Predict((Eigen::VectorXd(1) << 0.0).finished());
    ASSERT_EQ(s.survival.size(), 4u);
    EXPECT_NEAR(s.survival[0], std::exp(-h1), 1e-6);
    EXPECT_NEAR(s.survival[1], std::exp(-h2), 1e-6);
    EXPECT_NEAR(s.survival[2], std::exp(-h3), 1e-6);
    EXPECT_NEAR(s.survival[3], std::exp(-h4), 1e-6);
  }
}

TEST(CoxTest, MatchesHandSolvedBreslowAndEfronOnTiedDeaths) {
  // x = (1, 0, 0), deaths at t = 1, 1, 2; theta = exp(beta).
  // Breslow: both deaths at t=1 see the full risk set theta + 2:
  //   L = theta / (theta + 2)^2, 1/theta = 2/(theta + 2) => theta = 2, beta = log 2 ~ 0.6931,
  //   log L = log(1/8).
  // Efron: the second death sees theta + 2 - (theta + 1)/2 = (theta + 3)/2:
  //   L = 2 theta / ((theta + 2)(theta + 3)), 1/theta = 1/(theta+2) + 1/(theta+3)
  //   => theta^2 = 6, beta = log(6)/2 ~ 0.8959, log L = log(2 sqrt6 / ((sqrt6+2)(sqrt6+3))).
  const Eigen::MatrixXd x = (Eigen::MatrixXd(3, 1) << 1, 0, 0).finished();
  const std::vector<SurvivalRecord> y = {{1, true}, {1, true}, {2, true}};
  auto breslow = FitCox(x, y, {"x"}, CoxTies::kBreslow, 0.0);
  auto efron = FitCox(x, y, {"x"}, CoxTies::kEfron, 0.0);
  ASSERT_TRUE(breslow && efron);
  EXPECT_NEAR(breslow->Coefficients()[0], std::log(2.0), 1e-6);
  EXPECT_NEAR(breslow->log_likelihood, std::log(1.0 / 8.0), 1e-10);
  const double r6 = std::sqrt(6.0);
  EXPECT_NEAR(efron->Coefficients()[0], 0.5 * std::log(6.0), 1e-6);
  EXPECT_NEAR(efron->log_likelihood, std::log(2 * r6 / ((r6 + 2) * (r6 + 3))), 1e-10);
}

TEST(CoxTest, PredictsRelativeRiskAndAFallingSurvivalCurve) {
  const Cohort c = Simulate(400, 3);
  auto fit = FitCox(c.x, c.y, kNames);
  ASSERT_TRUE(fit);
  EXPECT_NEAR(fit->RelativeRisk(fit->mean), 1.0, 1e-12);  // the baseline subject
  const Eigen::Vector3d low(-1.0, 0.0, 12.0), high(1.5, 0.0, 12.0);
  const RiskScore a = fit->Predict(low), b = fit->Predict(high);
  ASSERT_TRUE(a.Validate() && b.Validate());
  EXPECT_DOUBLE_EQ(a.risk, std::exp(fit->LinearPredictor(low)));
  EXPECT_DOUBLE_EQ(b.risk, fit->RelativeRisk(high));
  EXPECT_GT(b.risk, a.risk);
  EXPECT_EQ(a.times_months, fit->baseline_times);
  for (std::size_t k = 0; k < a.survival.size(); ++k) EXPECT_GE(a.survival[k], b.survival[k]);
  EXPECT_LT(*b.MedianMonths(), *a.MedianMonths());
  // A wrong-sized feature vector gives NaN rather than reading out of bounds.
  EXPECT_TRUE(std::isnan(fit->LinearPredictor(Eigen::Vector2d(1.0, 2.0))));
  EXPECT_FALSE(fit->Predict(Eigen::Vector2d(1.0, 2.0)).Validate());
}

TEST(CoxTest, ConstantColumnsGetUnitScaleAndZeroCoefficient) {
  Cohort c = Simulate(300, 9);
  c.x.col(2).setConstant(0.1);
  for (const double l2 : {1e-4, 0.0}) {
    auto fit = FitCox(c.x, c.y, kNames, CoxTies::kEfron, l2);
    ASSERT_TRUE(fit);
    EXPECT_TRUE(fit->converged);
    EXPECT_DOUBLE_EQ(fit->scale[2], 1.0);
    EXPECT_DOUBLE_EQ(fit->beta[2], 0.0);
    EXPECT_TRUE(fit->beta.allFinite());
  }
}

TEST(CoxTest, ReportsNonConvergenceWhenIterationsRunOut) {
  const Cohort c = Simulate(300, 4);
  auto fit = FitCox(c.x, c.y, kNames, CoxTies::kEfron, 1e-4, /*max_iter=*/1);
  ASSERT_TRUE(fit);
  EXPECT_FALSE(fit->converged);
  EXPECT_EQ(fit->iterations, 1);
}

TEST(CoxTest, JsonRoundTripIsExact) {
  const Cohort c = Simulate(200, 8);
  auto fit = FitCox(c.x, c.y, kNames);
  ASSERT_TRUE(fit);
  auto back = CoxFit::FromJson(fit->ToJson());
  ASSERT_TRUE(back) << back.error().ToString();
  EXPECT_EQ(back->feature_names, fit->feature_names);
  EXPECT_EQ(back->beta, fit->beta);
  EXPECT_EQ(back->mean, fit->mean);
  EXPECT_EQ(back->scale, fit->scale);
  EXPECT_EQ(back->baseline_times, fit->baseline_times);
  EXPECT_EQ(back->baseline_cumhaz, fit->baseline_cumhaz);
  EXPECT_EQ(back->iterations, fit->iterations);
  EXPECT_EQ(back->log_likelihood, fit->log_likelihood);
  EXPECT_EQ(back->converged, fit->converged);
  const Eigen::Vector3d x(0.3, 1.0, 11.0);
  EXPECT_EQ(back->Predict(x).survival, fit->Predict(x).survival);
  EXPECT_EQ(back->ToJson(), fit->ToJson());
}

TEST(CoxTest, FromJsonRejectsMalformedOrInconsistentInput) {
  const Cohort c = Simulate(100, 2);
  auto fit = FitCox(c.x, c.y, kNames);
  ASSERT_TRUE(fit);
  const nlohmann::json good = nlohmann::json::parse(fit->ToJson());
  const auto with = [&](const std::string& key, const nlohmann::json& value) {
    nlohmann::json j = good;
    j[key] = value;
    return j.dump();
  };
  const auto patched = [&](const nlohmann::json& patch) {
    nlohmann::json j = good;
    j.merge_patch(patch);
    return j.dump();
  };
  const auto without = [&](const std::string& key) {
    nlohmann::json j = good;
    j.erase(key);
    return j.dump();
  };
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"not json", "{\"format\": "},
      {"not an object", "[1, 2, 3]"},
      {"wrong format", with("format", "mewm.deep")},
      {"wrong version", with("version", 2)},
      {"missing beta", without("beta")},
      {"missing converged", without("converged")},
      {"beta not array", with("beta", 1.0)},
      {"beta holds a string", with("beta", {0.1, "x", 0.3})},
      {"beta too short", with("beta", {0.1, 0.2})},
      {"names not strings", with("feature_names", {1, 2, 3})},
      {"no features", patched({{"feature_names", nlohmann::json::array()},
                               {"beta", nlohmann::json::array()},
                               {"mean", nlohmann::json::array()},
                               {"scale", nlohmann::json::array()}})},
      {"zero scale", with("scale", {1.0, 0.0, 1.0})},
      {"baseline lengths differ", with("baseline_cumhaz", {0.1})},
      {"times decrease",
       patched({{"baseline_times", {2.0, 1.0}}, {"baseline_cumhaz", {0.1, 0.2}}})},
      {"negative time", patched({{"baseline_times", {-1.0}}, {"baseline_cumhaz", {0.1}}})},
      {"cumhaz falls", patched({{"baseline_times", {1.0, 2.0}}, {"baseline_cumhaz", {0.2, 0.1}}})},
      {"negative cumhaz", patched({{"baseline_times", {1.0}}, {"baseline_cumhaz", {-0.1}}})},
      {"null log likelihood", with("log_likelihood", nullptr)},
      {"negative iterations", with("iterations", -1)},
      {"fractional iterations", with("iterations", 1.5)},
      {"converged not bool", with("converged", 1)},
      {"overflowing number", "{\"format\":\"mewm.cox\",\"version\":1,\"beta\":[1e999]}"},
  };
  for (const auto& [what, text] : cases) {
    auto parsed = CoxFit::FromJson(text);
    ASSERT_FALSE(parsed.has_value()) << what;
    EXPECT_EQ(parsed.error().code, ErrorCode::kCorruptData)
        << what << ": " << parsed.error().ToString();
  }
}

TEST(CoxTest, RejectsInvalidInputs) {
  const Cohort c = Simulate(50, 1);
  ExpectInvalid(FitCox(c.x.topRows(49), c.y, kNames));     // rows vs records
  ExpectInvalid(FitCox(c.x, c.y, {"a", "b"}));             // columns vs names
  ExpectInvalid(FitCox(Eigen::MatrixXd(50, 0), c.y, {}));  // no columns
  Eigen::MatrixXd nan_x = c.x;
  nan_x(7, 1) = kNaN;
  auto nan_fit = FitCox(nan_x, c.y, kNames);
  ExpectInvalid(nan_fit);
  EXPECT_NE(nan_fit.error().message.find("vascular_invasion"), std::string::npos);
  auto bad_time = c.y;
  bad_time[3].time = kNaN;
  ExpectInvalid(FitCox(c.x, bad_time, kNames));
  bad_time[3].time = -1.0;
  ExpectInvalid(FitCox(c.x, bad_time, kNames));
  auto one_event = c.y;
  for (auto& r : one_event) r.event = false;
  one_event[0].event = true;
  ExpectInvalid(FitCox(c.x, one_event, kNames));
  ExpectInvalid(FitCox(c.x, c.y, kNames, CoxTies::kEfron, -1.0));  // negative l2
  ExpectInvalid(FitCox(c.x, c.y, kNames, CoxTies::kEfron, kNaN));
  ExpectInvalid(FitCox(c.x, c.y, kNames, CoxTies::kEfron, 1e-4, 0));  // max_iter
}

}  // namespace
}  // namespace mewm::survival

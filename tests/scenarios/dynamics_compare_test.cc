// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// CompareDynamicsMethods: two methods of one dynamics evaluation paired by patient.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "mewm/eval/dynamics_data.h"

namespace mewm::scenarios {
namespace {

PatientFidelity Row(const std::string& id, double mae, double bias, double spearman) {
  PatientFidelity p;
  p.id = id;
  p.residual_mae_ml = mae;
  p.residual_bias_ml = bias;
  p.spearman = spearman;
  return p;
}

/// Three patients; the third's truth is constant across its plans (Spearman NaN for every
/// method), so it counts for the residual and not for the ranking.
DynamicsEvaluation TwoMethods() {
  DynamicsEvaluation eval;
  eval.cohort_dir = "cohort";
  eval.patients = 3;
  DynamicsMetrics a, b;
  a.method = "diffusion";
  b.method = "against";
  a.per_patient = {Row("P1", 10.0, -8.0, 0.5), Row("P2", 20.0, 20.0, 1.0),
                   Row("P3", 3.0, 1.0, std::nan(""))};
  b.per_patient = {Row("P1", 12.0, 12.0, 0.0), Row("P2", 16.0, -10.0, 1.0),
                   Row("P3", 5.0, -5.0, std::nan(""))};
  eval.methods = {a, b};
  return eval;
}

TEST(DynamicsComparisonTest, PairsTheMethodsPatientByPatient) {
  DynamicsEvaluation eval = TwoMethods();
  auto c = CompareDynamicsMethods(eval, "diffusion", "against");
  ASSERT_TRUE(c) << c.error().ToString();
  EXPECT_EQ(c->patients, 3);
  EXPECT_NEAR(c->residual_mae_diff.mean, (-2.0 + 4.0 - 2.0) / 3.0, 1e-12);
  EXPECT_NEAR(c->residual_level_diff.mean, (-4.0 + 10.0 - 4.0) / 3.0, 1e-12);
  EXPECT_LE(c->residual_mae_diff.lo, c->residual_mae_diff.mean);
  EXPECT_GE(c->residual_mae_diff.hi, c->residual_mae_diff.mean);
  EXPECT_LT(c->residual_mae_diff.lo, c->residual_mae_diff.hi);
  // P3 has nothing to rank: two patients, one higher under A, one the same.
  EXPECT_EQ(c->spearman_patients, 2);
  EXPECT_NEAR(c->spearman_diff.mean, 0.25, 1e-12);
  EXPECT_EQ(c->spearman_higher, 1);
  EXPECT_EQ(c->spearman_lower, 0);
  EXPECT_EQ(c->spearman_same, 1);
  // B against A: every difference changes sign, the counts swap.
  auto swapped = CompareDynamicsMethods(eval, "against", "diffusion");
  ASSERT_TRUE(swapped);
  EXPECT_NEAR(swapped->residual_mae_diff.mean, -c->residual_mae_diff.mean, 1e-12);
  EXPECT_NEAR(swapped->spearman_diff.mean, -c->spearman_diff.mean, 1e-12);
  EXPECT_EQ(swapped->spearman_lower, 1);
  EXPECT_EQ(swapped->spearman_higher, 0);
  // The table and the JSON carry it once it is set, and not before.
  EXPECT_EQ(eval.FormatTable().find("paired by patient"), std::string::npos);
  EXPECT_FALSE(nlohmann::json::parse(eval.ToJson()).contains("paired"));
  eval.paired = *c;
  EXPECT_NE(eval.FormatTable().find("paired by patient, diffusion - against"), std::string::npos)
      << eval.FormatTable();
  const nlohmann::json j = nlohmann::json::parse(eval.ToJson());
  EXPECT_EQ(j.at("paired").at("a"), "diffusion");
  EXPECT_EQ(j.at("paired").at("spearman_patients"), 2);
  EXPECT_NEAR(j.at("paired").at("spearman").at("mean").get<double>(), 0.25, 1e-12);
}

TEST(DynamicsComparisonTest, RefusesWhatCannotBePaired) {
  DynamicsEvaluation eval = TwoMethods();
  auto self = CompareDynamicsMethods(eval, "diffusion", "diffusion");
  ASSERT_FALSE(self);
  EXPECT_EQ(self.error().code, ErrorCode::kInvalidArgument);
  auto unknown = CompareDynamicsMethods(eval, "diffusion", "mechanistic");
  ASSERT_FALSE(unknown);
  EXPECT_EQ(unknown.error().code, ErrorCode::kNotFound);
  EXPECT_NE(unknown.error().message.find("mechanistic"), std::string::npos);
  // Rows of other patients, or fewer of them: not one evaluation.
  DynamicsEvaluation other = TwoMethods();
  other.methods[1].per_patient[1].id = "P9";
  auto different = CompareDynamicsMethods(other, "diffusion", "against");
  ASSERT_FALSE(different);
  EXPECT_EQ(different.error().code, ErrorCode::kInvalidArgument);
  for (const std::size_t method : {0u, 1u}) {
    DynamicsEvaluation shorter = TwoMethods();
    shorter.methods[method].per_patient.pop_back();
    auto fewer = CompareDynamicsMethods(shorter, "diffusion", "against");
    ASSERT_FALSE(fewer) << method;
    EXPECT_EQ(fewer.error().code, ErrorCode::kInvalidArgument);
  }
}

}  // namespace
}  // namespace mewm::scenarios

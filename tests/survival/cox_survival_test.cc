// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/survival/cox_survival.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "../core/test_env.h"
#include "mewm/tace/pharmacology.h"

namespace mewm::survival {
namespace {

using nlohmann::json;

constexpr int kN = 24;
constexpr double kViableBeta = 0.8;    // per unit of log1p(post viable ml)
constexpr double kToxicityBeta = 3.0;  // per unit of plan toxicity

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

void Spit(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

class CoxSurvivalTest : public mewm::testing::VdbTest {
 protected:
  /// Feature index by name, so the test does not depend on the vector order.
  static Eigen::Index Feature(const std::string& name) {
    const auto& names = CoxFeatureNames();
    for (std::size_t k = 0; k < names.size(); ++k) {
      if (names[k] == name) return Eigen::Index(k);
    }
    ADD_FAILURE() << "no Cox feature '" << name << "'";
    return 0;
  }

  static CoxFit Fit() {
    const auto p = Eigen::Index(CoxFeatureNames().size());
    CoxFit fit;
    fit.feature_names = CoxFeatureNames();
    fit.beta = Eigen::VectorXd::Zero(p);
    fit.beta[Feature("log1p_post_viable_ml")] = kViableBeta;
    fit.beta[Feature("plan_toxicity")] = kToxicityBeta;
    fit.mean = Eigen::VectorXd::Zero(p);
    fit.scale = Eigen::VectorXd::Ones(p);
    fit.baseline_times = {6.0, 12.0, 24.0};
    fit.baseline_cumhaz = {0.1, 0.3, 0.7};
    fit.iterations = 7;
    fit.log_likelihood = -123.25;
    fit.converged = true;
    return fit;
  }

  static std::unique_ptr<CoxSurvival> Model() {
    auto model = CoxSurvival::Create(Fit(), {"mewm train survival", "42", "cohort.csv", "{}"});
    EXPECT_TRUE(model) << model.error().ToString();
    return model ? std::move(*model) : nullptr;
  }

  static Geometry Lattice() { return Geometry::Isotropic(2.0, {-24, -24, -24}); }

  /// A 2 mm lattice with a 10 mm-radius tumor in liver tissue.
  static PatientCase Patient(const std::string& id = "C1") {
    const Geometry g = Lattice();
    DenseFloat ct({kN, kN, kN}, g, 55.0f);
    DenseLabel tumor({kN, kN, kN}, g, 0);
    for (int k = 0; k < kN; ++k)
      for (int j = 0; j < kN; ++j)
        for (int i = 0; i < kN; ++i) {
          if (g.IndexToWorld({double(i), double(j), double(k)}).norm() < 10.0) {
            tumor.at(i, j, k) = 1;
            ct.at(i, j, k) = 100.0f;
          }
        }
    PatientCase c{id, *Volume::FromDense(ct, "ct"), *LabelVolume::FromDense(tumor, "tumor"),
                  std::nullopt, Covariates{}};
    c.covariates.age_years = 63;
    c.covariates.afp_ng_ml = 250;
    return c;
  }

  static Plan P(const std::string& text) { return *ActionBase::Default().ParsePlan(text); }

  /// An outcome whose viable tumor is the first `viable_voxels` tumor voxels (in i-fastest order)
  /// and whose post CT has Lipiodol (400 HU) on the first `lipiodol_voxels` of them.
  static Outcome MakeOutcome(const PatientCase& patient, const Plan& plan, int viable_voxels,
                             int lipiodol_voxels = 0) {
    DenseFloat post = patient.ct.ToDense();
    DenseLabel tumor = patient.tumor.ToDense();
    DenseLabel viable(tumor.dims, tumor.geometry, 0);
    int seen = 0;
    for (std::size_t x = 0; x < tumor.data.size(); ++x) {
      if (tumor.data[x] == 0) continue;
      if (seen < viable_voxels) viable.data[x] = 1;
      if (seen < lipiodol_voxels) post.data[x] = 400.0f;
      ++seen;
    }
    return Outcome{plan, 0, *Volume::FromDense(post, "post_ct"),
                   *LabelVolume::FromDense(viable, "viable")};
  }

  static double ExpectedRisk(const Outcome& o, char child_pugh = 'A') {
    return std::exp(kViableBeta * std::log1p(ViableVolumeMl(o)) +
                    kToxicityBeta * *PlanToxicity(o.plan, child_pugh));
  }
};

TEST_F(CoxSurvivalTest, FeatureNamesAreTheDocumentedThirteen) {
  const auto& names = CoxFeatureNames();
  ASSERT_EQ(names.size(), 13u);
  EXPECT_EQ(names.front(), "log1p_pre_tumor_ml");
  EXPECT_EQ(names[1], "log1p_post_viable_ml");
  EXPECT_EQ(names[4], "plan_toxicity");
  EXPECT_EQ(names.back(), "lesion_count");
}

TEST_F(CoxSurvivalTest, FeaturesMeasureTheOutcome) {
  const PatientCase patient = Patient();
  auto pre = MeasurePreTreatment(patient);
  ASSERT_TRUE(pre) << pre.error().ToString();
  const double tumor_ml = double(CountLabel(patient.tumor)) * 8.0 / 1000.0;
  EXPECT_DOUBLE_EQ(pre->tumor_ml, tumor_ml);
  EXPECT_EQ(pre->covariates.age_years, 63);

  const int n = int(CountLabel(patient.tumor));
  const Outcome o = MakeOutcome(patient, P("Lipiodol+Cisplatin"), n / 4, n / 2);
  auto x = CoxFeatures(*pre, patient.tumor, o);
  ASSERT_TRUE(x) << x.error().ToString();
  ASSERT_EQ(x->size(), 13);
  EXPECT_DOUBLE_EQ((*x)[Feature("log1p_pre_tumor_ml")], std::log1p(tumor_ml));
  EXPECT_DOUBLE_EQ((*x)[Feature("log1p_post_viable_ml")], std::log1p(ViableVolumeMl(o)));
  EXPECT_NEAR((*x)[Feature("residual_fraction")], double(n / 4) / n, 1e-12);
  EXPECT_NEAR((*x)[Feature("lipiodol_coverage")], double(n / 2) / n, 1e-12);
  EXPECT_DOUBLE_EQ((*x)[Feature("plan_toxicity")], *PlanToxicity(o.plan, 'A'));
  EXPECT_NEAR((*x)[Feature("log10_afp")], std::log10(250.0), 1e-12);
  EXPECT_EQ((*x)[Feature("child_pugh_b")], 0.0);
  EXPECT_EQ((*x)[Feature("bclc_c")], 0.0);
  EXPECT_EQ((*x)[Feature("age_years")], 63.0);
  EXPECT_EQ((*x)[Feature("lesion_count")], 1.0);
}

TEST_F(CoxSurvivalTest, MeasurePreTreatmentRejectsAnInvalidPatient) {
  PatientCase patient = Patient();
  patient.tumor = LabelVolume(patient.ct.geometry(), patient.ct.extent(), "tumor");
  auto pre = MeasurePreTreatment(patient);
  ASSERT_FALSE(pre);
  EXPECT_EQ(pre.error().code, ErrorCode::kInvalidArgument);
}

TEST_F(CoxSurvivalTest, CreateRejectsOtherFeaturesAndMissingParameters) {
  CoxFit renamed = Fit();
  renamed.feature_names[0] = "log_pre_tumor_ml";
  auto a = CoxSurvival::Create(renamed);
  ASSERT_FALSE(a);
  EXPECT_EQ(a.error().code, ErrorCode::kMismatch);

  CoxFit fewer = Fit();
  fewer.feature_names.pop_back();
  auto b = CoxSurvival::Create(fewer);
  ASSERT_FALSE(b);
  EXPECT_EQ(b.error().code, ErrorCode::kMismatch);

  CoxFit short_beta = Fit();
  short_beta.beta = Eigen::VectorXd::Zero(3);
  auto c = CoxSurvival::Create(short_beta);
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().code, ErrorCode::kInvalidArgument);

  CoxFit no_baseline = Fit();
  no_baseline.baseline_times.clear();
  no_baseline.baseline_cumhaz.clear();
  auto d = CoxSurvival::Create(no_baseline);
  ASSERT_FALSE(d);
  EXPECT_EQ(d.error().code, ErrorCode::kInvalidArgument);

  auto ok = CoxSurvival::Create(Fit());
  ASSERT_TRUE(ok) << ok.error().ToString();
  EXPECT_EQ((*ok)->name(), "cox");
  EXPECT_EQ((*ok)->provenance().metrics, "{}");  // filled in when empty
}

TEST_F(CoxSurvivalTest, ScoreFollowsTheLinearPredictorWithAValidCurve) {
  auto model = Model();
  ASSERT_TRUE(model);
  const PatientCase patient = Patient();
  const int n = int(CountLabel(patient.tumor));
  const Outcome o = MakeOutcome(patient, P("Lipiodol+Cisplatin"), n / 3);
  SurvivalModel& backend = *model;
  auto score = backend.Score(patient, o);
  ASSERT_TRUE(score) << score.error().ToString();
  EXPECT_NEAR(score->risk, ExpectedRisk(o), 1e-12 * ExpectedRisk(o));
  EXPECT_TRUE(score->Validate()) << score->Validate().error().ToString();
  ASSERT_EQ(score->times_months, (std::vector<double>{6.0, 12.0, 24.0}));
  ASSERT_EQ(score->survival.size(), 3u);
  const double h0[3] = {0.1, 0.3, 0.7};
  for (int t = 0; t < 3; ++t) {
    EXPECT_NEAR(score->survival[t], std::exp(-h0[t] * score->risk), 1e-12);
    if (t > 0) {
      EXPECT_LE(score->survival[t], score->survival[t - 1]);
    }
  }
  EXPECT_LT(score->survival.back(), 1.0);
  EXPECT_DOUBLE_EQ(*score->SurvivalAt(0.0), 1.0);
}

TEST_F(CoxSurvivalTest, MoreViableTumorMeansHigherRisk) {
  auto model = Model();
  ASSERT_TRUE(model);
  const PatientCase patient = Patient();
  const int n = int(CountLabel(patient.tumor));
  const Plan plan = P("Lipiodol+Cisplatin");
  auto none = model->Score(patient, MakeOutcome(patient, plan, 0));
  auto some = model->Score(patient, MakeOutcome(patient, plan, n / 4));
  auto all = model->Score(patient, MakeOutcome(patient, plan, n));
  ASSERT_TRUE(none && some && all);
  EXPECT_LT(none->risk, some->risk);
  EXPECT_LT(some->risk, all->risk);
  // The curves order the same way.
  EXPECT_GT(none->survival.back(), some->survival.back());
  EXPECT_GT(some->survival.back(), all->survival.back());
}

TEST_F(CoxSurvivalTest, AMoreToxicPlanMeansHigherRisk) {
  auto model = Model();
  ASSERT_TRUE(model);
  const PatientCase patient = Patient();
  const int n = int(CountLabel(patient.tumor));
  const Outcome cisplatin = MakeOutcome(patient, P("Lipiodol+Cisplatin"), n / 2);
  const Outcome raltitrexed = MakeOutcome(patient, P("Lipiodol+Raltitrexed"), n / 2);
  ASSERT_GT(*PlanToxicity(cisplatin.plan, 'A'), *PlanToxicity(raltitrexed.plan, 'A'));
  auto hi = model->Score(patient, cisplatin);
  auto lo = model->Score(patient, raltitrexed);
  ASSERT_TRUE(hi && lo);
  EXPECT_GT(hi->risk, lo->risk);
  EXPECT_NEAR(hi->risk, ExpectedRisk(cisplatin), 1e-12 * hi->risk);
  EXPECT_NEAR(lo->risk, ExpectedRisk(raltitrexed), 1e-12 * lo->risk);
}

TEST_F(CoxSurvivalTest, ScoresEachPatientWithItsOwnMeasurements) {
  CoxFit fit = Fit();
  fit.beta[Feature("age_years")] = 0.05;
  auto aged = CoxSurvival::Create(fit);
  ASSERT_TRUE(aged);
  PatientCase young = Patient("young");
  PatientCase old = Patient("old");
  old.covariates.age_years = 83;
  const int n = int(CountLabel(young.tumor));
  const Plan plan = P("Lipiodol+Cisplatin");
  auto a = (*aged)->Score(young, MakeOutcome(young, plan, n / 2));
  auto b = (*aged)->Score(old, MakeOutcome(old, plan, n / 2));
  auto c = (*aged)->Score(young, MakeOutcome(young, plan, n / 2));
  ASSERT_TRUE(a && b && c);
  EXPECT_NEAR(b->risk / a->risk, std::exp(0.05 * 20), 1e-9);
  EXPECT_EQ(a->risk, c->risk);
  // The same id and grids with other covariates are another case, measured afresh.
  PatientCase aged_young = young;
  aged_young.covariates.age_years = 83;
  auto d = (*aged)->Score(aged_young, MakeOutcome(young, plan, n / 2));
  ASSERT_TRUE(d);
  EXPECT_EQ(d->risk, b->risk);
}

TEST_F(CoxSurvivalTest, ScoreRejectsAnInvalidPatientOrAnOutcomeOffTheLattice) {
  auto model = Model();
  ASSERT_TRUE(model);
  const PatientCase patient = Patient();
  const Plan plan = P("Lipiodol+Cisplatin");

  PatientCase empty = Patient("empty");
  empty.tumor = LabelVolume(empty.ct.geometry(), empty.ct.extent(), "tumor");
  auto invalid = model->Score(empty, MakeOutcome(patient, plan, 10));
  ASSERT_FALSE(invalid);
  EXPECT_EQ(invalid.error().code, ErrorCode::kInvalidArgument);

  Outcome off = MakeOutcome(patient, plan, 10);
  off.post_ct = Volume(Geometry::Isotropic(1.0), {kN, kN, kN}, "post_ct");
  auto mismatch = model->Score(patient, off);
  ASSERT_FALSE(mismatch);
  EXPECT_EQ(mismatch.error().code, ErrorCode::kMismatch);

  const Outcome unknown = MakeOutcome(patient, Plan({"Lipiodol", "Sorafenib"}), 10);
  auto no_physics = model->Score(patient, unknown);
  ASSERT_FALSE(no_physics);
  EXPECT_EQ(no_physics.error().code, ErrorCode::kNotFound);
}

TEST_F(CoxSurvivalTest, SaveThenLoadRoundTripsExactly) {
  mewm::testing::TempDir dir;
  const std::string path = dir.File("cox.json");
  auto model =
      CoxSurvival::Create(Fit(), {"mewm train survival --backend cox", "7",
                                  "cohort.csv (120 patients)", R"({"c_index":0.71,"ibs":0.12})"});
  ASSERT_TRUE(model);
  ASSERT_TRUE((*model)->Save(path));

  auto loaded = CoxSurvival::Load(path);
  ASSERT_TRUE(loaded) << loaded.error().ToString();
  const CoxFit& a = (*model)->fit();
  const CoxFit& b = (*loaded)->fit();
  EXPECT_EQ(b.feature_names, a.feature_names);
  EXPECT_TRUE(b.beta == a.beta);
  EXPECT_TRUE(b.mean == a.mean);
  EXPECT_TRUE(b.scale == a.scale);
  EXPECT_EQ(b.baseline_times, a.baseline_times);
  EXPECT_EQ(b.baseline_cumhaz, a.baseline_cumhaz);
  EXPECT_EQ(b.iterations, 7);
  EXPECT_EQ(b.log_likelihood, -123.25);
  EXPECT_TRUE(b.converged);
  const ModelProvenance& p = (*loaded)->provenance();
  EXPECT_EQ(p.command, "mewm train survival --backend cox");
  EXPECT_EQ(p.seed, "7");
  EXPECT_EQ(p.data, "cohort.csv (120 patients)");
  EXPECT_EQ(json::parse(p.metrics), json::parse(R"({"c_index":0.71,"ibs":0.12})"));

  const PatientCase patient = Patient();
  const Outcome o = MakeOutcome(patient, P("Lipiodol+Cisplatin"), 37, 11);
  auto before = (*model)->Score(patient, o);
  auto after = (*loaded)->Score(patient, o);
  ASSERT_TRUE(before && after);
  EXPECT_EQ(before->risk, after->risk);
  EXPECT_EQ(before->survival, after->survival);

  // Saving overwrites, and the copy saves identically.
  ASSERT_TRUE((*loaded)->Save(dir.File("again.json")));
  EXPECT_EQ(Slurp(dir.File("again.json")), Slurp(path));
}

TEST_F(CoxSurvivalTest, SaveRecordsAChecksumThatLoadChecks) {
  mewm::testing::TempDir dir;
  const std::string path = dir.File("cox.json");
  auto model = CoxSurvival::Create(Fit(), {"cmd", "1", "data", "{}"});
  ASSERT_TRUE(model);
  ASSERT_TRUE((*model)->Save(path));
  ASSERT_TRUE(std::filesystem::exists(path + ".sha256"));
  ASSERT_TRUE(CoxSurvival::Load(path));
  // One changed digit still parses as a model: only the checksum tells.
  std::string text = Slurp(path);
  const auto digit = text.find_first_of("123456789", text.find("\"model\""));
  text[digit] = text[digit] == '9' ? '8' : char(text[digit] + 1);
  std::ofstream(path, std::ios::binary) << text;
  auto damaged = CoxSurvival::Load(path);
  ASSERT_FALSE(damaged);
  EXPECT_EQ(damaged.error().code, ErrorCode::kCorruptData);
  EXPECT_NE(damaged.error().message.find(path + ".sha256' expects"), std::string::npos)
      << damaged.error().message;
  // Without its checksum file a model loads (one trained before checksums existed).
  std::filesystem::remove(path + ".sha256");
  EXPECT_TRUE(CoxSurvival::Load(path));
}

TEST_F(CoxSurvivalTest, SaveRejectsMetricsThatAreNotJson) {
  mewm::testing::TempDir dir;
  auto model = CoxSurvival::Create(Fit(), {"cmd", "1", "data", "c_index=0.7"});
  ASSERT_TRUE(model);
  auto saved = (*model)->Save(dir.File("cox.json"));
  ASSERT_FALSE(saved);
  EXPECT_EQ(saved.error().code, ErrorCode::kInvalidArgument);
  EXPECT_FALSE(std::filesystem::exists(dir.File("cox.json")));
}

TEST_F(CoxSurvivalTest, LoadRejectsFilesThatAreNotCoxSurvivalModels) {
  mewm::testing::TempDir dir;
  auto model = Model();
  ASSERT_TRUE(model);
  const std::string good = dir.File("good.json");
  ASSERT_TRUE(model->Save(good));
  const json saved = json::parse(Slurp(good));

  const auto expect_load_error = [&](const std::string& name, const std::string& text,
                                     ErrorCode code) {
    const std::string path = dir.File(name);
    Spit(path, text);
    auto loaded = CoxSurvival::Load(path);
    ASSERT_FALSE(loaded) << name;
    EXPECT_EQ(loaded.error().code, code) << name << ": " << loaded.error().ToString();
    EXPECT_NE(loaded.error().message.find(path), std::string::npos) << loaded.error().message;
  };

  expect_load_error("text.json", "this is not { JSON", ErrorCode::kCorruptData);
  expect_load_error("array.json", "[1, 2, 3]", ErrorCode::kCorruptData);
  // A bare Cox fit is JSON of another format.
  expect_load_error("bare_fit.json", Fit().ToJson(), ErrorCode::kCorruptData);
  expect_load_error("other.json", R"({"format": "mewm.mechanistic_calibration", "version": 1})",
                    ErrorCode::kCorruptData);

  json future = saved;
  future["version"] = 2;
  expect_load_error("future.json", future.dump(), ErrorCode::kCorruptData);

  json no_provenance = saved;
  no_provenance.erase("provenance");
  expect_load_error("no_provenance.json", no_provenance.dump(), ErrorCode::kCorruptData);

  json bad_model = saved;
  bad_model["model"]["scale"][0] = -1.0;
  expect_load_error("bad_model.json", bad_model.dump(), ErrorCode::kCorruptData);

  // Values no fit gives: a coefficient past 100 per SD (1e300 scored every plan 0), a baseline of
  // more than 100,000 times (each scored plan walks it), a file over 16 MiB (read whole first).
  json huge_beta = saved;
  huge_beta["model"]["beta"][0] = 1e300;
  expect_load_error("huge_beta.json", huge_beta.dump(), ErrorCode::kCorruptData);
  json long_baseline = saved;
  json& times = long_baseline["model"]["baseline_times"];
  json& cumhaz = long_baseline["model"]["baseline_cumhaz"];
  times = json::array();
  cumhaz = json::array();
  for (int k = 0; k <= 100000; ++k) {
    times.push_back(0.01 * (k + 1));
    cumhaz.push_back(1e-6 * k);
  }
  expect_load_error("long_baseline.json", long_baseline.dump(), ErrorCode::kCorruptData);
  expect_load_error("huge.json", saved.dump() + std::string(17u << 20, ' '),
                    ErrorCode::kInvalidArgument);

  json renamed = saved;
  renamed["model"]["feature_names"][3] = "lipiodol_fraction";
  expect_load_error("renamed.json", renamed.dump(), ErrorCode::kMismatch);

  auto missing = CoxSurvival::Load(dir.File("absent.json"));
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, ErrorCode::kNotFound);

  // The untouched file still loads.
  EXPECT_TRUE(CoxSurvival::Load(good));
}

}  // namespace
}  // namespace mewm::survival

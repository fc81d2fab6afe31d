// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/dynamics/mechanistic.h"

#include <gtest/gtest.h>

#include <atomic>
#include <functional>

#include "../core/test_env.h"

namespace mewm::dynamics {
namespace {

class MechanisticTest : public testing::VdbTest {
 protected:
  /// A 48 mm cube of liver (55 HU) in air with a 12 mm-radius tumor: 115 HU rim, 85 HU interior.
  static PatientCase Case() {
    const Geometry g = Geometry::Isotropic(1.0, {-24, -24, -24});
    DenseFloat ct({48, 48, 48}, g, 55.0f);
    DenseLabel tumor({48, 48, 48}, g, 0);
    for (int k = 0; k < 48; ++k)
      for (int j = 0; j < 48; ++j)
        for (int i = 0; i < 48; ++i) {
          const double r = (g.IndexToWorld({double(i), double(j), double(k)})).norm();
          if (r < 12.0) {
            tumor.at(i, j, k) = 1;
            ct.at(i, j, k) = r > 10.0 ? 115.0f : 85.0f;
          }
        }
    PatientCase c{"T1", *Volume::FromDense(ct, "ct"), *LabelVolume::FromDense(tumor, "tumor"),
                  std::nullopt, Covariates{}};
    c.covariates.age_years = 60;
    return c;
  }
  static Plan P(const std::string& text) { return *ActionBase::Default().ParsePlan(text); }
  static double Residual(const std::vector<TumorField>& f, const TumorBiology& b,
                         const std::string& plan, std::uint64_t seed = 0) {
    auto r = SimulateResponse(f, b, P(plan), 'A', MechanisticConfig{}, seed, nullptr);
    EXPECT_TRUE(r) << r.error().ToString();
    return r ? r->post_viable_ml : -1.0;
  }
};

TEST_F(MechanisticTest, FieldsCoverTheTumorWithDensityAndPerfusion) {
  auto fields = BuildTumorFields(Case(), MechanisticConfig{});
  ASSERT_TRUE(fields) << fields.error().ToString();
  ASSERT_EQ(fields->size(), 1u);
  const TumorField& f = fields->front();
  EXPECT_NEAR(f.diameter_mm, 24.0, 1.0);
  double mass = 0.0, max_perf = 0.0;
  for (std::size_t x = 0; x < f.density.data.size(); ++x) {
    mass += f.density.data[x];
    max_perf = std::max(max_perf, double(f.perfusion.data[x]));
  }
  // 4/3 pi 12^3 mm^3 = 7.24 mL, in 2 mm voxels of 8 mm^3.
  EXPECT_NEAR(mass * 8.0 / 1000.0, 7.24, 0.4);
  EXPECT_GT(max_perf, 0.8);  // the enhancing rim
}

TEST_F(MechanisticTest, TreatmentsShrinkTheTumorInTheExpectedOrder) {
  auto fields = *BuildTumorFields(Case(), MechanisticConfig{});
  TumorBiology b;
  const double lipiodol = Residual(fields, b, "Lipiodol");
  const double one_drug = Residual(fields, b, "Lipiodol+Epirubicin");
  const double two_drugs = Residual(fields, b, "Lipiodol+Epirubicin+Cisplatin");
  const double embolized = Residual(fields, b, "Lipiodol+Epirubicin+Cisplatin+PVA");
  EXPECT_LT(one_drug, lipiodol);
  EXPECT_LT(two_drugs, one_drug);
  EXPECT_LT(embolized, two_drugs);
  // A patient insensitive to anthracyclines gains little from epirubicin.
  TumorBiology resistant = b;
  resistant.sensitivity[1] = 0.05;
  EXPECT_GT(Residual(fields, resistant, "Lipiodol+Epirubicin"), one_drug);
}

TEST_F(MechanisticTest, TheImageShowsTheResidualAndTheEstimateReadsItBack) {
  const PatientCase pre = Case();
  const MechanisticConfig config;
  auto fields = *BuildTumorFields(pre, config);
  // An untreated image reads back as the whole enhancing tumor (4/3 pi 12^3 mm^3 = 7.24 mL).
  auto untouched = EstimateResidualFromImage(pre, pre.ct, config);
  ASSERT_TRUE(untouched) << untouched.error().ToString();
  EXPECT_NEAR(*untouched, 7.24, 0.2);
  // After treatment the estimate follows the truth's integral across plans, residual below 0.5
  // included. It misses the growth beyond the pre-treatment mask, which on this small 24 mm
  // tumor is 1.4-1.8 mL: it never overestimates, and stays within 30% of the tumor.
  TumorBiology b;
  double previous = 1e9;
  for (const char* plan : {"Lipiodol", "Lipiodol+Epirubicin", "Lipiodol+Epirubicin+PVA"}) {
    std::vector<FieldResponse> responses;
    auto truth = SimulateResponse(fields, b, P(plan), 'A', config, 0, &responses);
    ASSERT_TRUE(truth) << truth.error().ToString();
    auto outcome = RenderOutcome(pre, fields, responses, P(plan), 0, 7, config);
    ASSERT_TRUE(outcome) << outcome.error().ToString();
    auto estimate = EstimateResidualFromImage(pre, fields, outcome->post_ct);
    ASSERT_TRUE(estimate) << estimate.error().ToString();
    EXPECT_LE(*estimate, truth->post_viable_ml + 0.1) << plan;
    EXPECT_GE(*estimate, truth->post_viable_ml - 0.3 * truth->pre_viable_ml) << plan;
    EXPECT_LT(*estimate, previous) << plan;  // stronger plans read as less residual
    previous = *estimate;
  }
  // A post-treatment CT on another lattice is an error, not a number.
  const Geometry other = Geometry::Isotropic(2.0, {-24, -24, -24});
  auto moved = EstimateResidualFromImage(
      pre, *Volume::FromDense(DenseFloat({24, 24, 24}, other, 55.0f), "ct"), config);
  ASSERT_FALSE(moved);
  EXPECT_EQ(moved.error().code, ErrorCode::kMismatch);
}

TEST_F(MechanisticTest, DiffusionAloneConservesMassAndStaysStableAtHighInfiltration) {
  auto fields = *BuildTumorFields(Case(), MechanisticConfig{});
  TumorBiology b;
  b.proliferation_per_day = 0.0;
  b.infiltration_mm2_per_day = 5.0;  // forces many CFL-limited steps
  auto r = SimulateResponse(fields, b, Plan(), 'A', MechanisticConfig{}, 0, nullptr);
  ASSERT_TRUE(r);
  EXPECT_NEAR(r->post_viable_ml, r->pre_viable_ml, 1e-3 * r->pre_viable_ml);
  std::vector<FieldResponse> out;
  ASSERT_TRUE(SimulateResponse(fields, b, Plan(), 'A', MechanisticConfig{}, 0, &out));
  for (float v : out.front().density.data) {
    ASSERT_TRUE(v >= 0.0f && v <= 1.0f);
  }
}

TEST_F(MechanisticTest, SamplesDifferBySeedAndRepeatExactly) {
  auto fields = *BuildTumorFields(Case(), MechanisticConfig{});
  TumorBiology b;
  const double a1 = Residual(fields, b, "Lipiodol+Epirubicin", 11);
  const double a2 = Residual(fields, b, "Lipiodol+Epirubicin", 11);
  const double c = Residual(fields, b, "Lipiodol+Epirubicin", 12);
  EXPECT_EQ(a1, a2);
  EXPECT_NE(a1, c);
}

TEST_F(MechanisticTest, ATabulatedCollateralPatternGivesTheSameResponseBitForBit) {
  const std::vector<TumorField> plain = *BuildTumorFields(Case(), MechanisticConfig{});
  TumorBiology b;
  b.vascularity = 0.3;  // hypovascular: the pattern spares patches, so it shapes the response
  b.pattern_seed = 77;
  std::vector<TumorField> tabulated = plain;
  TabulateCollateralPattern(tabulated, b.pattern_seed);
  ASSERT_EQ(tabulated.front().pattern.size(), plain.front().density.data.size());
  EXPECT_EQ(tabulated.front().pattern_seed, 77u);
  const auto respond = [&](const std::vector<TumorField>& fields, const std::string& plan,
                           std::uint64_t seed) {
    std::vector<FieldResponse> out;
    auto r = SimulateResponse(fields, b, P(plan), 'A', MechanisticConfig{}, seed, &out);
    EXPECT_TRUE(r) << r.error().ToString();
    return std::make_pair(r ? r->post_viable_ml : -1.0, out.front().density.data);
  };
  for (const std::string plan : {"Gelatin Sponge+Lipiodol+Epirubicin", "PVA", "Lipiodol"}) {
    // Seed 0 is the unperturbed biology that reads the table; seed 5 perturbs the pattern's seed,
    // so it must ignore the table and evaluate its own.
    for (const std::uint64_t seed : {0u, 5u}) {
      const auto expected = respond(plain, plan, seed);
      const auto got = respond(tabulated, plan, seed);
      EXPECT_EQ(got.first, expected.first) << plan << " seed " << seed;
      EXPECT_TRUE(got.second == expected.second) << plan << " seed " << seed;
    }
  }
  // The table is what is read: a table saying every voxel is spared changes the response.
  std::vector<TumorField> spared = tabulated;
  std::fill(spared.front().pattern.begin(), spared.front().pattern.end(), 1.0);
  EXPECT_GT(respond(spared, "Gelatin Sponge+Lipiodol+Epirubicin", 0).first,
            respond(plain, "Gelatin Sponge+Lipiodol+Epirubicin", 0).first);
  // Another seed's table is ignored, as is a table of the wrong size; seed 0 clears the tables.
  std::vector<TumorField> cut = tabulated;
  cut.front().pattern.assign(3, 1.0);
  EXPECT_EQ(respond(cut, "Gelatin Sponge+Lipiodol+Epirubicin", 0).first,
            respond(plain, "Gelatin Sponge+Lipiodol+Epirubicin", 0).first);
  TabulateCollateralPattern(spared, 78);
  EXPECT_EQ(respond(spared, "PVA", 0).first, respond(plain, "PVA", 0).first);
  TabulateCollateralPattern(spared, 0);
  EXPECT_TRUE(spared.front().pattern.empty());
  EXPECT_EQ(spared.front().pattern_seed, 0u);
}

TEST_F(MechanisticTest, AFieldWithoutVoxelsHasNoResponse) {
  TumorField empty;
  empty.density = DenseFloat({0, 3, 3}, Geometry::Isotropic(2.0, {0, 0, 0}));
  empty.perfusion = empty.density;
  empty.periphery = empty.density;
  std::vector<TumorField> fields = {empty};
  TabulateCollateralPattern(fields, 77);
  TumorBiology b;
  b.pattern_seed = 77;
  std::vector<FieldResponse> out;
  auto r = SimulateResponse(fields, b, P("Lipiodol+Epirubicin"), 'A', MechanisticConfig{}, 0, &out);
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->pre_viable_ml, 0.0);
  EXPECT_EQ(r->post_viable_ml, 0.0);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_TRUE(out.front().density.data.empty());
}

TEST_F(MechanisticTest, ToxicityGrowsWithPoorLiverReserveAndRiskyPairs) {
  const double a = *PlanToxicity(P("Lipiodol+Epirubicin"), 'A');
  EXPECT_GT(*PlanToxicity(P("Lipiodol+Epirubicin"), 'B'), a);
  EXPECT_GT(*PlanToxicity(P("Lipiodol+Epirubicin+Cisplatin"), 'A'),
            a + PhysicsOf("Cisplatin")->toxicity);
  EXPECT_GT(*PlanToxicity(P("Lipiodol+Absolute Alcohol"), 'B') -
                *PlanToxicity(P("Lipiodol+Absolute Alcohol"), 'A'),
            0.25);
  auto unknown = PhysicsOf("Sorafenib");
  ASSERT_FALSE(unknown);
  EXPECT_NE(unknown.error().message.find("Sorafenib"), std::string::npos);
}

TEST_F(MechanisticTest, PerPatientWorkIsRedoneForAnotherCaseUnderTheSameId) {
  int estimates = 0;
  auto model = MechanisticDynamics::Create(
      MechanisticConfig{}, [&estimates](const PatientCase&) -> Expected<TumorBiology> {
        ++estimates;
        return TumorBiology{};
      });
  ASSERT_TRUE(model);
  const std::vector<SimulationRequest> request = {{P("Lipiodol+Epirubicin"), 0, 5, 0}};
  const PatientCase patient = Case();
  ASSERT_TRUE((*model)->Simulate(patient, request));
  ASSERT_TRUE((*model)->Simulate(PatientCase(patient), request));  // a copy: the same patient
  EXPECT_EQ(estimates, 1);
  // The same id and tumor grid with another CT (the old key saw only the id and tumor grid).
  PatientCase rescanned = patient;
  rescanned.ct = patient.ct.DeepCopy();
  rescanned.ct.SetValue(24, 24, 24, 300.0f);
  auto a = (*model)->Simulate(rescanned, request);
  ASSERT_TRUE(a);
  EXPECT_EQ(estimates, 2);
  auto fresh = MechanisticDynamics::Create(
      MechanisticConfig{},
      [](const PatientCase&) -> Expected<TumorBiology> { return TumorBiology{}; });
  ASSERT_TRUE(fresh);
  auto b = (*fresh)->Simulate(rescanned, request);
  ASSERT_TRUE(b);
  EXPECT_EQ(a->front().post_ct.ToDense().data, b->front().post_ct.ToDense().data);
  // A failed estimate leaves nothing cached: the next call tries again.
  auto failing = MechanisticDynamics::Create(
      MechanisticConfig{}, [&estimates](const PatientCase&) -> Expected<TumorBiology> {
        if (++estimates == 3) return MakeError(ErrorCode::kInvalidArgument, "no estimate");
        return TumorBiology{};
      });
  ASSERT_TRUE(failing);
  EXPECT_FALSE((*failing)->Simulate(patient, request));
  EXPECT_TRUE((*failing)->Simulate(patient, request));
  EXPECT_EQ(estimates, 4);
}

TEST_F(MechanisticTest, BackendRendersOutcomesAndBatchingNeverChangesThem) {
  const PatientCase patient = Case();
  TumorBiology b;
  auto model = MechanisticDynamics::Create(
      MechanisticConfig{}, [b](const PatientCase&) -> Expected<TumorBiology> { return b; });
  ASSERT_TRUE(model);
  const std::vector<SimulationRequest> requests = {
      {P("Lipiodol+Epirubicin"), 0, 5, 0}, {P("Lipiodol+Cisplatin+Gelatin Sponge"), 1, 6, 0}};
  auto batch = (*model)->Simulate(patient, requests);
  ASSERT_TRUE(batch) << batch.error().ToString();
  ASSERT_EQ(batch->size(), 2u);
  for (std::size_t n = 0; n < requests.size(); ++n) {
    auto single = (*model)->Simulate(patient, {requests[n]});
    ASSERT_TRUE(single);
    EXPECT_EQ(single->front().post_ct.ToDense().data, (*batch)[n].post_ct.ToDense().data);
    EXPECT_EQ(single->front().viable.ToDense().data, (*batch)[n].viable.ToDense().data);
    EXPECT_TRUE(CheckOutcome((*batch)[n], requests[n], patient));
  }
  EXPECT_EQ((*model)->evaluations(), 4);
  // Lipiodol deposits are hyperdense; the viable tumor shrank.
  const Outcome& o = batch->front();
  EXPECT_GT(o.post_ct.Statistics().max, 200.0);
  EXPECT_LT(ViableVolumeMl(o), 7.24);
}

TEST_F(MechanisticTest, ACancellationStopsTheSolvesAtTheirNextTimeStep) {
  const PatientCase patient = Case();
  auto fields = *BuildTumorFields(patient, MechanisticConfig{});
  TumorBiology b;
  b.infiltration_mm2_per_day = 5.0;  // many CFL-limited steps, as in the stability test
  // The solve polls once per time step: cancelled at the third poll, it stops there.
  std::atomic<int> polls{0};
  const std::function<bool()> third = [&] { return ++polls >= 3; };
  auto stopped = SimulateResponse(fields, b, P("Lipiodol+Epirubicin"), 'A', MechanisticConfig{}, 0,
                                  nullptr, third);
  ASSERT_FALSE(stopped);
  EXPECT_EQ(stopped.error().code, ErrorCode::kCancelled);
  EXPECT_EQ(polls.load(), 3);
  // Never cancelled: the same response as without the callback.
  auto whole = SimulateResponse(fields, b, P("Lipiodol+Epirubicin"), 'A', MechanisticConfig{}, 0,
                                nullptr, [] { return false; });
  ASSERT_TRUE(whole);
  EXPECT_EQ(whole->post_viable_ml, Residual(fields, b, "Lipiodol+Epirubicin"));

  // The backend passes its cancellation to every solve of a batch, from its worker threads.
  auto model = MechanisticDynamics::Create(
      MechanisticConfig{}, [b](const PatientCase&) -> Expected<TumorBiology> { return b; });
  ASSERT_TRUE(model);
  polls = 0;
  (*model)->set_cancelled([&] { return ++polls > 8; });
  std::vector<SimulationRequest> requests;
  for (int n = 0; n < 6; ++n) requests.push_back({P("Lipiodol+Epirubicin"), n, 10u + n, 0});
  auto batch = (*model)->Simulate(patient, requests);
  ASSERT_FALSE(batch);
  EXPECT_EQ(batch.error().code, ErrorCode::kCancelled) << batch.error().message;
  // Each of the 6 solves stops at its first poll after the 8th: far fewer than whole solves take.
  EXPECT_LE(polls.load(), 8 + 6);
  (*model)->set_cancelled({});
  EXPECT_TRUE((*model)->Simulate(patient, {requests.front()}));
}

TEST_F(MechanisticTest, BadInputsAreClearErrors) {
  PatientCase empty = Case();
  empty.tumor = LabelVolume(empty.ct.geometry(), empty.ct.extent(), "tumor");
  auto fields = BuildTumorFields(empty, MechanisticConfig{});
  ASSERT_FALSE(fields);
  EXPECT_NE(fields.error().message.find("tumor mask is empty"), std::string::npos);
  auto good = *BuildTumorFields(Case(), MechanisticConfig{});
  TumorBiology bad;
  bad.vascularity = 2.0;
  EXPECT_FALSE(SimulateResponse(good, bad, Plan(), 'A', MechanisticConfig{}, 0, nullptr));
  EXPECT_FALSE(SimulateResponse(good, TumorBiology{}, Plan({"Lipiodol", "Sorafenib"}), 'A',
                                MechanisticConfig{}, 0, nullptr));
  EXPECT_FALSE(MechanisticDynamics::Create(MechanisticConfig{}, nullptr));
  MechanisticConfig zero;
  zero.grid_mm = 0.0;
  EXPECT_FALSE(MechanisticDynamics::Create(
      zero, [](const PatientCase&) -> Expected<TumorBiology> { return TumorBiology{}; }));
}

}  // namespace
TEST_F(MechanisticTest, SharedSeedDrawsTheSameBiologyAndPerParameterSpreadIsUsed) {
  const PatientCase patient = Case();
  TumorBiology b;
  MechanisticConfig config;
  config.sample_log_sd = {0.3, 0.3, 0.5, 0.8, 0.8, 0.8, 0.8};
  auto model = MechanisticDynamics::Create(
      config, [b](const PatientCase&) -> Expected<TumorBiology> { return b; });
  ASSERT_TRUE(model);
  const Plan plan = P("Lipiodol+Epirubicin");
  // Same shared seed, different per-plan seeds: the same simulated patient, so the same viable
  // mask (only the rendering noise differs). Another shared seed gives another patient.
  auto a = (*model)->Simulate(patient, {{plan, 0, 11, 77}, {plan, 0, 12, 77}, {plan, 0, 11, 78}});
  ASSERT_TRUE(a) << a.error().message;
  EXPECT_EQ(ViableVolumeMl((*a)[0]), ViableVolumeMl((*a)[1]));
  EXPECT_NE(ViableVolumeMl((*a)[0]), ViableVolumeMl((*a)[2]));
  config.sample_log_sd[3] = -1.0;
  EXPECT_FALSE(MechanisticDynamics::Create(
      config, [b](const PatientCase&) -> Expected<TumorBiology> { return b; }));
}

}  // namespace mewm::dynamics

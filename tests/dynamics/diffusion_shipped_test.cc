// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The shipped diffusion checkpoint (models/dynamics_diffusion.pt) responds to plans in the
// truth's direction. Labelled slow: it loads the real weights and renders synthetic patients.
#include <gtest/gtest.h>

#include <filesystem>

#include "../core/test_env.h"
#include "mewm/dynamics/diffusion_backend.h"
#include "mewm/scenarios/synthetic_world.h"

namespace mewm::dynamics {
namespace {

namespace fs = std::filesystem;

Plan P(const std::string& text) { return *ActionBase::Default().ParsePlan(text); }

class DiffusionShippedTest : public testing::VdbTest {};

/// The shipped checkpoint on synthetic patients: with the same noise, embolic-containing plans
/// leave less viable tumor on average than drug-only plans, as in the truth.
TEST_F(DiffusionShippedTest, EmbolicPlansShrinkTheTumorMoreThanDrugOnlyPlans) {
  const std::string model = std::string(MEWM_SOURCE_DIR) + "/models/dynamics_diffusion.pt";
  ASSERT_TRUE(fs::exists(model)) << model;
  auto world = scenarios::SyntheticWorld::Create(scenarios::WorldConfig{}, ActionBase::Default());
  ASSERT_TRUE(world);
  DiffusionBackendOptions o;
  o.model_path = model;
  auto m = CreateDiffusionDynamics(o);
  ASSERT_TRUE(m) << m.error().ToString();
  const std::vector<std::string> embolic = {"Lipiodol+Gelatin Sponge", "Lipiodol+PVA",
                                            "Lipiodol+Epirubicin+Gelatin Sponge",
                                            "Lipiodol+Cisplatin+PVA"};
  const std::vector<std::string> drug_only = {"Lipiodol+Epirubicin", "Lipiodol+Cisplatin",
                                              "Lipiodol+Raltitrexed", "Lipiodol+Mitomycin"};
  double embolic_ml = 0.0, drug_ml = 0.0;
  for (int patient = 0; patient < 3; ++patient) {
    const auto sp = world->Sample(777, patient);
    auto p = world->Render(sp, /*tumor_region_only=*/true);
    ASSERT_TRUE(p) << p.error().ToString();
    std::vector<SimulationRequest> requests;
    for (const auto* list : {&embolic, &drug_only}) {
      for (const std::string& text : *list) requests.push_back({P(text), 0, 1234, 0});
    }
    auto out = (*m)->Simulate(*p, requests);
    ASSERT_TRUE(out) << out.error().ToString();
    for (std::size_t r = 0; r < out->size(); ++r) {
      (r < embolic.size() ? embolic_ml : drug_ml) += ViableVolumeMl((*out)[r]);
    }
  }
  EXPECT_LT(embolic_ml, drug_ml) << "embolic " << embolic_ml << " mL vs drug-only " << drug_ml;
}

}  // namespace
}  // namespace mewm::dynamics

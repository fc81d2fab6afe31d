// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The shipped diffusion checkpoints (models/dynamics_diffusion.pt, its guidance-distilled student
// models/dynamics_diffusion_distilled.pt, the distilled student with the lesion-size input,
// models/dynamics_diffusion_lesion_size.pt, the one whose drugs share one saturating group,
// models/dynamics_diffusion_drug_saturate.pt, the undistilled one with a decoder trained on
// the paste, models/dynamics_diffusion_paste.pt, and its fine-tune with the patient's covariates
// and a loss term on the decoded residual, models/dynamics_diffusion_residual.pt, and its
// fine-tune with a response head, models/dynamics_diffusion_response.pt, served with each residual
// anchored to the head's level, and the same with its head fitted again on a larger cohort,
// models/dynamics_diffusion_response_refit.pt) respond to plans in the truth's direction.
// Labelled slow: they load the real weights and render synthetic patients.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "../core/test_env.h"
#include "mewm/core/stats.h"
#include "mewm/dynamics/diffusion_backend.h"
#include "mewm/world/synthetic_world.h"

namespace mewm::dynamics {
namespace {

namespace fs = std::filesystem;

class DiffusionShippedTest : public testing::VdbTest,
                             public ::testing::WithParamInterface<const char*> {};

/// Each shipped checkpoint on synthetic patients it never saw (cohort seed 777): across 8 plans
/// spanning each patient's true residuals, with the same noise for every plan, the generated
/// residual ranks with the truth's, and partial response is representable (a plan whose true
/// residual is well above zero does not come back empty).
TEST_P(DiffusionShippedTest, GeneratedResidualRanksPlansLikeTheTruth) {
  const std::string model = std::string(MEWM_SOURCE_DIR) + "/models/" + GetParam();
  ASSERT_TRUE(fs::exists(model)) << model;
  auto world = scenarios::SyntheticWorld::Create(scenarios::WorldConfig{}, ActionBase::Default());
  ASSERT_TRUE(world);
  DiffusionBackendOptions o;
  o.model_path = model;
  o.sampler.steps = 10;
  o.anchor_level = std::string(GetParam()).find("response") != std::string::npos;
  auto m = CreateDiffusionDynamics(o);
  ASSERT_TRUE(m) << m.error().ToString();
  double rho_sum = 0.0;
  int partial_seen = 0, partial_kept = 0;
  const int patients = 3;
  for (int patient = 0; patient < patients; ++patient) {
    const auto sp = world->Sample(777, patient);
    auto p = world->Render(sp, /*tumor_region_only=*/true);
    ASSERT_TRUE(p) << p.error().ToString();
    auto truth = world->Truth(sp, *p);
    ASSERT_TRUE(truth) << truth.error().ToString();
    std::vector<scenarios::PlanTruth> plans = truth->plans;
    std::sort(plans.begin(), plans.end(),
              [](const auto& a, const auto& b) { return a.post_viable_ml < b.post_viable_ml; });
    std::vector<SimulationRequest> requests;
    std::vector<double> true_ml, generated_ml;
    for (int k = 0; k < 8; ++k) {
      const auto& t = plans[std::size_t(k) * (plans.size() - 1) / 7];
      requests.push_back({t.plan, 0, 1234 + std::uint64_t(k), 99});
      true_ml.push_back(t.post_viable_ml);
    }
    auto out = (*m)->Simulate(*p, requests);
    ASSERT_TRUE(out) << out.error().ToString();
    for (std::size_t r = 0; r < out->size(); ++r) {
      generated_ml.push_back(ViableVolumeMl((*out)[r]));
      if (true_ml[r] > 5.0) {
        ++partial_seen;
        if (generated_ml.back() > 1.0) ++partial_kept;
      }
    }
    const double rho = Spearman(generated_ml, true_ml);
    rho_sum += std::isnan(rho) ? 0.0 : rho;
  }
  EXPECT_GT(rho_sum / patients, 0.3);
  EXPECT_GT(partial_kept, partial_seen / 2) << partial_kept << " of " << partial_seen;
}

INSTANTIATE_TEST_SUITE_P(
    Checkpoints, DiffusionShippedTest,
    ::testing::Values("dynamics_diffusion.pt", "dynamics_diffusion_distilled.pt",
                      "dynamics_diffusion_lesion_size.pt", "dynamics_diffusion_drug_saturate.pt",
                      "dynamics_diffusion_paste.pt", "dynamics_diffusion_residual.pt",
                      "dynamics_diffusion_response.pt", "dynamics_diffusion_response_refit.pt"),
    [](const ::testing::TestParamInfo<const char*>& param) {
      const std::string name = param.param;
      if (name.find("lesion_size") != std::string::npos) return "LesionSize";
      if (name.find("saturate") != std::string::npos) return "DrugSaturate";
      if (name.find("paste") != std::string::npos) return "PasteDecoder";
      if (name.find("residual") != std::string::npos) return "ResidualTerm";
      if (name.find("refit") != std::string::npos) return "ResponseHeadRefitAnchored";
      if (name.find("response") != std::string::npos) return "ResponseHeadAnchored";
      if (name.find("distilled") != std::string::npos) return "Distilled";
      return "Teacher";
    });

}  // namespace
}  // namespace mewm::dynamics

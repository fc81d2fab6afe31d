// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The synthetic HCC-TACE world: seeded patients with anatomy, lesions, clinical covariates and a
// hidden tumor biology, a mechanistic treatment response, and Weibull proportional-hazards
// survival. Everything is a pure function of (cohort seed, patient index), so any subset of
// patients, and any sub-region of a CT, renders identically. docs/SYNTHETIC_WORLD.md documents
// the equations, parameters and what is visible versus hidden.
#pragma once

#include <Eigen/Core>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "mewm/core/expected.h"
#include "mewm/dynamics/mechanistic.h"
#include "mewm/tace/action_base.h"
#include "mewm/tace/patient.h"

namespace mewm::scenarios {

/// Version of the generator; bump when any output of the world changes. 2.1: lesions are centred
/// inside the abdomen (docs/SYNTHETIC_WORLD.md, "Lesions").
inline constexpr const char* kWorldVersion = "2.1";

/// Polled by the world's long loops (rendering slice by slice, the exhaustive truth plan by
/// plan): returning true stops them with kCancelled. It may be called from several threads at
/// once, so it must be thread-safe (an atomic flag). Empty = never cancelled.
using CancelFn = std::function<bool()>;

/// One HCC lesion: a deformed ellipsoid with an enhancing rim and an optional necrotic core.
struct LesionSpec {
  Eigen::Vector3d center_mm = Eigen::Vector3d::Zero();  ///< world (LPS)
  Eigen::Vector3d radii_mm = Eigen::Vector3d::Constant(10);
  Eigen::Matrix3d axes = Eigen::Matrix3d::Identity();  ///< rotation, columns = ellipsoid axes
  double deform = 0.1;         ///< relative amplitude of boundary irregularity
  double core_fraction = 0.0;  ///< normalised radius of the necrotic core (0 = none)
  double rim_mm = 2.5;         ///< enhancing rim thickness
  double interior_hu = 85.0;
  double rim_hu = 115.0;
  double texture_sd = 8.0;  ///< smooth heterogeneity of the viable tumor, HU
  std::uint64_t shape_seed = 0;
};

/// Body, liver and vessels of one patient (world mm, LPS; origin at the FOV centre).
struct AnatomySpec {
  Eigen::Vector2d body_radii_mm{135, 105};
  double fat_mm = 18.0;
  Eigen::Vector3d liver_center_mm{-55, -5, 0};
  Eigen::Vector3d liver_radii_mm{85, 75, 65};
  double liver_hu = 55.0;
  double noise_sd = 15.0;  ///< CT noise, HU
  struct Vessel {
    Eigen::Vector3d a, b;
    double radius_mm;
    double hu;
  };
  std::vector<Vessel> vessels;
  std::uint64_t texture_seed = 0;
};

/// Everything about one synthetic patient, visible or not.
struct SyntheticPatient {
  std::string id;
  std::uint64_t seed = 0;
  AnatomySpec anatomy;
  std::vector<LesionSpec> lesions;
  Covariates covariates;
  dynamics::TumorBiology biology;    ///< hidden
  Plan administered;                 ///< the plan the patient actually received
  std::vector<Plan> counterfactual;  ///< extra plans simulated for training (--plans-per-patient)
};

/// How a patient's counterfactual plans (`mewm cohort generate --plans-per-patient K`) are drawn.
enum class CounterfactualDesign {
  /// K distinct valid plans drawn uniformly, none of them the administered one.
  kRandom,
  /// Up to ceil(K/2) plans with the administered plan's drugs and other embolics (in random
  /// order), the rest drawn as kRandom. Each patient then shows embolics side by side, on its own
  /// anatomy and lesion size, which uniform draws rarely do.
  kEmbolicContrast,
  /// Up to ceil(K/3) plans with the administered plan's drugs and other embolics, then up to
  /// ceil(K/3) with its embolics (and Lipiodol) and other drugs, both in random order; the rest
  /// drawn as kRandom. Each patient then shows drugs side by side as well, so a drug's effect is
  /// seen within patients rather than guessed from who happened to receive it.
  kItemContrast,
  /// Up to K plans with the administered plan's embolics (and Lipiodol) and other drugs (none,
  /// one or two), in random order; any left drawn as kRandom. Every plan of a patient then differs
  /// from the others in its drugs alone, so each drug is seen against the others on the same
  /// tumor K + 1 times: what a drug term fitted alone on top of a response head needs
  /// (`mewm train dynamics --response-drug-only`).
  kDrugContrast,
};

/// "random", "embolic-contrast", "item-contrast" or "drug-contrast"; kInvalidArgument otherwise.
Expected<CounterfactualDesign> ParseCounterfactualDesign(const std::string& text);
std::string ToString(CounterfactualDesign design);

struct WorldConfig {
  double spacing_mm = 1.0;
  Eigen::Vector3d fov_mm{288, 224, 112};  ///< CT field of view (x, y, z)
  dynamics::MechanisticConfig mechanistic;
  int drug_horizon = 2;
  int embolic_horizon = 2;
  double weibull_shape = 1.3;
  double weibull_scale_months = 24.0;  ///< at linear predictor 0
  double censor_min_months = 6.0;      ///< administrative censoring ~ Uniform(min, max)
  double censor_max_months = 60.0;
  int counterfactual_plans = 0;
  CounterfactualDesign counterfactual_design = CounterfactualDesign::kRandom;

  Status Validate() const;
  /// The CT lattice: isotropic spacing, identity direction, centred on the world origin.
  Geometry CtGeometry() const;
  Index3 CtExtent() const;
};

/// The true outcome of one plan for one patient (unperturbed biology).
struct PlanTruth {
  Plan plan;
  double post_viable_ml = 0.0;  ///< integral of the viable density at follow-up
  double post_mask_ml = 0.0;    ///< volume a reader calls viable (density >= threshold)
  double toxicity = 0.0;
  double linear_predictor = 0.0;  ///< eta of the hazard
  double risk = 0.0;              ///< exp(eta): relative hazard
};

/// Ground truth over the whole plan space.
struct PatientTruth {
  double pre_viable_ml = 0.0;
  double pre_mask_ml = 0.0;
  std::vector<PlanTruth> plans;  ///< every valid plan, canonical order
  std::size_t optimal = 0;       ///< index into plans of the lowest risk
  std::size_t administered = 0;  ///< index into plans of the administered plan
  double event_time_months = 0.0;
  bool event = false;
};

class SyntheticWorld {
 public:
  /// kInvalidArgument for an invalid config or a plan space that cannot be built.
  static Expected<SyntheticWorld> Create(const WorldConfig& config, const ActionBase& actions);

  const WorldConfig& config() const { return config_; }
  const std::vector<Plan>& plans() const { return plans_; }

  /// Patient `index` of the cohort with seed `cohort_seed`; id "P0001" for index 0.
  SyntheticPatient Sample(std::uint64_t cohort_seed, int index) const;

  /// Renders the pre-treatment CT, liver mask and tumor mask (lesion k has label k+1). With
  /// `tumor_region_only`, only the lesions' neighbourhoods are rendered (identical voxels there,
  /// background elsewhere): enough for the mechanistic model, at a fraction of the cost.
  /// kCancelled when `cancelled` says so (polled once per slice).
  Expected<PatientCase> Render(const SyntheticPatient& patient, bool tumor_region_only = false,
                               const CancelFn& cancelled = {}) const;

  /// Linear predictor of the true hazard for a residual viable volume and a plan toxicity.
  double LinearPredictor(const SyntheticPatient& patient, double post_viable_ml,
                         double toxicity) const;

  /// Exhaustive truth: simulates every valid plan with the hidden biology, finds the optimum,
  /// and samples the event time of the administered plan. `rendered` must come from Render.
  /// kCancelled when `cancelled` says so (polled before each plan's simulation).
  Expected<PatientTruth> Truth(const SyntheticPatient& patient, const PatientCase& rendered,
                               const CancelFn& cancelled = {}) const;
  /// The same, from tumor fields already built from the render (callers that also simulate
  /// outcomes build them once). Tabulating the patient's collateral pattern in them first
  /// (dynamics::TabulateCollateralPattern) saves evaluating it again for every plan.
  Expected<PatientTruth> Truth(const SyntheticPatient& patient,
                               const std::vector<dynamics::TumorField>& fields,
                               const CancelFn& cancelled = {}) const;

 private:
  SyntheticWorld(const WorldConfig& config, const ActionBase& actions, std::vector<Plan> plans)
      : config_(config), actions_(actions), plans_(std::move(plans)) {}
  WorldConfig config_;
  ActionBase actions_;
  std::vector<Plan> plans_;
};

}  // namespace mewm::scenarios

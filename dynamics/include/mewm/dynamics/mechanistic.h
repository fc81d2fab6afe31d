// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Mechanistic TACE response: a proliferation-invasion (Fisher-KPP) model of viable tumor density
// with kill terms for each plan item, solved on the dense tumor neighbourhood only. It is both the
// synthetic world's ground truth (fed the hidden biology) and a planner backend (fed biology
// estimated from visible features). docs/SYNTHETIC_WORLD.md has the equations and constants.
//
//   inputs:  PatientCase (CT, tumor mask), TumorBiology, Plan, seed
//   outputs: Outcome (post-treatment CT and viable mask on the patient's lattice), ResponseSummary
//   config:  MechanisticConfig (grid_mm = 2.0, follow_up_days = 42, margin_mm = 6, ...)
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "mewm/core/dense.h"
#include "mewm/core/expected.h"
#include "mewm/dynamics/dynamics_model.h"
#include "mewm/tace/action_base.h"
#include "mewm/tace/outcome.h"
#include "mewm/tace/patient_identity.h"
#include "mewm/tace/pharmacology.h"

namespace mewm::dynamics {

/// Drug classes the biology has a sensitivity for, in this order.
inline constexpr std::array<const char*, 4> kDrugClasses = {"platinum", "anthracycline",
                                                            "antimetabolite", "mitomycin"};

/// Per-patient tumor biology (hidden in the synthetic world; estimated for planning).
struct TumorBiology {
  double proliferation_per_day = 0.02;                    ///< logistic growth rate rho
  double infiltration_mm2_per_day = 0.05;                 ///< diffusion D
  std::array<double, 4> sensitivity{1.0, 1.0, 1.0, 1.0};  ///< by kDrugClasses, ~lognormal around 1
  double vascularity = 0.5;  ///< [0, 1]: drug/Lipiodol delivery and embolic benefit
  /// Where a collateral supply spares patches of the tumor from the treatment (a smooth random
  /// pattern, hidden); 0 = no pattern. Perturbed samples draw their own.
  std::uint64_t pattern_seed = 0;

  /// kInvalidArgument for non-finite or out-of-range values.
  Status Validate() const;
};

using mewm::ItemPhysics;
using mewm::PhysicsOf;
using mewm::PlanToxicity;

struct MechanisticConfig {
  double grid_mm = 2.0;          ///< spacing of the response grid
  double margin_mm = 6.0;        ///< neighbourhood margin around the tumor's bounding box
  double follow_up_days = 42.0;  ///< time from TACE to the post-treatment CT
  double max_dt_days = 2.0;      ///< upper bound on the time step (also CFL-limited)
  double sample_sigma = 0.15;    ///< log-normal spread of biology between samples (sample > 0)
  /// Per-parameter spread (log proliferation, log infiltration, logit vascularity, log
  /// sensitivity per kDrugClasses); used instead of sample_sigma when any entry is > 0. A planner
  /// sets it to its calibration's residual SDs, so samples follow the predictive distribution.
  std::array<double, 7> sample_log_sd{};
  double viable_threshold = 0.5;  ///< density above which a voxel counts as viable in the mask
};

/// What the response looks like, in numbers.
struct ResponseSummary {
  double pre_viable_ml = 0.0;      ///< integral of density before treatment
  double post_viable_ml = 0.0;     ///< integral of density at follow-up
  double pre_mask_ml = 0.0;        ///< volume with density >= viable_threshold before treatment
  double post_mask_ml = 0.0;       ///< the same at follow-up (what a reader calls viable tumor)
  double lipiodol_coverage = 0.0;  ///< fraction of the pre-treatment tumor with deposits
  double toxicity = 0.0;
};

/// One lesion's neighbourhood on the response grid: initial density and perfusion in [0, 1].
struct TumorField {
  std::int32_t label = 1;  ///< the tumor-mask label of this lesion
  DenseFloat density;      ///< viable tumor fraction u0
  DenseFloat perfusion;    ///< relative blood supply of tumor tissue (enhancing rim high, core low)
  /// exp(-depth / 3 mm) inside the lesion, depth being the distance to its boundary: 1 at the
  /// margin, which keeps a collateral (portal) supply that embolization does not cut.
  DenseFloat periphery;
  double diameter_mm = 0;  ///< equivalent-sphere diameter of the lesion (mask volume)
  /// The collateral pattern's value noise per voxel, tabulated by TabulateCollateralPattern for
  /// the biology whose pattern_seed is `pattern_seed` (0: nothing tabulated).
  std::uint64_t pattern_seed = 0;
  std::vector<double> pattern;
};

/// The response of one field: final density and Lipiodol deposit fraction, on its lattice.
struct FieldResponse {
  DenseFloat density;
  DenseFloat lipiodol;
};

/// Builds one field per lesion label of the tumor mask: density from the partial-volume mask
/// minus necrosis (< 40 HU), perfusion from enhancement above necrosis, on a grid of
/// `config.grid_mm` covering the lesion plus margin. kInvalidArgument for an empty tumor mask.
Expected<std::vector<TumorField>> BuildTumorFields(const PatientCase& patient,
                                                   const MechanisticConfig& config);

/// Tabulates, in every field, the collateral pattern of a biology with this `pattern_seed` (0
/// clears the tables). SimulateResponse then reads the table instead of evaluating the noise
/// per voxel whenever its biology has the same seed, as every plan of one unperturbed patient
/// does; the response is bit for bit the same either way.
void TabulateCollateralPattern(std::vector<TumorField>& fields, std::uint64_t pattern_seed);

/// Runs the PDE for one plan over every field. `sample_seed` 0 gives the unperturbed biology; any
/// other seed perturbs it log-normally by config.sample_log_sd (or sample_sigma). Fills
/// `responses` when non-null. `cancelled`, when set, is polled at every time step; true stops
/// the solve with kCancelled.
Expected<ResponseSummary> SimulateResponse(const std::vector<TumorField>& fields,
                                           const TumorBiology& biology, const Plan& plan,
                                           char child_pugh, const MechanisticConfig& config,
                                           std::uint64_t sample_seed,
                                           std::vector<FieldResponse>* responses,
                                           const std::function<bool()>& cancelled = {});

/// Renders the post-treatment CT and viable mask on the patient's lattice. The viable density u
/// is rendered continuously: a tumor voxel is the mix u x (its pre-treatment HU) + (1 - u) x
/// (necrosis, about 20 HU, plus up to 450 HU of Lipiodol retained in dead tissue), so
/// residual tumor below any threshold still shows as enhancement and as a deposit defect. Liver
/// that the tumor grew into moves toward kGrowthHu in proportion to u. The viable mask is
/// u >= config.viable_threshold. Deterministic given `seed`.
Expected<Outcome> RenderOutcome(const PatientCase& patient, const std::vector<TumorField>& fields,
                                const std::vector<FieldResponse>& responses, const Plan& plan,
                                int sample_index, std::uint64_t seed,
                                const MechanisticConfig& config);

/// The image-only estimate of the residual viable volume (mL): over the pre-treatment tumor
/// voxels that enhanced (HU >= 40), the viable fraction is read back from the post-treatment CT
/// as u = (post - dead) / (pre - dead), where `dead` is necrosis plus, when the post CT shows
/// Lipiodol, the deposit that the pre-treatment perfusion predicts. Unclamped, so CT noise
/// averages out. It ignores growth outside the pre-treatment mask. kMismatch when the two CTs do
/// not share a lattice.
Expected<double> EstimateResidualFromImage(const PatientCase& pre, const Volume& post_ct,
                                           const MechanisticConfig& config);
/// The same, with the pre-treatment tumor fields already built from `pre` (callers that also
/// simulate build them once).
Expected<double> EstimateResidualFromImage(const PatientCase& pre,
                                           const std::vector<TumorField>& fields,
                                           const Volume& post_ct);

/// Where the biology comes from: the synthetic truth, or an estimate from visible features.
using BiologySource = std::function<Expected<TumorBiology>(const PatientCase&)>;

/// The mechanistic DynamicsModel backend.
class MechanisticDynamics final : public DynamicsModel {
 public:
  static Expected<std::unique_ptr<MechanisticDynamics>> Create(const MechanisticConfig& config,
                                                               BiologySource biology);

  /// Simulates each request. The biology estimate and tumor fields are computed once per patient
  /// and reused while the same patient (id and tumor grid) comes back. A cancellation stops every
  /// solve at its next time step.
  Expected<std::vector<Outcome>> Simulate(const PatientCase& patient,
                                          const std::vector<SimulationRequest>& requests) override;
  std::string name() const override { return "mechanistic"; }

  /// Number of PDE solves run so far (one per request).
  std::int64_t evaluations() const override { return solves_; }
  void set_cancelled(std::function<bool()> cancelled) override {
    cancelled_ = std::move(cancelled);
  }

 private:
  MechanisticDynamics(const MechanisticConfig& config, BiologySource biology)
      : config_(config), biology_(std::move(biology)) {}
  MechanisticConfig config_;
  BiologySource biology_;
  std::function<bool()> cancelled_;
  std::int64_t solves_ = 0;
  /// Per-patient work (biology estimate, tumor fields), kept for the patient last simulated so a
  /// planner's successive batches for one patient do it once.
  PatientIdentity cached_patient_;
  TumorBiology cached_biology_;
  std::vector<TumorField> cached_fields_;
};

}  // namespace mewm::dynamics

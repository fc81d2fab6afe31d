// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Learned-dynamics data and evaluation on synthetic cohorts generated with counterfactual plans
// (`mewm cohort generate --plans-per-patient K`): every patient's pre-treatment crop next to its
// true post-treatment crop under several plans. `mewm train dynamics` trains on it and
// `mewm eval dynamics` scores backends against it.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "mewm/core/expected.h"
#include "mewm/core/stats.h"
#include "mewm/dynamics/diffusion.h"
#include "mewm/run/cohort_source.h"
#include "mewm/tace/action_base.h"

namespace mewm::scenarios {

/// A plan and the file holding its true post-treatment image (grids ct, viable).
struct PlanOutcomeFile {
  Plan plan;
  std::string post;
};

/// Per patient id: the administered plan and every counterfactual plan with its image, from
/// manifest.json (post_administered) and truth/truth.json (plans, counterfactual images): for
/// dynamics training and evaluation only. kNotFound / kCorruptData naming the file, kMismatch
/// for a cohort of the old layout.
Expected<std::map<std::string, std::vector<PlanOutcomeFile>>> ReadPlanOutcomes(
    const std::string& cohort_dir, const ActionBase& actions);

/// Which crops training pairs are cut on.
enum class PairCrops {
  /// dynamics::LesionCrops: one crop centred on each lesion, cut at the crop's faces for a lesion
  /// larger than it. Every shipped checkpoint was trained on these.
  kCentred,
  /// dynamics::LesionTiles: the crops the backend generates on. A lesion larger than a crop is
  /// tiled, and each tile sees part of it, off-centre, as the denoiser does when it serves.
  kServing,
};

/// Crop pairs of every (patient, lesion crop, plan) of a cohort, on `crops`; patients in `ids`
/// only when it is non-empty. Reads patients in parallel; `progress(done, total)` per patient.
Expected<std::vector<dynamics::DiffusionPair>> BuildDiffusionPairs(
    const std::string& cohort_dir, const dynamics::DiffusionConfig& config,
    const ActionBase& actions, PairCrops crops, const std::vector<std::string>& ids = {},
    const std::function<void(int, int)>& progress = {});

}  // namespace mewm::scenarios

namespace mewm::scenarios {

/// What one plan item does to what survival reads from an outcome's image (the residual and the
/// Lipiodol coverage, CoxFeatures), as a method predicts it and as the truth has it. Within each
/// patient: the mean over the patient's plans that hold the item minus the mean over those that
/// do not; then the mean over the patients that have both kinds of plan.
struct ItemEffect {
  std::string item;
  int patients = 0;
  double residual_ml = 0.0, true_residual_ml = 0.0;
  double lipiodol_coverage = 0.0, true_lipiodol_coverage = 0.0;
};

/// One plan of one patient, as a method predicts it and as the truth has it: the residual (mean
/// over the plan's samples, mL) and the Lipiodol coverage (likewise). Two plans of a patient that
/// differ by one item show that item's effect on that patient, where ItemEffect averages it away.
struct PlanFidelity {
  std::string plan;  ///< Plan::ToString
  double residual_ml = 0.0, true_residual_ml = 0.0;
  double lipiodol_coverage = 0.0, true_lipiodol_coverage = 0.0;
};

/// One patient's residual figures for one method, over the patient's plans (the residual read as
/// in DynamicsMetrics: the mean over a plan's samples). Which patients carry a method's error.
struct PatientFidelity {
  std::string id;
  int lesion_crops = 0;           ///< the crops a diffusion backend generates (large lesions tile)
  double true_residual_ml = 0.0;  ///< the true residual, mean over the patient's plans
  double residual_mae_ml = 0.0, residual_bias_ml = 0.0;
  /// mean |(pred - true) - residual_bias_ml| over the plans: the error left once the patient's
  /// level is right, which is what ranking the patient's plans sees
  double residual_within_mae_ml = 0.0;
  double residual_spread_ml = 0.0;  ///< the residual's SD across samples, mean over the plans
  /// Spearman(pred, true) across the plans, as DynamicsMetrics::spearman counts it: 0 when the
  /// prediction is constant, NaN when the truth is (nothing to rank)
  double spearman = 0.0;
  std::vector<PlanFidelity> plans;  ///< in the cohort's order of the patient's plans
};

/// Fidelity of one dynamics method against the mechanistic truth, over (patient, plan) cases.
/// "Residual" is the integrated viable fraction (what survival reads, ViableVolumeMl); "mask" is
/// the viable mask thresholded at 0.5, which is empty for many true partial responses. `pred` is
/// the mean over the case's samples for the residual, the Lipiodol coverage, the Spearman and the
/// item effects (as a planner averages over samples), the first sample for the image metrics.
struct DynamicsMetrics {
  std::string method;
  int cases = 0;
  double residual_mae_ml = 0.0;         ///< mean |pred - true| residual, mL
  double residual_bias_ml = 0.0;        ///< mean (pred - true) residual, mL
  double residual_rel_error = 0.0;      ///< median |pred - true| / max(true, 1 mL) of the residual
  double residual_mae_single_ml = 0.0;  ///< mean |sample - true| residual over every sample, mL
  double residual_spread_ml = 0.0;      ///< mean over cases of the residual's SD across samples
  /// The residual error split by patient (PatientFidelity, weighted by plans): the mean |bias| of
  /// each patient's level, and the mean error within patients once that level is removed.
  /// residual_mae_ml <= the two summed.
  double residual_patient_level_ml = 0.0, residual_within_patient_ml = 0.0;
  double dice = 0.0;         ///< mean mask Dice over cases where either mask is non-empty
  int dice_cases = 0;        ///< cases behind `dice`
  int empty_both = 0;        ///< cases where both masks are empty (left out of `dice`)
  double mask_mae_ml = 0.0;  ///< mean |pred - true| mask volume, mL
  bool has_image = true;     ///< false for a baseline without an image (complete response)
  double hu_mae = 0.0;       ///< mean |pred - true| HU within 6 mm of the pre-treatment tumor
  /// Mean over patients of Spearman(pred, true residual) across plans. Every patient whose true
  /// residual varies counts; a prediction constant across plans counts as 0.
  double spearman = 0.0;
  int spearman_patients = 0;       ///< patients counted
  int spearman_constant = 0;       ///< of them, patients whose prediction was constant
  double spearman_shuffled = 0.0;  ///< the same with predictions shuffled across plans (mean)
  double spearman_p = 1.0;         ///< permutation p-value of spearman over the shuffled control
  bool has_turing = false;
  dynamics::TuringTestResult turing;
  double seconds = 0.0;  ///< simulation wall time
  /// One entry per item that some patient's plans both hold and leave out, by item name. A
  /// planner on this method misjudges an item whose predicted effect differs from the true one.
  std::vector<ItemEffect> item_effects;
  std::vector<PatientFidelity> per_patient;  ///< in cohort order
};

/// Two methods of one evaluation compared patient by patient: the same cases and, for stochastic
/// methods, the same sample seeds, so two checkpoints or settings are judged where the spread
/// between patients would hide a difference of means. Each difference is method A minus method
/// B: its mean over patients with a 95% percentile-bootstrap interval (2000 resamples, a fixed
/// seed).
struct DynamicsComparison {
  std::string method_a, method_b;
  int patients = 0;                  ///< every patient: the residual differences
  MeanInterval residual_mae_diff;    ///< PatientFidelity::residual_mae_ml, mL
  MeanInterval residual_level_diff;  ///< |PatientFidelity::residual_bias_ml|, mL
  int spearman_patients = 0;         ///< patients whose true residual varies across plans
  MeanInterval spearman_diff;        ///< PatientFidelity::spearman; its mean is A's minus B's
  int spearman_higher = 0, spearman_lower = 0, spearman_same = 0;  ///< A's against B's
};

struct DynamicsEvaluation {
  std::string cohort_dir;
  int patients = 0, plans_per_patient = 0;
  int samples = 1;  ///< samples per (patient, plan) of the stochastic methods
  std::vector<DynamicsMetrics> methods;
  std::optional<DynamicsComparison> paired;  ///< set by the caller (CompareDynamicsMethods)
  std::string FormatTable() const;
  std::string ToJson() const;
};

/// The machine Turing test, injected so this module stays free of libtorch. `groups` gives each
/// crop's patient (real crops first, then synthetic), so folds and the CI can respect patients.
using TuringTest = std::function<Expected<dynamics::TuringTestResult>(
    const std::vector<DenseFloat>& real, const std::vector<DenseFloat>& synthetic,
    const std::vector<int>& groups)>;

/// A generator's ceiling: a true outcome passed through its autoencoder alone
/// (DiffusionDynamics::Reconstruct), injected like the Turing test.
using Reconstruction = std::function<Expected<Outcome>(const PatientCase&, const Outcome&)>;

/// Scores each method (name, model) and two baselines on every patient and plan of a held-out
/// cohort with counterfactual plans: "no change" (post = pre) and "complete response" (no
/// residual anywhere; it has no image). With `ceiling`, also "autoencoder ceiling", the true
/// outcomes reconstructed. Each method draws `samples` samples per case, seeded as the planner
/// seeds them (the baselines and the ceiling, being deterministic, one). Crops for the Turing
/// test follow `crop_config`. At most `max_patients` patients when > 0. kInvalidArgument for a
/// cohort without counterfactual plans or for `samples` < 1.
Expected<DynamicsEvaluation> EvaluateDynamics(
    const std::string& cohort_dir,
    const std::vector<std::pair<std::string, dynamics::DynamicsModel*>>& methods,
    const ActionBase& actions, const dynamics::DiffusionConfig& crop_config,
    const TuringTest& turing, std::uint64_t seed,
    const std::function<void(int, int)>& progress = {}, int max_patients = 0,
    const Reconstruction& ceiling = {}, int samples = 1);

/// Compares methods `a` and `b` of `eval` patient by patient (DynamicsComparison). kNotFound for
/// a method `eval` does not hold, kInvalidArgument for a = b or for per-patient rows that differ
/// in patients (not one evaluation).
Expected<DynamicsComparison> CompareDynamicsMethods(const DynamicsEvaluation& eval,
                                                    const std::string& a, const std::string& b);

}  // namespace mewm::scenarios

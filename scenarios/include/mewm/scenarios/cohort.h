// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Synthetic cohorts on disk (`mewm cohort generate`) and the world-validity figures
// (`mewm cohort stats`).
//
// Layout of a cohort folder:
//   .mewm-cohort           {"generator": "mewm synthetic world", ...}, written before anything else
//   manifest.json          generator version, seed, config, one entry per patient with its files
//   clinical.csv           visible covariates, administered plan, observed (time, event)
//   truth.json             hidden biology, risk of every valid plan, optimal plan (evaluation only)
//   patients/P0001/        written atomically (a temporary folder renamed when complete)
//     pre.vdb              grids ct, liver, tumor
//     note.txt             the clinical note (clinical_note.h): free text, visible facts only
//     pre_ct.nii.gz  liver.nii.gz  tumor.nii.gz
//     post_administered.vdb (ct, viable, pre_tumor) + post_ct.nii.gz + viable.nii.gz: the plan
//     given post_cf<k>.vdb       counterfactual plans (--plans-per-patient), grids ct, viable
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "mewm/core/action_base.h"
#include "mewm/core/expected.h"
#include "mewm/scenarios/synthetic_world.h"

namespace mewm::scenarios {

/// The marker file GenerateCohort writes first into a cohort folder, and the generator it names
/// (manifest.json names it too).
inline constexpr const char* kCohortMarker = ".mewm-cohort";
inline constexpr const char* kCohortGenerator = "mewm synthetic world";

/// Whether `dir` is missing, an empty folder, or a cohort mewm wrote (its .mewm-cohort or
/// manifest.json names kCohortGenerator): the only folders GenerateCohort may write into or
/// replace.
bool IsEmptyOrMewmCohort(const std::string& dir);

struct CohortOptions {
  int n = 0;
  std::uint64_t seed = 0;
  std::string out_dir;
  /// Allow a non-empty folder that holds a cohort mewm wrote (IsEmptyOrMewmCohort): its previous
  /// cohort (patients/, index files) is removed. Any other non-empty folder is refused even so.
  bool force = false;
  bool write_nifti = true;  ///< NIfTI copies of the pre-treatment and administered images
  WorldConfig world;
  /// Called after each finished patient with (done, total); may be empty.
  std::function<void(int, int)> progress;
  /// Polled before each patient and inside a patient's long steps (rendering slice by slice, the
  /// exhaustive truth plan by plan, each outcome), from several threads at once; true stops the
  /// generation with kCancelled. May be empty.
  CancelFn cancelled;
};

/// Generates a cohort. kInvalidArgument for n <= 0, a non-empty folder without force, or a
/// non-empty folder that is not a mewm cohort (even with force); kIo for an unwritable folder;
/// kCancelled when `cancelled` stopped it. Patients are generated in parallel; the files do not
/// depend on the order. manifest.json is written last, so a folder without it (an interrupted or
/// cancelled generation) is never a complete cohort.
Status GenerateCohort(const CohortOptions& options, const ActionBase& actions);

/// World-validity figures (issue: the synthetic world must pass these).
struct WorldStats {
  int patients = 0;
  double mean_hr_median_vs_optimal =
      0.0;                         ///< mean over patients of risk(median plan)/risk(optimal)
  double max_optimal_share = 0.0;  ///< largest fraction of patients sharing one optimal plan
  std::string most_common_optimal;
  int distinct_optimal_plans = 0;
  double oracle_c_index = 0.0;       ///< Harrell's C of the true risk of the administered plan
  double visible_cox_c_index = 0.0;  ///< Harrell's C of a Cox model on visible features (2-fold)
  double km_median_os_months = 0.0;
  double event_fraction = 0.0;
  // Mean HU per tissue (NaN when not measured: stats from truths alone).
  double liver_hu = 0.0, viable_tumor_hu = 0.0, necrosis_hu = 0.0, lipiodol_hu = 0.0, air_hu = 0.0;
  int hu_patients = 0;  ///< patients whose images were measured

  /// Human-readable table with the target ranges and a pass/fail mark per line.
  std::string Format() const;
  /// Every failed validity check, one sentence each (empty when the world is valid).
  std::vector<std::string> Failures() const;
};

/// Figures from in-memory truths (no images): plan effect, optimal-plan spread, C-indices, OS.
Expected<WorldStats> SummarizeTruths(const std::vector<SyntheticPatient>& patients,
                                     const std::vector<PatientTruth>& truths);

/// Figures for `n` patients of the world simulated in memory (tumor regions only, no files):
/// the fast way to check a world configuration at scale. HU fields stay NaN.
Expected<WorldStats> SimulateWorldStats(const WorldConfig& config, const ActionBase& actions,
                                        std::uint64_t seed, int n);

/// Figures for a cohort folder: the truths plus mean HU per tissue measured on up to
/// `max_hu_patients` patients' pre and administered post images.
Expected<WorldStats> ComputeCohortStats(const std::string& cohort_dir, int max_hu_patients = 20);

}  // namespace mewm::scenarios

// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Synthetic cohorts on disk (`mewm cohort generate`) and the world-validity figures
// (`mewm cohort stats`).
//
// Layout of a cohort folder (layout 2, kCohortLayout in cohort_source.h). What a planning run
// may read is apart from what only training and evaluation read, and no seed is beside it:
//   .mewm-cohort           {"generator": "mewm synthetic world", ...}, written before anything else
//   manifest.json          generator, world version, layout, config (no seed); one entry per
//                          patient with its files: pre, NIfTI copies, post_administered
//   clinical.csv           visible baseline covariates only
//   outcomes.csv           administered_plan, time_months, event (training and evaluation only)
//   patients/P0001/        written atomically (a temporary folder renamed when complete)
//     pre.vdb              grids ct, liver, tumor; metadata without any seed
//     note.txt             the clinical note (clinical_note.h): free text, visible facts only
//     pre_ct.nii.gz  liver.nii.gz  tumor.nii.gz
//     post_administered.vdb (ct, viable, pre_tumor) + post_ct.nii.gz + viable.nii.gz: the
//                          follow-up CT of the plan given, an observed outcome
//   truth/                 the hidden truth, never read by a planning run
//     truth.json           every patient's truth below, plus "generation": the cohort seed and
//                          each patient's seed (reproducibility lives here)
//     patients/P0001/      written atomically, moved into place before patients/P0001
//       truth.json         hidden biology, risk of every valid plan, optimal plan
//       post_cf<k>.vdb     counterfactual plans (--plans-per-patient), grids ct, viable: never
//                          observable in reality; only dynamics training and evaluation read them
#pragma once

#include <array>
#include <functional>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "mewm/core/expected.h"
#include "mewm/run/backends.h"
#include "mewm/run/cohort_source.h"
#include "mewm/tace/action_base.h"
#include "mewm/world/synthetic_world.h"

namespace mewm::scenarios {

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

/// Whether `dir` holds the complete cohort GenerateCohort writes for `options` (seed, n and
/// spacing; plans_per_patient and the action base are not checked): its manifest.json names this
/// generator, world version and layout, n and spacing, and the covariates in its clinical.csv
/// are those the seed draws. Reads manifest.json and clinical.csv only: no seed is stored beside
/// them, and nothing under truth/ is opened.
bool IsCohortOf(const std::string& dir, const CohortOptions& options, const ActionBase& actions);

/// The cohort a scenario's cohort table describes (n, seed, spacing), as a run generates it and
/// as IsCohortOf recognises it; the rest of the options at their defaults.
CohortOptions ScenarioCohortOptions(const CohortSpec& cohort);

/// The synthetic world as a run's cohort source (BackendRegistry::SetSyntheticCohorts): the
/// cohort a scenario's cohort table describes (n, seed, spacing) is reused when IsCohortOf says
/// the folder holds it, else generated there with force (a folder holding anything but a mewm
/// cohort is still refused) and without the NIfTI copies.
SyntheticCohortSource SyntheticWorldCohorts();

/// A figure with its 95% bootstrap interval over patients (NaN when not measured).
struct Figure {
  double value = std::numeric_limits<double>::quiet_NaN();
  double lo = std::numeric_limits<double>::quiet_NaN();
  double hi = std::numeric_limits<double>::quiet_NaN();
};

/// World-validity figures (docs/SYNTHETIC_WORLD.md lists the targets and their sources).
struct WorldStats {
  int patients = 0;
  std::uint64_t seed = 0;            ///< the cohort seed, when known (simulated worlds)
  Figure mean_hr_median_vs_optimal;  ///< mean over patients of risk(median plan)/risk(optimal)
  double max_optimal_share = 0.0;    ///< largest fraction of patients sharing one optimal plan
  std::string most_common_optimal;
  int distinct_optimal_plans = 0;
  double oracle_c_index = 0.0;       ///< Harrell's C of the true risk of the administered plan
  double visible_cox_c_index = 0.0;  ///< Harrell's C of a Cox model on visible features (2-fold)
  Figure km_median_os_months;
  double event_fraction = 0.0;

  // Response of the administered plan after one session, by mRECIST on the viable mask
  // (volume change standing in for the change of the sum of diameters).
  Figure complete_response, objective_response, progressive_disease;
  double partial_response = 0.0, stable_disease = 0.0;
  /// Geometric-mean hazard ratio of Lipiodol + gelatin sponge + one drug (each drug in turn)
  /// against Lipiodol + gelatin sponge: chemoembolization against bland embolization.
  Figure chemo_vs_bland_hr;
  /// Geometric-mean hazard ratio of adding a second drug to a one-drug plan (same embolics).
  Figure second_drug_hr;
  /// Shares of patients whose optimal plan has 0, 1 and 2 drugs.
  std::array<double, 3> optimal_drugs_share{};
  /// Share of patients whose optimal plan uses each embolic besides Lipiodol ("none" too).
  std::map<std::string, double> optimal_embolic_share;
  /// Share of patients whose optimum holds an item the guideline rules out for them (alcohol
  /// with a Child-Pugh B or C liver).
  Figure guideline_conflict;
  /// Image-only residual estimate (dynamics::EstimateResidualFromImage) against the truth's
  /// integral, across plans: R^2 pooled over every (patient, plan), and the mean within-patient
  /// R^2 over patients whose residual varies (simulated worlds only).
  double visibility_r2 = std::numeric_limits<double>::quiet_NaN();
  double visibility_within_r2 = std::numeric_limits<double>::quiet_NaN();
  int visibility_cases = 0;

  // Mean HU per tissue (NaN when not measured: stats from truths alone).
  double liver_hu = 0.0, viable_tumor_hu = 0.0, necrosis_hu = 0.0, lipiodol_hu = 0.0, air_hu = 0.0;
  int hu_patients = 0;  ///< patients whose images were measured

  /// Human-readable table with the target ranges, 95% intervals and a pass/fail mark per line.
  std::string Format() const;
  /// Every failed validity check, one sentence each (empty when the world is valid).
  std::vector<std::string> Failures() const;
};

/// Figures from in-memory truths (no images): plan effect, optimal-plan spread, C-indices, OS.
Expected<WorldStats> SummarizeTruths(const std::vector<SyntheticPatient>& patients,
                                     const std::vector<PatientTruth>& truths);

/// Figures for `n` patients of the world simulated in memory (tumor regions only, no files):
/// the fast way to check a world configuration at scale. HU fields stay NaN. With
/// `visibility_plans` > 0, that many plans per patient (spread over the plan space) are also
/// rendered and read back by the image-only residual estimate.
Expected<WorldStats> SimulateWorldStats(const WorldConfig& config, const ActionBase& actions,
                                        std::uint64_t seed, int n, int visibility_plans = 0);

/// Figures for a cohort folder: the truths plus mean HU per tissue measured on up to
/// `max_hu_patients` patients' pre and administered post images.
Expected<WorldStats> ComputeCohortStats(const std::string& cohort_dir, int max_hu_patients = 20);

}  // namespace mewm::scenarios

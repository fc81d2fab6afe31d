// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Where a run's patients come from: a synthetic cohort folder (written by `mewm cohort generate`)
// or a user manifest (a CSV naming each patient's CT, tumor mask, optional liver mask and clinical
// columns). Loading is lazy, one patient at a time, and every error names the patient and file.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "mewm/core/csv.h"
#include "mewm/core/expected.h"
#include "mewm/survival/metrics.h"
#include "mewm/tace/action_base.h"
#include "mewm/tace/outcome.h"
#include "mewm/tace/patient.h"

namespace mewm::scenarios {

/// The largest clinical note file a cohort may name (a referral is a few hundred bytes).
inline constexpr std::uint64_t kMaxNoteBytes = 64u << 10;

/// One patient of a cohort, before its images are read.
struct CohortEntry {
  std::string id;
  std::string ct;     ///< path; a .vdb holds a grid "ct", a NIfTI holds the CT itself, a folder
                      ///< holds a DICOM CT series
  std::string tumor;  ///< path; a .vdb grid "tumor" (or the only label grid), or a DICOM-SEG
  std::string liver;  ///< optional path ("" = none); as tumor (a DICOM-SEG: its liver segments)
  std::string ct_series_uid;  ///< DICOM folders: the series to read ("" = see LoadPatient)
  std::string segment_map;    ///< DICOM-SEG: "1=liver,2=tumor" overrides ("" = by their words)
  std::string note;           ///< optional path of the clinical note, a text file ("" = none)
  Covariates covariates;
  std::string origin;  ///< "file:line" that described this patient
  // Observed follow-up, when the source has it (training cohorts):
  std::string post;          ///< administered post-treatment image (.vdb: ct + viable)
  std::string administered;  ///< administered plan text
  std::optional<survival::SurvivalRecord> survival;
};

/// Layout of the synthetic cohort folders this build writes and reads (manifest.json "layout").
/// Layout 2 keeps the planner's files (manifest.json, clinical.csv, patients/) apart from the
/// outcomes (outcomes.csv) and the hidden truth (truth/); see cohort.h.
inline constexpr int kCohortLayout = 2;

/// The marker file the synthetic world (GenerateCohort) writes first into a cohort folder, and the
/// generator it names (manifest.json names it too).
inline constexpr const char* kCohortMarker = ".mewm-cohort";
inline constexpr const char* kCohortGenerator = "mewm synthetic world";

/// Whether `dir` is missing, an empty folder, or a cohort mewm wrote (its .mewm-cohort or
/// manifest.json names kCohortGenerator): the only folders GenerateCohort may write into or
/// replace.
bool IsEmptyOrMewmCohort(const std::string& dir);

/// Checks that `dir` holds a complete synthetic cohort of layout kCohortLayout, reading only its
/// manifest.json. kMismatch naming the folder for a cohort of an older layout (layout 1:
/// truth.json beside the planner's files, seeds in manifest.json and pre.vdb), which must be
/// generated again; kNotFound when there is no manifest.json (not a complete cohort);
/// kCorruptData for a manifest that does not parse.
Status CheckSyntheticLayout(const std::string& dir);

/// Reads a synthetic cohort folder as the planner sees it: manifest.json for the files (and the
/// clinical note, where a patient's entry names one; kInvalidArgument when its path leaves the
/// folder) and clinical.csv for the baseline covariates. It never opens outcomes.csv nor anything
/// under truth/, so the entries carry no administered plan and no follow-up. Errors of
/// CheckSyntheticLayout, and kCorruptData for a patient of the manifest without a clinical row.
Expected<std::vector<CohortEntry>> ReadSyntheticCohort(const std::string& dir);

/// ReadSyntheticCohort plus outcomes.csv: each entry's administered plan and observed follow-up.
/// For training and evaluation only. kCorruptData when a patient has no row in outcomes.csv.
Expected<std::vector<CohortEntry>> ReadSyntheticCohortWithOutcomes(const std::string& dir);

/// Path of the cohort's hidden truth, `dir/truth/truth.json`, after CheckSyntheticLayout. Only
/// evaluation, training and `mewm cohort stats` read it.
Expected<std::string> SyntheticTruthPath(const std::string& dir);

/// Reads a manifest CSV. Required columns: patient_id, ct, tumor, age_years, sex (M/F),
/// child_pugh, bclc_stage, afp_ng_ml, lesion_count, max_diameter_mm, vascular_invasion (0/1).
/// Optional: liver, post, administered_plan, time_months + event, note (a text file, which must lie
/// inside the CSV's folder), ct_series_uid and segment_map (DICOM, see LoadPatient). Paths resolve
/// against the CSV's folder. kParse / kInvalidArgument naming file:line and the column.
Expected<std::vector<CohortEntry>> ReadManifest(const std::string& csv_path);

/// Reads the images and the clinical note of one patient and validates them
/// (PatientCase::Validate): missing files, mismatched geometry, an empty tumor mask and a note that
/// is not a regular file of at most kMaxNoteBytes are errors naming the patient and the file.
/// DICOM (docs/ECOSYSTEM.md, "DICOM-SEG in"): a `ct` that is a folder is read as a DICOM CT series
/// (dicom::ImportSeries): the series `ct_series_uid` names, else the folder's only series, else
/// the one the tumor's DICOM-SEG references. A `tumor` or `liver` that is a DICOM file is read as
/// a DICOM-SEG onto that CT's lattice (dicom::ImportSegmentation, with `segment_map`), and its
/// grid "tumor" or "liver" is taken; one SEG file named in both columns is read once. A DICOM-SEG
/// with a CT that is not a DICOM folder is kInvalidArgument.
Expected<PatientCase> LoadPatient(const CohortEntry& entry);

/// A post-treatment image file (.vdb with grids ct and viable, optionally viable_fraction) as
/// the outcome of `plan`; errors name the file.
Expected<Outcome> LoadOutcomeFile(const std::string& path, const Plan& plan);

/// The administered post-treatment outcome of a patient that has one (kNotFound otherwise).
Expected<Outcome> LoadAdministeredOutcome(const CohortEntry& entry, const ActionBase& actions);

/// Parses the clinical columns of row `row` (shared by both readers).
Expected<Covariates> ReadCovariates(const CsvTable& table, std::size_t row);

}  // namespace mewm::scenarios

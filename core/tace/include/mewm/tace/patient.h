// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// One patient as every pipeline stage sees it: the pre-treatment CT and masks, and the clinical
// covariates that a clinician would know. Hidden ground truth (synthetic biology, survival) is
// never part of it; evaluation reads that separately.
#pragma once

#include <optional>
#include <string>

#include "mewm/core/volume.h"

namespace mewm {

/// Clinical covariates of intermediate-stage HCC treated with TACE.
struct Covariates {
  double age_years = 0.0;
  enum class Sex { kFemale, kMale } sex = Sex::kMale;
  char child_pugh = 'A';   ///< 'A', 'B' or 'C'
  char bclc_stage = 'B';   ///< '0', 'A', 'B', 'C' or 'D'
  double afp_ng_ml = 0.0;  ///< alpha-fetoprotein
  int lesion_count = 1;
  double max_diameter_mm = 0.0;
  bool vascular_invasion = false;

  /// kInvalidArgument naming the first out-of-range field (age outside [0, 120], AFP < 0,
  /// Child-Pugh not A-C, BCLC not 0/A-D, lesion count < 1, diameter < 0).
  Status Validate() const;
};

/// A patient case: id, images, covariates and, where the cohort has one, a clinical note.
struct PatientCase {
  std::string id;
  Volume ct;                         ///< pre-treatment CT, HU
  LabelVolume tumor;                 ///< tumor mask (non-zero = tumor; labels may separate lesions)
  std::optional<LabelVolume> liver;  ///< liver mask, when available
  Covariates covariates;
  /// Free-text clinical note (the referral), for policies that read it; empty when the cohort has
  /// none. Only visible facts.
  std::string note{};

  /// kMismatch when a mask's geometry or extent differs from the CT's; kInvalidArgument when the
  /// tumor mask is empty or the covariates are out of range. Messages name the patient.
  Status Validate() const;
};

/// The patient restricted to the tumor's neighbourhood: same lattice and extent, but only voxels
/// within `margin_mm` of the tumor's bounding box are kept (the rest read as background). Models
/// that act near the tumor use it to avoid copying the whole CT for every simulated outcome.
/// kInvalidArgument for an empty tumor mask or a negative margin.
Expected<PatientCase> TumorRegion(const PatientCase& patient, double margin_mm);

}  // namespace mewm

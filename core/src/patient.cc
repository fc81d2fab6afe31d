// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/core/patient.h"

#include <cmath>

namespace mewm {

Status Covariates::Validate() const {
  const auto bad = [](const std::string& what) {
    return MakeError(ErrorCode::kInvalidArgument, "covariate " + what);
  };
  if (!(age_years >= 0.0 && age_years <= 120.0)) return bad("age must be in [0, 120] years");
  if (child_pugh < 'A' || child_pugh > 'C') return bad("Child-Pugh class must be A, B or C");
  if (bclc_stage != '0' && (bclc_stage < 'A' || bclc_stage > 'D')) {
    return bad("BCLC stage must be 0, A, B, C or D");
  }
  if (!(afp_ng_ml >= 0.0) || !std::isfinite(afp_ng_ml)) return bad("AFP must be >= 0 ng/mL");
  if (lesion_count < 1) return bad("lesion count must be >= 1");
  if (!(max_diameter_mm >= 0.0) || !std::isfinite(max_diameter_mm)) {
    return bad("maximum diameter must be >= 0 mm");
  }
  return {};
}

Status PatientCase::Validate() const {
  const std::string who = "patient '" + id + "'";
  const auto same_lattice = [&](const LabelVolume& mask) -> Status {
    if (mask.extent() != ct.extent() || !mask.geometry().ApproxEquals(ct.geometry(), 1e-4)) {
      return MakeError(ErrorCode::kMismatch, who + ": mask '" + mask.name() + "' geometry (" +
                                                 mask.geometry().ToString() +
                                                 ") differs from the CT's (" +
                                                 ct.geometry().ToString() + ")");
    }
    return {};
  };
  MEWM_RETURN_IF_ERROR(same_lattice(tumor));
  if (liver) MEWM_RETURN_IF_ERROR(same_lattice(*liver));
  if (CountLabel(tumor) == 0) {
    return MakeError(ErrorCode::kInvalidArgument, who + ": tumor mask is empty");
  }
  if (auto valid = covariates.Validate(); !valid) return valid.error().WithContext(who);
  return {};
}

}  // namespace mewm

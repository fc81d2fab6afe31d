// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/tace/patient.h"

#include <algorithm>
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

Expected<PatientCase> TumorRegion(const PatientCase& patient, double margin_mm) {
  const IndexBox tumor = patient.tumor.ActiveBoundingBox();
  if (tumor.empty() || !(margin_mm >= 0.0)) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "patient '" + patient.id +
                         "': tumor region needs a non-empty tumor mask and "
                         "a margin >= 0 mm");
  }
  IndexBox box;
  for (int a = 0; a < 3; ++a) {
    const auto pad = std::int64_t(std::ceil(margin_mm / patient.ct.geometry().spacing[a]));
    box.min[a] = std::max<std::int64_t>(0, tumor.min[a] - pad);
    box.max[a] = std::min<std::int64_t>(patient.ct.extent()[a] - 1, tumor.max[a] + pad);
  }
  const auto clip = [&](const auto& volume) {
    std::decay_t<decltype(volume)> out(volume.geometry(), volume.extent(), volume.name());
    (void)out.CopyFromDense(box, volume.ToDense(box).data);  // sizes match by construction
    return out;
  };
  PatientCase region{patient.id, clip(patient.ct), clip(patient.tumor), std::nullopt,
                     patient.covariates};
  if (patient.liver) region.liver = clip(*patient.liver);
  return region;
}

}  // namespace mewm

// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include <cstdio>

#include "mewm/core/crop.h"
#include "mewm/policy/vlm.h"
#include "mewm/tace/tumor_features.h"

namespace mewm::policy {

Status VlmOptions::Validate() const {
  if (top_k < 1 || top_k > 64) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "vlm: top_k must be in [1, 64], got " + std::to_string(top_k));
  }
  if (threads < 0) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "vlm: threads must be >= 0, got " + std::to_string(threads));
  }
  if (inputs != "both" && inputs != "image" && inputs != "note") {
    return MakeError(ErrorCode::kInvalidArgument,
                     "vlm: inputs must be \"both\", \"image\" or \"note\", got \"" + inputs + "\"");
  }
  if (grammar.drug_horizon < 0 || grammar.embolic_horizon < 0) {
    return MakeError(ErrorCode::kInvalidArgument, "vlm: horizons must be >= 0");
  }
  return {};
}

Expected<VlmInput> MakeVlmInput(const PatientCase& patient) {
  MEWM_RETURN_IF_ERROR(patient.Validate());
  MEWM_TRY(const StatedFindings measured, MeasureFindings(patient));
  MEWM_TRY(const WorldBox box, LabelWorldBox(patient.tumor));
  CropSpec spec;
  spec.center_world = 0.5 * (box.min + box.max);
  spec.size = {kVlmCropSize, kVlmCropSize, kVlmCropSize};
  spec.spacing_mm = Eigen::Vector3d::Constant(kVlmCropSpacingMm);
  MEWM_TRY(DenseFloat ct, ExtractCrop(patient.ct, spec));
  MEWM_TRY(const DenseLabel tumor, ExtractCrop(patient.tumor, spec));
  WindowToUnit(ct, HuWindow{});

  VlmInput in;
  in.id = patient.id;
  in.ct = std::move(ct.data);
  in.tumor.resize(tumor.data.size());
  for (std::size_t i = 0; i < tumor.data.size(); ++i) in.tumor[i] = tumor.data[i] != 0 ? 1.f : 0.f;
  in.note = patient.note.substr(0, kVlmNoteBytes);
  in.covariates = patient.covariates;
  in.measured = measured;
  return in;
}

Expected<StatedFindings> MeasureFindings(const PatientCase& patient) {
  MEWM_TRY(const TumorFeatures features, ComputeTumorFeatures(patient.ct, patient.tumor));
  StatedFindings measured;
  measured.lesion_count = features.lesions;
  measured.max_diameter_mm = patient.covariates.max_diameter_mm;
  measured.enhancing_hu = features.enhancing_hu;
  measured.necrotic_fraction = features.necrotic_fraction;
  measured.child_pugh = patient.covariates.child_pugh;
  return measured;
}

std::vector<int> TokenizeNote(const std::string& note) {
  std::vector<int> tokens(kVlmNoteBytes, kVlmPadToken);
  for (std::size_t i = 0; i < note.size() && i < kVlmNoteBytes; ++i) {
    tokens[i] = static_cast<unsigned char>(note[i]);
  }
  return tokens;
}

std::string FormatFindings(const StatedFindings& f) {
  char line[256];
  std::snprintf(line, sizeof(line),
                "%d lesion%s, largest %.0f mm, arterial enhancement %.0f HU, necrosis %.0f%%, "
                "Child-Pugh %c",
                f.lesion_count, f.lesion_count == 1 ? "" : "s", f.max_diameter_mm, f.enhancing_hu,
                100.0 * f.necrotic_fraction, f.child_pugh);
  return line;
}

}  // namespace mewm::policy

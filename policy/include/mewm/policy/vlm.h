// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The torch-free half of the `vlm` policy backend (the networks live in mewm::policy_vlm,
// policy/vlm/): its options, the factory type the backend registry takes as a value, and what the
// model reads from a patient.
//   input:  PatientCase (CT, tumor mask, clinical note, visible covariates)
//   output: VlmInput: a 32^3 crop at 4 mm around the tumor (CT windowed to [-1, 1] and the tumor
//           mask), the note's first kVlmNoteBytes bytes, the covariates the grammar needs
//           (contraindications), and the findings measured on the images and the note
//           (training targets; evaluation compares the model's stated findings with them)
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "mewm/core/expected.h"
#include "mewm/policy/plan_grammar.h"
#include "mewm/policy/policy_model.h"
#include "mewm/tace/action_base.h"
#include "mewm/tace/patient.h"

namespace mewm::policy {

inline constexpr int kVlmCropSize = 32;            ///< voxels per side
inline constexpr double kVlmCropSpacingMm = 4.0;   ///< so the crop spans 128 mm
inline constexpr std::size_t kVlmNoteBytes = 512;  ///< longer notes are cut

/// Scenario options of `policy.backend = "vlm"`.
struct VlmOptions {
  std::string checkpoint;  ///< the trained model (`mewm train policy`)
  int top_k = 5;           ///< plans proposed per patient (1..64); the planner searches these
  std::string device = "cpu";
  int threads = 0;                ///< libtorch intra-op threads; 0 = all hardware threads
  bool contraindications = true;  ///< apply Contraindications() in the grammar
  std::string inputs = "both";    ///< "both", or the ablations "image" / "note" (other blanked)
  GrammarOptions grammar;         ///< horizons and protocol (the scenario's planner and actions)

  /// kInvalidArgument naming the first bad field.
  Status Validate() const;
};

/// Creates the VLM policy. mewm::policy_vlm defines the real one (VlmFactoryFunction in
/// mewm/policy/vlm_backend.h); the backend registry takes it as a value so that torch-free
/// libraries and binaries never link libtorch.
using VlmFactory =
    std::function<Expected<std::unique_ptr<PolicyModel>>(const VlmOptions&, const ActionBase&)>;

/// What the VLM reads from one patient.
struct VlmInput {
  std::string id;
  std::vector<float> ct;     ///< kVlmCropSize^3, i fastest, HU windowed [-175, 600] -> [-1, 1]
  std::vector<float> tumor;  ///< the tumor mask on the same lattice, 0 or 1
  std::string note;          ///< at most kVlmNoteBytes bytes
  Covariates covariates;     ///< visible; the grammar reads the contraindications from them
  StatedFindings measured;   ///< lesions, enhancement, necrosis (tumor_features), diameter and
                             ///< Child-Pugh (the covariates the note states)
};

/// Crops and measures one patient. Errors of PatientCase::Validate and ComputeTumorFeatures.
Expected<VlmInput> MakeVlmInput(const PatientCase& patient);

/// The findings as measured, against which a model's stated findings are scored: lesion count,
/// enhancement and necrotic fraction from ComputeTumorFeatures, diameter and Child-Pugh from the
/// covariates (what the note states). Errors of ComputeTumorFeatures.
Expected<StatedFindings> MeasureFindings(const PatientCase& patient);

/// The byte-level tokens of a note: one token per byte (0..255), padded with kVlmPadToken to
/// kVlmNoteBytes. Byte-level needs no training and reads any spelling, number format or unit.
inline constexpr int kVlmPadToken = 256;
std::vector<int> TokenizeNote(const std::string& note);

/// One training patient: its input and the true relative hazard of every plan (the retrospective
/// outcome study's ranking; training only).
struct VlmTrainingExample {
  VlmInput input;
  std::vector<std::pair<Plan, double>> plan_risks;
};

/// The findings as one line, for rationales and the demo.
std::string FormatFindings(const StatedFindings& findings);

}  // namespace mewm::policy

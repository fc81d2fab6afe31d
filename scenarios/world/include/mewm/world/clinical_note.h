// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The clinical note of a synthetic patient: free text in the voice of a referring hepatologist,
// as the policy reads it (docs/SYNTHETIC_WORLD.md, "Clinical note").
//   inputs:  SyntheticPatient (id, seed, covariates, lesions; never the hidden biology)
//   outputs: the note's text (plain UTF-8, a few hundred bytes, ends with a newline)
//   config:  none; every choice is drawn from DeriveSeed(patient.seed, "clinical-note")
//
// The note states the visible covariates (age, sex, Child-Pugh class, BCLC stage, AFP, lesion
// count, largest diameter, vascular invasion) and adds facts a referral carries that the
// covariates do not: etiology, Child-Pugh score and its components, ECOG, prior treatments and
// history. Those are drawn from the note's own seed, consistent with the covariates (score within
// the class, ECOG 0 for BCLC 0/A/B) and independent of the hidden biology. Phrasing varies:
// templates, synonyms, number formats, field order and omitted fields.
// docs/SYNTHETIC_WORLD.md ("Clinical note") documents it and its leak test.
#pragma once

#include <string>

#include "mewm/world/synthetic_world.h"

namespace mewm::scenarios {

/// The note of `patient`: a pure function of its seed, covariates and lesions (the same patient
/// always gives the same bytes). Never fails; covariates out of the world's ranges are stated as
/// they are.
std::string ClinicalNote(const SyntheticPatient& patient);

}  // namespace mewm::scenarios

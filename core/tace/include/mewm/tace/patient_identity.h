// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Which patient a model's per-patient cache belongs to.
#pragma once

#include <string>

#include "mewm/tace/patient.h"

namespace mewm {

/// Recognizes the patient a model last did per-patient work for (measurements, crops, outcome
/// caches), so that work is redone only for another patient. Equal means the same id and
/// covariates and the very same grids: CT, tumor and liver mask, which Volume's copies share by
/// pointer. It holds those grids, so while it remembers a patient no other patient's grid can
/// take their address. A grid modified in place is not noticed: a model's caller treats a patient
/// as read-only once it has been handed to the model.
class PatientIdentity {
 public:
  /// True when `patient` is the one last remembered (never before the first Remember).
  bool Matches(const PatientCase& patient) const;
  void Remember(const PatientCase& patient);
  void Forget();

 private:
  std::string id_;
  Covariates covariates_;
  openvdb::FloatGrid::ConstPtr ct_;
  openvdb::Int32Grid::ConstPtr tumor_;
  openvdb::Int32Grid::ConstPtr liver_;
};

}  // namespace mewm

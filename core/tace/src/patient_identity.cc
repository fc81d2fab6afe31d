// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/tace/patient_identity.h"

namespace mewm {

namespace {

bool SameCovariates(const Covariates& a, const Covariates& b) {
  return a.age_years == b.age_years && a.sex == b.sex && a.child_pugh == b.child_pugh &&
         a.bclc_stage == b.bclc_stage && a.afp_ng_ml == b.afp_ng_ml &&
         a.lesion_count == b.lesion_count && a.max_diameter_mm == b.max_diameter_mm &&
         a.vascular_invasion == b.vascular_invasion;
}

}  // namespace

bool PatientIdentity::Matches(const PatientCase& patient) const {
  const openvdb::Int32Grid::ConstPtr liver =
      patient.liver ? patient.liver->grid_ptr() : openvdb::Int32Grid::ConstPtr();
  return tumor_ != nullptr && patient.id == id_ && patient.ct.grid_ptr() == ct_ &&
         patient.tumor.grid_ptr() == tumor_ && liver == liver_ &&
         SameCovariates(patient.covariates, covariates_);
}

void PatientIdentity::Remember(const PatientCase& patient) {
  id_ = patient.id;
  covariates_ = patient.covariates;
  ct_ = patient.ct.grid_ptr();
  tumor_ = patient.tumor.grid_ptr();
  liver_ = patient.liver ? patient.liver->grid_ptr() : openvdb::Int32Grid::ConstPtr();
}

void PatientIdentity::Forget() { *this = PatientIdentity(); }

}  // namespace mewm

// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/tace/patient_identity.h"

#include <tuple>

namespace mewm {

namespace {

/// Every field of `c`. The binding names each member, so a field added to Covariates stops this
/// compiling until it is named here, and so compared.
auto Fields(const Covariates& c) {
  const auto& [age, sex, child_pugh, bclc, afp, lesions, diameter, invasion] = c;
  return std::tie(age, sex, child_pugh, bclc, afp, lesions, diameter, invasion);
}

bool SameCovariates(const Covariates& a, const Covariates& b) { return Fields(a) == Fields(b); }

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

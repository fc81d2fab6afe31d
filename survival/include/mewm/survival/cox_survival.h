// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The `cox` survival backend: Cox proportional hazards on volumetric features of the pre- and
// post-treatment images plus the covariates, with a Breslow baseline so every score has a curve.
#pragma once

#include <Eigen/Core>
#include <memory>
#include <string>
#include <vector>

#include "mewm/survival/cox.h"
#include "mewm/survival/survival_model.h"
#include "mewm/tace/patient_identity.h"
#include "mewm/tace/tumor_features.h"

namespace mewm::survival {

/// Feature names, in vector order. A model file whose names differ is rejected on load.
const std::vector<std::string>& CoxFeatureNames();

/// What the Cox model needs from the pre-treatment case; measured once per patient.
struct PreTreatment {
  double tumor_ml = 0.0;
  Covariates covariates;
};
Expected<PreTreatment> MeasurePreTreatment(const PatientCase& patient);

/// The feature vector of one outcome: log1p(pre tumor ml), log1p(post viable ml), residual
/// fraction, Lipiodol coverage, plan toxicity (core/pharmacology.h), log10 AFP, Child-Pugh B, C,
/// BCLC 0/A, C, vascular invasion, age, lesion count.
Expected<Eigen::VectorXd> CoxFeatures(const PreTreatment& pre, const LabelVolume& pre_tumor,
                                      const Outcome& post);

/// Provenance stored with a model: how it was made and how well it did.
struct ModelProvenance {
  std::string command;  ///< the exact `mewm train ...` command
  std::string seed;     ///< seed of the training data
  std::string data;     ///< training data description (cohort path, patients)
  std::string metrics;  ///< JSON object of evaluation numbers ("{}" when none)
};

class CoxSurvival final : public SurvivalModel {
 public:
  /// kMismatch when the fit's feature names differ from CoxFeatureNames(); kInvalidArgument for
  /// missing or mis-sized coefficients or a malformed baseline hazard.
  static Expected<std::unique_ptr<CoxSurvival>> Create(CoxFit fit, ModelProvenance provenance = {});
  /// kNotFound / kIo; kCorruptData for a file that is not a mewm Cox model, or kMismatch for one
  /// made with other features; kCorruptData when the file's SHA-256 differs from its checksum
  /// file `path`.sha256 (mewm/core/sha256.h).
  static Expected<std::unique_ptr<CoxSurvival>> Load(const std::string& path);
  /// Writes the model atomically as JSON, then its checksum file `path`.sha256.
  Status Save(const std::string& path) const;

  /// Scores one outcome. The pre-treatment measurement is cached per patient (PatientIdentity).
  Expected<RiskScore> Score(const PatientCase& pre, const Outcome& post) override;
  std::string name() const override { return "cox"; }

  const CoxFit& fit() const { return fit_; }
  const ModelProvenance& provenance() const { return provenance_; }

 private:
  CoxSurvival(CoxFit fit, ModelProvenance provenance)
      : fit_(std::move(fit)), provenance_(std::move(provenance)) {}
  CoxFit fit_;
  ModelProvenance provenance_;
  PatientIdentity cached_patient_;
  PreTreatment cached_;
};

}  // namespace mewm::survival

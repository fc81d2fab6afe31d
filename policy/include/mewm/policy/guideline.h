// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The `guideline` policy backend: a few deterministic rules, in the spirit of cTACE practice
// guidelines, that rank the action base's drugs and embolics for one patient. It reads only what
// a clinician sees: covariates and tumor features measured on the CT (core/tumor_features.h).
//   input:  PatientCase
//   output: Proposal (drugs and embolics in order of preference, rationale naming the facts)
//   config: GuidelineConfig (max_drugs = 5, max_embolics = 4, large_tumor_mm = 50,
//           hypervascular_hu = 90)
// FirstChoicePlan turns a proposal into the single plan the guideline would give without search.
#pragma once

#include <memory>
#include <string>
#include <utility>

#include "mewm/core/expected.h"
#include "mewm/policy/policy_model.h"
#include "mewm/tace/action_base.h"
#include "mewm/tace/patient.h"

namespace mewm::policy {

struct GuidelineConfig {
  int max_drugs = 5;               ///< most drugs proposed (>= 2)
  int max_embolics = 4;            ///< most embolics proposed, Lipiodol included (>= 1)
  double large_tumor_mm = 50.0;    ///< max diameter from which permanent embolics come first
  double hypervascular_hu = 90.0;  ///< enhancing HU from which permanent embolics come first

  /// kInvalidArgument naming the first out-of-range field.
  Status Validate() const;
};

/// Rule-based policy. Rules, in order (each skipped when its items are not in the action base):
///  1. Drugs, one per class in turn (platinum, anthracycline, antimetabolite, mitomycin, then other
///     classes in file order), each class's drugs in file order; AFP > 400 ng/mL puts
///     anthracyclines first.
///  2. Child-Pugh B/C or age >= 75: drugs by ascending toxicity (PhysicsOf; unknown = most toxic),
///     dropping those with toxicity >= 0.10 while at least two remain.
///  3. Embolics: Lipiodol first (cTACE carrier). Max diameter >= large_tumor_mm or enhancing HU >=
///     hypervascular_hu: PVA, NBCA, Gelatin Sponge, Absolute Alcohol. Diameter < 30 mm: Gelatin
///     Sponge, Absolute Alcohol, PVA, NBCA. Otherwise Gelatin Sponge, PVA, NBCA, Absolute Alcohol.
///     Other embolics follow in file order.
///  4. Child-Pugh B/C: no Absolute Alcohol (decompensation risk).
/// Lists are then cut to max_drugs / max_embolics.
class GuidelinePolicy final : public PolicyModel {
 public:
  /// Copies `actions`. kInvalidArgument for a bad config or an action base with fewer than 2
  /// drugs.
  static Expected<std::unique_ptr<GuidelinePolicy>> Create(const ActionBase& actions,
                                                           const GuidelineConfig& config = {});

  /// Errors of PatientCase::Validate and ComputeTumorFeatures; both name the patient.
  Expected<Proposal> Propose(const PatientCase& patient) override;
  std::string name() const override { return "guideline"; }

 private:
  GuidelinePolicy(ActionBase actions, const GuidelineConfig& config)
      : actions_(std::move(actions)), config_(config) {}

  ActionBase actions_;
  GuidelineConfig config_;
};

/// The guideline's single plan without search: the protocol's mandatory items, then the
/// proposal's drugs in order while the plan stays valid and has at most `drug_horizon` drugs, then
/// its other embolics in order while valid and at most `embolic_horizon` embolics (mandatory
/// embolics such as Lipiodol count). An empty protocol has no mandatory items. kInvalidArgument
/// for a negative horizon or when no non-empty valid plan results; errors of CanonicalizeProposal
/// and ActionBase::MandatoryItems (kNotFound for an unknown protocol) pass through.
Expected<Plan> FirstChoicePlan(const Proposal& proposal, const ActionBase& actions,
                               int drug_horizon, int embolic_horizon,
                               const std::string& protocol = "cTACE");

}  // namespace mewm::policy

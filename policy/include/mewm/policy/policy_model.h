// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The policy stage: given a patient, propose candidate treatment items for the planner to search.
//   input:  PatientCase (pre-treatment CT, masks, covariates)
//   output: Proposal (candidate drugs and embolics, with a rationale)
// Backends: `guideline` (rules), `vlm` (native libtorch, mewm::policy_vlm); planned: `openai`.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "mewm/core/expected.h"
#include "mewm/tace/action_base.h"
#include "mewm/tace/patient.h"

namespace mewm::policy {

/// One whole plan a policy proposes, with the model's log-probability of writing it.
struct RankedPlan {
  Plan plan;
  double log_prob = 0.0;
};

/// The findings a policy states it relied on, to be checked against what is measured
/// (core/tumor_features.h, the covariates and the note).
struct StatedFindings {
  int lesion_count = 0;
  double max_diameter_mm = 0.0;
  double enhancing_hu = 0.0;  ///< arterial enhancement: mean HU of the non-necrotic tumor
  double necrotic_fraction = 0.0;
  char child_pugh = 'A';
};

/// Candidate items a policy proposes, in its order of preference.
struct Proposal {
  std::vector<std::string> drugs;     ///< canonical drug names
  std::vector<std::string> embolics;  ///< canonical embolic names
  std::string rationale;              ///< short human-readable reason
  std::string raw_output;             ///< what the model said, verbatim (empty for rules)
  /// Whole plans, best first, for policies that write plans (`vlm`); empty for item policies.
  /// When set, the planner searches only these plans.
  std::vector<RankedPlan> plans{};
  std::optional<StatedFindings> findings{};  ///< what the model read (empty for rules)
};

/// Resolves aliases to canonical names and checks that each item exists and sits in the right
/// list (a drug among drugs, an embolic among embolics), without duplicates. kNotFound for an
/// unknown item (naming the closest valid one), kInvalidArgument for a misplaced or repeated item.
/// Whole plans are rebuilt from their canonical names (unknown names are kNotFound); a repeated
/// plan is kInvalidArgument.
Expected<Proposal> CanonicalizeProposal(const Proposal& proposal, const ActionBase& actions);

/// A policy backend. Resource type: not copyable; created by its backend's factory.
class PolicyModel {
 public:
  virtual ~PolicyModel() = default;
  PolicyModel() = default;
  PolicyModel(const PolicyModel&) = delete;
  PolicyModel& operator=(const PolicyModel&) = delete;

  /// Proposes candidate items for one patient. The result is canonical (see
  /// CanonicalizeProposal).
  virtual Expected<Proposal> Propose(const PatientCase& patient) = 0;
  /// Backend name, e.g. "guideline".
  virtual std::string name() const = 0;
  /// Polled while Propose waits on something outside the process (the `openai` backend's
  /// requests and the waits between its retries); once it returns true, Propose gives up within
  /// about 0.1 s and returns kCancelled. Empty: never cancelled. Backends that compute locally
  /// finish a proposal in seconds and ignore it.
  // NOLINTNEXTLINE(performance-unnecessary-value-param): the overriders keep their copy
  virtual void set_cancelled(std::function<bool()> cancelled) { (void)cancelled; }
};

}  // namespace mewm::policy

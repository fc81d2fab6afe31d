// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The policy stage: given a patient, propose candidate treatment items for the planner to search.
//   input:  PatientCase (pre-treatment CT, masks, covariates)
//   output: Proposal (candidate drugs and embolics, with a rationale)
// Backends: `guideline` (rules); planned: `vlm` (native libtorch), `openai` (chat endpoint).
#pragma once

#include <string>
#include <vector>

#include "mewm/core/expected.h"
#include "mewm/tace/action_base.h"
#include "mewm/tace/patient.h"

namespace mewm::policy {

/// Candidate items a policy proposes, in its order of preference.
struct Proposal {
  std::vector<std::string> drugs;     ///< canonical drug names
  std::vector<std::string> embolics;  ///< canonical embolic names
  std::string rationale;              ///< short human-readable reason
  std::string raw_output;             ///< what the model said, verbatim (empty for rules)
};

/// Resolves aliases to canonical names and checks that each item exists and sits in the right
/// list (a drug among drugs, an embolic among embolics), without duplicates. kNotFound for an
/// unknown item (naming the closest valid one), kInvalidArgument for a misplaced or repeated item.
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
};

}  // namespace mewm::policy

// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The grammar that constrains a plan-writing model: the plan is written as a sequence of item
// tokens followed by an end token, and at each step only the tokens that can still end in a valid
// plan are allowed. The grammar is built from the action base itself (its vocabulary, class
// limits, exclusions, the protocol's mandatory items), the drug and embolic horizons, and the
// patient's contraindications, so a decoder that samples only allowed tokens cannot write an
// invalid plan. Aliases never reach the grammar: a token is a canonical item.
//   input:  ActionBase, GrammarOptions; per patient a forbidden-item set (Contraindications)
//   output: allowed tokens for a prefix; BeamDecode's K best distinct plans with log-probabilities
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "mewm/core/expected.h"
#include "mewm/policy/policy_model.h"
#include "mewm/tace/action_base.h"
#include "mewm/tace/patient.h"

namespace mewm::policy {

struct GrammarOptions {
  int drug_horizon = 2;     ///< at most this many drugs in a plan (>= 0)
  int embolic_horizon = 2;  ///< at most this many embolics, mandatory ones included (>= 0)
  std::string protocol = "cTACE";
};

/// An item ruled out for one patient by a visible covariate, and why.
struct Contraindication {
  std::string item;  ///< canonical name
  std::string reason;
};

/// The contraindications the guideline applies (policy/guideline.h rule 4): a Child-Pugh B or C
/// liver rules out Absolute Alcohol. Items the action base does not define are skipped.
std::vector<Contraindication> Contraindications(const Covariates& covariates,
                                                const ActionBase& actions);

class PlanGrammar {
 public:
  /// Token 0 ends the plan; token t >= 1 is item t - 1 of items(): the action base's embolics in
  /// file order, then its drugs in file order. A plan is written in increasing token order, so
  /// each plan has exactly one sequence ("Lipiodol, Gelatin Sponge, Raltitrexed, Pirarubicin").
  static constexpr int kEnd = 0;

  /// Enumerates every non-empty plan within the horizons that ActionBase::Validate accepts under
  /// the protocol. kInvalidArgument for a negative horizon or when no plan is valid; kNotFound
  /// for an unknown protocol.
  static Expected<PlanGrammar> Create(const ActionBase& actions, const GrammarOptions& options);

  int vocab_size() const { return int(items_.size()) + 1; }
  const std::vector<std::string>& items() const { return items_; }
  /// Every plan the grammar accepts (no patient restriction), in token-sequence order.
  const std::vector<Plan>& plans() const { return plans_; }
  const GrammarOptions& options() const { return options_; }
  /// The longest sequence, end token included.
  int max_length() const { return max_length_; }

  /// The token sequence of a plan, end token included. kInvalidArgument when the grammar does not
  /// accept the plan (unknown item, broken rule, horizon).
  Expected<std::vector<int>> Encode(const Plan& plan) const;
  /// The plan of a sequence (tokens after the first end token are ignored). kInvalidArgument for
  /// a token out of range.
  Expected<Plan> Decode(const std::vector<int>& tokens) const;

  /// Whether item index `i` (of items()) is forbidden, from a list of canonical names.
  std::vector<bool> ForbiddenMask(const std::vector<std::string>& forbidden) const;
  /// The tokens allowed after `prefix` (no end token inside it): those that keep at least one
  /// accepted plan without a forbidden item reachable, and the end token when the prefix itself is
  /// such a plan. Ascending. Empty when the prefix is a dead end (never reached by decoding).
  std::vector<int> Allowed(const std::vector<int>& prefix,
                           const std::vector<bool>& forbidden) const;
  /// Whether the grammar accepts `plan` for a patient with these forbidden items.
  bool Accepts(const Plan& plan, const std::vector<bool>& forbidden) const;

 private:
  PlanGrammar() = default;
  GrammarOptions options_;
  std::vector<std::string> items_;
  std::vector<Plan> plans_;
  std::vector<std::vector<int>> sequences_;  ///< per plan, without the end token
  int max_length_ = 1;
};

/// The model's next-token scores for a batch of prefixes: one row of vocab_size() unnormalised
/// logits per prefix. Non-finite values for allowed tokens are an error of the model.
using StepFunction =
    std::function<Expected<std::vector<std::vector<float>>>(const std::vector<std::vector<int>>&)>;

/// Beam decoding under the grammar: at every step the logits are restricted to the allowed
/// tokens and renormalised (log-softmax over those only), so every finished sequence is an
/// accepted plan without forbidden items. Returns the `k` most probable distinct plans found with a
/// beam of `beam_width` (>= k) prefixes, best first, with their log-probabilities. Fewer than k
/// when the patient has fewer plans. kInvalidArgument for k < 1 or beam_width < k, or when the
/// patient has no accepted plan; errors of `step` pass through; kCorruptData for a non-finite
/// allowed logit or a row of the wrong size.
Expected<std::vector<RankedPlan>> BeamDecode(const PlanGrammar& grammar,
                                             const std::vector<bool>& forbidden,
                                             const StepFunction& step, int k, int beam_width);

}  // namespace mewm::policy

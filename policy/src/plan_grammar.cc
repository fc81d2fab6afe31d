// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/policy/plan_grammar.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "mewm/tace/plan_space.h"

namespace mewm::policy {

std::vector<Contraindication> Contraindications(const Covariates& covariates,
                                                const ActionBase& actions) {
  std::vector<Contraindication> out;
  if (covariates.child_pugh == 'B' || covariates.child_pugh == 'C') {
    auto alcohol = actions.Find("Absolute Alcohol");
    if (alcohol) {
      out.push_back({alcohol->name, std::string("Child-Pugh ") + covariates.child_pugh +
                                        " liver (decompensation risk)"});
    }
  }
  return out;
}

Expected<PlanGrammar> PlanGrammar::Create(const ActionBase& actions,
                                          const GrammarOptions& options) {
  if (options.drug_horizon < 0 || options.embolic_horizon < 0) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "plan grammar: horizons must be >= 0 (drug " +
                         std::to_string(options.drug_horizon) + ", embolic " +
                         std::to_string(options.embolic_horizon) + ")");
  }
  if (!options.protocol.empty()) MEWM_RETURN_IF_ERROR(actions.MandatoryItems(options.protocol));
  PlanGrammar g;
  g.options_ = options;
  g.items_ = actions.Embolics();
  const std::vector<std::string> drugs = actions.Drugs();
  g.items_.insert(g.items_.end(), drugs.begin(), drugs.end());
  // The plan space is the planner's and the synthetic world's (core/plan_space.h); each plan
  // passes ActionBase::Validate.
  MEWM_TRY(const std::vector<Plan> all, EnumeratePlans(actions, options.drug_horizon,
                                                       options.embolic_horizon, options.protocol));
  for (const Plan& plan : all) {
    if (plan.empty() || !actions.Violations(plan, options.protocol).empty()) continue;
    std::vector<int> sequence;
    for (std::size_t i = 0; i < g.items_.size(); ++i) {
      if (plan.Contains(g.items_[i])) sequence.push_back(int(i) + 1);
    }
    g.max_length_ = std::max(g.max_length_, int(sequence.size()) + 1);
    g.plans_.push_back(plan);
    g.sequences_.push_back(std::move(sequence));
  }
  if (g.plans_.empty()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "plan grammar: no valid plan within " + std::to_string(options.drug_horizon) +
                         " drugs and " + std::to_string(options.embolic_horizon) + " embolics");
  }
  // Sequence order, so plans() reads like a dictionary of the sequences.
  std::vector<std::size_t> order(g.plans_.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](std::size_t a, std::size_t b) { return g.sequences_[a] < g.sequences_[b]; });
  std::vector<Plan> plans;
  std::vector<std::vector<int>> sequences;
  for (std::size_t i : order) {
    plans.push_back(g.plans_[i]);
    sequences.push_back(g.sequences_[i]);
  }
  g.plans_ = std::move(plans);
  g.sequences_ = std::move(sequences);
  return g;
}

Expected<std::vector<int>> PlanGrammar::Encode(const Plan& plan) const {
  for (std::size_t p = 0; p < plans_.size(); ++p) {
    if (plans_[p] == plan) {
      std::vector<int> out = sequences_[p];
      out.push_back(kEnd);
      return out;
    }
  }
  return MakeError(ErrorCode::kInvalidArgument,
                   "plan " + plan.ToString() + " is not accepted by the plan grammar");
}

Expected<Plan> PlanGrammar::Decode(const std::vector<int>& tokens) const {
  std::vector<std::string> names;
  for (int t : tokens) {
    if (t == kEnd) break;
    if (t < 0 || t >= vocab_size()) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "plan grammar: token " + std::to_string(t) + " is out of range");
    }
    names.push_back(items_[t - 1]);
  }
  return Plan(names);
}

std::vector<bool> PlanGrammar::ForbiddenMask(const std::vector<std::string>& forbidden) const {
  std::vector<bool> mask(items_.size(), false);
  for (std::size_t i = 0; i < items_.size(); ++i) {
    mask[i] = std::find(forbidden.begin(), forbidden.end(), items_[i]) != forbidden.end();
  }
  return mask;
}

namespace {
bool HasForbidden(const std::vector<int>& sequence, const std::vector<bool>& forbidden) {
  for (int t : sequence) {
    if (std::size_t(t - 1) < forbidden.size() && forbidden[t - 1]) return true;
  }
  return false;
}
}  // namespace

std::vector<int> PlanGrammar::Allowed(const std::vector<int>& prefix,
                                      const std::vector<bool>& forbidden) const {
  std::vector<bool> allowed(std::size_t(vocab_size()), false);
  for (const std::vector<int>& seq : sequences_) {
    if (seq.size() < prefix.size() || !std::equal(prefix.begin(), prefix.end(), seq.begin())) {
      continue;
    }
    if (HasForbidden(seq, forbidden)) continue;
    allowed[seq.size() == prefix.size() ? kEnd : seq[prefix.size()]] = true;
  }
  std::vector<int> out;
  for (int t = 0; t < vocab_size(); ++t) {
    if (allowed[std::size_t(t)]) out.push_back(t);
  }
  return out;
}

bool PlanGrammar::Accepts(const Plan& plan, const std::vector<bool>& forbidden) const {
  for (std::size_t p = 0; p < plans_.size(); ++p) {
    if (plans_[p] == plan) return !HasForbidden(sequences_[p], forbidden);
  }
  return false;
}

Expected<std::vector<RankedPlan>> BeamDecode(const PlanGrammar& grammar,
                                             const std::vector<bool>& forbidden,
                                             const StepFunction& step, int k, int beam_width) {
  if (k < 1 || beam_width < k) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "beam decoding needs k >= 1 and a beam of at least k (k " + std::to_string(k) +
                         ", beam " + std::to_string(beam_width) + ")");
  }
  struct Hypothesis {
    std::vector<int> tokens;
    double log_prob = 0.0;
  };
  std::vector<Hypothesis> live{{{}, 0.0}};
  std::vector<Hypothesis> finished;
  if (grammar.Allowed({}, forbidden).empty()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "the plan grammar accepts no plan for this patient (every plan holds a "
                     "contraindicated item)");
  }
  const auto by_score = [](const Hypothesis& a, const Hypothesis& b) {
    if (a.log_prob != b.log_prob) return a.log_prob > b.log_prob;
    return a.tokens < b.tokens;
  };
  while (!live.empty()) {
    std::vector<std::vector<int>> prefixes;
    for (const Hypothesis& h : live) prefixes.push_back(h.tokens);
    MEWM_TRY(const std::vector<std::vector<float>> logits, step(prefixes));
    if (logits.size() != live.size()) {
      return MakeError(ErrorCode::kCorruptData, "beam decoding: the model gave " +
                                                    std::to_string(logits.size()) + " rows for " +
                                                    std::to_string(live.size()) + " prefixes");
    }
    std::vector<Hypothesis> next;
    for (std::size_t h = 0; h < live.size(); ++h) {
      const std::vector<float>& row = logits[h];
      if (int(row.size()) != grammar.vocab_size()) {
        return MakeError(ErrorCode::kCorruptData,
                         "beam decoding: a logit row has " + std::to_string(row.size()) +
                             " entries, the grammar has " + std::to_string(grammar.vocab_size()) +
                             " tokens");
      }
      const std::vector<int> allowed = grammar.Allowed(live[h].tokens, forbidden);
      double max_logit = -std::numeric_limits<double>::infinity();
      for (int t : allowed) {
        if (!std::isfinite(row[std::size_t(t)])) {
          return MakeError(ErrorCode::kCorruptData,
                           "beam decoding: non-finite logit for an allowed token");
        }
        max_logit = std::max(max_logit, double(row[std::size_t(t)]));
      }
      double sum = 0.0;
      for (int t : allowed) sum += std::exp(double(row[std::size_t(t)]) - max_logit);
      const double log_norm = max_logit + std::log(sum);
      for (int t : allowed) {
        Hypothesis child = live[h];
        child.log_prob += double(row[std::size_t(t)]) - log_norm;
        child.tokens.push_back(t);
        next.push_back(std::move(child));
      }
    }
    std::sort(next.begin(), next.end(), by_score);
    live.clear();
    for (Hypothesis& h : next) {
      if (h.tokens.back() == PlanGrammar::kEnd) {
        finished.push_back(std::move(h));
      } else if (int(live.size()) < beam_width) {
        live.push_back(std::move(h));
      }
    }
    // Stop early once k plans are finished that no live prefix can beat (log-probs only fall).
    std::sort(finished.begin(), finished.end(), by_score);
    if (int(finished.size()) >= k &&
        (live.empty() || live.front().log_prob <= finished[std::size_t(k - 1)].log_prob)) {
      break;
    }
  }
  std::vector<RankedPlan> out;
  for (const Hypothesis& h : finished) {
    if (int(out.size()) == k) break;
    MEWM_TRY(Plan plan, grammar.Decode(h.tokens));
    out.push_back({std::move(plan), h.log_prob});
  }
  return out;
}

}  // namespace mewm::policy

// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// `mewm eval policy`: plan-writing policies alone (no search) against a synthetic cohort's truth,
// next to the guideline's first choice, the majority plan and a random valid plan. The policies
// see each patient as a planning run does (LoadPatient: images, note, covariates); only this
// evaluator reads truth/truth.json, after the policies have answered.
//   input:  named PolicyModels, a synthetic cohort folder
//   output: per method F1 / Jaccard / top-1 / regret (MethodScores, as `mewm eval plans`);
//           recall of the true optimum within the top 1, 5 and 10 proposals; invalid plans;
//           the stated findings against the measured ones; latency per patient
#pragma once

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "mewm/core/expected.h"
#include "mewm/eval/evaluation.h"
#include "mewm/policy/plan_grammar.h"
#include "mewm/policy/policy_model.h"
#include "mewm/tace/action_base.h"

namespace mewm::scenarios {

/// How well stated findings match the measured ones.
struct FindingsScores {
  int patients = 0;
  double lesion_count_accuracy = 0.0;
  double diameter_mae_mm = 0.0;
  double enhancing_mae_hu = 0.0;
  double necrotic_mae = 0.0;  ///< absolute error of the fraction (0..1)
  double child_pugh_accuracy = 0.0;
};

/// One plan-writing policy's results.
struct PolicyScores {
  MethodScores first;  ///< its first plan alone
  /// Share of patients whose true optimum is among the first 1, 5 and 10 proposed plans.
  double recall_at_1 = 0.0, recall_at_5 = 0.0, recall_at_10 = 0.0;
  double mean_plans = 0.0;  ///< plans proposed per patient
  int plans_checked = 0;
  int invalid_plans = 0;  ///< plans that break a rule, a horizon or a contraindication
  FindingsScores findings;
  double seconds_per_patient = 0.0;  ///< mean Propose wall time
};

struct PolicyEvaluation {
  std::string cohort_dir;
  int patients = 0;
  std::vector<std::string> policy_names;
  std::vector<PolicyScores> policies;
  /// Baselines on the same patients: random valid plan (exact expectation), majority optimum
  /// (leave-one-out), guideline first choice.
  std::vector<MethodScores> baselines;
  /// The guideline's ordering of every accepted plan (GuidelinePlanOrder): recall at 1, 5, 10.
  double guideline_recall_at_1 = 0.0, guideline_recall_at_5 = 0.0, guideline_recall_at_10 = 0.0;

  std::string FormatTable() const;
  std::string ToJson() const;
};

/// The guideline's ranking of the plans the grammar accepts for a patient: its first choice
/// (FirstChoicePlan) first, then the other plans by the sum of their items' positions in the
/// proposal's lists (items it does not propose rank after all it does), ties by plan text.
std::vector<Plan> GuidelinePlanOrder(const policy::Proposal& proposal, const Plan& first_choice,
                                     const policy::PlanGrammar& grammar,
                                     const std::vector<bool>& forbidden, const ActionBase& actions);

struct PolicyEvalOptions {
  std::string cohort_dir;
  int max_patients = 0;  ///< 0 = all
  policy::GrammarOptions grammar;
  bool contraindications = true;  ///< count plans with a contraindicated item as invalid
  std::function<void(int, int)> progress;
};

/// Evaluates each policy on every patient of the cohort. kNotFound for a cohort without truth;
/// errors of loading a patient or of a policy name the patient.
Expected<PolicyEvaluation> EvaluatePolicies(
    const std::vector<std::pair<std::string, policy::PolicyModel*>>& policies,
    const ActionBase& actions, const PolicyEvalOptions& options);

}  // namespace mewm::scenarios

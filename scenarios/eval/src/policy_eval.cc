// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/eval/policy_eval.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "method_scores.h"
#include "mewm/core/file_util.h"
#include "mewm/core/stats.h"
#include "mewm/policy/guideline.h"
#include "mewm/policy/vlm.h"
#include "mewm/run/cohort_source.h"

namespace mewm::scenarios {
using nlohmann::json;

std::vector<Plan> GuidelinePlanOrder(const policy::Proposal& proposal, const Plan& first_choice,
                                     const policy::PlanGrammar& grammar,
                                     const std::vector<bool>& forbidden,
                                     const ActionBase& actions) {
  const auto rank = [&](const std::string& item) -> double {
    for (const auto* list : {&proposal.drugs, &proposal.embolics}) {
      const auto it = std::find(list->begin(), list->end(), item);
      if (it != list->end()) return double(it - list->begin());
    }
    return double(actions.items().size()) + 10.0;
  };
  std::vector<std::pair<double, Plan>> scored;
  for (const Plan& p : grammar.plans()) {
    if (!grammar.Accepts(p, forbidden)) continue;
    double s = 0.0;
    for (const std::string& item : p.items()) s += rank(item);
    scored.emplace_back(p == first_choice ? -1.0 : s, p);
  }
  std::sort(scored.begin(), scored.end(), [](const auto& a, const auto& b) {
    if (a.first != b.first) return a.first < b.first;
    return a.second.ToString() < b.second.ToString();
  });
  std::vector<Plan> out;
  for (auto& [s, p] : scored) out.push_back(std::move(p));
  return out;
}

namespace {

/// One policy's answer for one patient: its ranked plans, stated findings and time taken.
struct PolicyAnswer {
  std::vector<policy::RankedPlan> plans;
  std::optional<policy::StatedFindings> findings;
  double seconds = 0.0;
};

/// What was gathered for one patient before the truth is read.
struct PatientRow {
  std::string id;
  std::vector<PolicyAnswer> answers;  ///< per policy
  Plan guideline_first;
  std::vector<Plan> guideline_order;
  std::vector<bool> forbidden;
  policy::StatedFindings measured;
};

/// One patient's truth: the optimal plan and every valid plan's risk.
/// Asks every policy and the guideline about one patient, seeing only what a planning run sees,
/// and measures the findings the policies' stated findings are scored against.
Expected<PatientRow> AnswerPatient(
    const CohortEntry& entry,
    const std::vector<std::pair<std::string, policy::PolicyModel*>>& policies,
    policy::GuidelinePolicy& guideline, const policy::PlanGrammar& grammar,
    const ActionBase& actions, const PolicyEvalOptions& options) {
  MEWM_TRY(const PatientCase patient, LoadPatient(entry));
  PatientRow row;
  row.id = patient.id;
  std::vector<std::string> forbidden_names;
  if (options.contraindications) {
    for (const auto& c : policy::Contraindications(patient.covariates, actions)) {
      forbidden_names.push_back(c.item);
    }
  }
  row.forbidden = grammar.ForbiddenMask(forbidden_names);
  for (const auto& [name, model] : policies) {
    const auto t0 = std::chrono::steady_clock::now();
    auto proposal = model->Propose(patient);
    PolicyAnswer a;
    a.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!proposal) {
      return MakeError(proposal.error().code, "policy '" + name + "', patient '" + patient.id +
                                                  "': " + proposal.error().message);
    }
    if (proposal->plans.empty()) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "policy '" + name +
                           "' writes no whole plans (eval policy scores "
                           "plan-writing policies such as vlm)");
    }
    a.plans = proposal->plans;
    a.findings = proposal->findings;
    row.answers.push_back(std::move(a));
  }
  MEWM_TRY(const policy::Proposal g, guideline.Propose(patient));
  MEWM_TRY(row.guideline_first,
           policy::FirstChoicePlan(g, actions, options.grammar.drug_horizon,
                                   options.grammar.embolic_horizon, options.grammar.protocol));
  row.guideline_order = GuidelinePlanOrder(g, row.guideline_first, grammar, row.forbidden, actions);
  MEWM_TRY(row.measured, policy::MeasureFindings(patient));
  return row;
}

/// Reads the cohort's truth file for the patients of `rows`, in their order.
Expected<std::vector<TrueRisks>> ReadTruths(const std::string& cohort_dir,
                                            const std::vector<PatientRow>& rows) {
  MEWM_TRY(const std::string truth_path, SyntheticTruthPath(cohort_dir));
  MEWM_TRY(const std::string truth_text, ReadFile(truth_path));
  std::vector<TrueRisks> truths;
  try {
    const json truth = json::parse(truth_text);
    for (const PatientRow& r : rows) {
      truths.push_back(TrueRisksOf(truth.at("patients").at(r.id)));
    }
  } catch (const std::exception& e) {
    return MakeError(ErrorCode::kCorruptData, "'" + truth_path + "': " + e.what());
  }
  return truths;
}

/// The true risk of plan `p` for a patient, or an error naming `who` when it is not a valid plan.
Expected<double> RiskOf(const TrueRisks& t, const Plan& p, const std::string& who,
                        const std::string& id) {
  const auto it = t.risks.find(p.ToString());
  if (it == t.risks.end()) {
    return MakeError(ErrorCode::kInvalidArgument, who + ", patient '" + id + "': plan " +
                                                      p.ToString() +
                                                      " is not a valid plan of the cohort");
  }
  return it->second;
}

/// 1 when `optimal` is among the first `k` plans of `order`, else 0.
double Recall(const std::vector<Plan>& order, const Plan& optimal, std::size_t k) {
  const std::size_t m = std::min(k, order.size());
  return std::find(order.begin(), order.begin() + long(m), optimal) != order.begin() + long(m)
             ? 1.0
             : 0.0;
}

/// Scores policy `p` over all patients: its first plan, recall, validity, time and findings.
Expected<PolicyScores> ScorePolicy(std::size_t p, const std::string& name,
                                   const std::vector<PatientRow>& rows,
                                   const std::vector<TrueRisks>& truths,
                                   const policy::PlanGrammar& grammar, const ActionBase& actions,
                                   const PolicyEvalOptions& options, int n) {
  PolicyScores ps;
  Accumulator first("");
  first.s.method = name + " first plan";
  FindingsScores& f = ps.findings;
  for (std::size_t r = 0; r < rows.size(); ++r) {
    const PolicyAnswer& a = rows[r].answers[p];
    const TrueRisks& t = truths[r];
    const double opt = t.risks.at(t.optimal.ToString());
    std::vector<Plan> order;
    for (const policy::RankedPlan& rp : a.plans) {
      order.push_back(rp.plan);
      ++ps.plans_checked;
      const bool valid = grammar.Accepts(rp.plan, rows[r].forbidden) &&
                         actions.Violations(rp.plan, options.grammar.protocol).empty();
      if (!valid) ++ps.invalid_plans;
    }
    MEWM_TRY(const double risk, RiskOf(t, order.front(), name, rows[r].id));
    first.Add(ComparePlanItems(order.front(), t.optimal), risk - opt, risk / opt);
    first.regrets.push_back(risk - opt);
    ps.recall_at_1 += Recall(order, t.optimal, 1) / n;
    ps.recall_at_5 += Recall(order, t.optimal, 5) / n;
    ps.recall_at_10 += Recall(order, t.optimal, 10) / n;
    ps.mean_plans += double(order.size()) / n;
    ps.seconds_per_patient += a.seconds / n;
    if (a.findings) {
      const policy::StatedFindings& s = *a.findings;
      const policy::StatedFindings& m = rows[r].measured;
      ++f.patients;
      f.lesion_count_accuracy += s.lesion_count == m.lesion_count ? 1.0 : 0.0;
      f.diameter_mae_mm += std::abs(s.max_diameter_mm - m.max_diameter_mm);
      f.enhancing_mae_hu += std::abs(s.enhancing_hu - m.enhancing_hu);
      f.necrotic_mae += std::abs(s.necrotic_fraction - m.necrotic_fraction);
      f.child_pugh_accuracy += s.child_pugh == m.child_pugh ? 1.0 : 0.0;
    }
  }
  if (f.patients > 0) {
    for (double* v : {&f.lesion_count_accuracy, &f.diameter_mae_mm, &f.enhancing_mae_hu,
                      &f.necrotic_mae, &f.child_pugh_accuracy}) {
      *v /= f.patients;
    }
  }
  ps.first = first.Finish(n);
  return ps;
}

/// Scores the baselines into `eval`: the guideline's first choice (and its recall), the majority
/// optimal plan of the other patients (from 3 patients on), and a random valid plan.
Status ScoreBaselines(const std::vector<PatientRow>& rows, const std::vector<TrueRisks>& truths,
                      int n, PolicyEvaluation& eval) {
  std::map<std::string, int> optimal_counts;
  for (const TrueRisks& t : truths) ++optimal_counts[t.optimal.ToString()];
  Accumulator random(""), majority(""), guideline_first("");
  random.s.method = "random valid plan";
  majority.s.method = "majority plan";
  guideline_first.s.method = "guideline first choice";
  const bool majority_available = n >= 3;
  for (std::size_t r = 0; r < rows.size(); ++r) {
    const TrueRisks& t = truths[r];
    const double opt = t.risks.at(t.optimal.ToString());
    MEWM_TRY(const double g_risk, RiskOf(t, rows[r].guideline_first, "guideline", rows[r].id));
    guideline_first.Add(ComparePlanItems(rows[r].guideline_first, t.optimal), g_risk - opt,
                        g_risk / opt);
    guideline_first.regrets.push_back(g_risk - opt);
    eval.guideline_recall_at_1 += Recall(rows[r].guideline_order, t.optimal, 1) / n;
    eval.guideline_recall_at_5 += Recall(rows[r].guideline_order, t.optimal, 5) / n;
    eval.guideline_recall_at_10 += Recall(rows[r].guideline_order, t.optimal, 10) / n;
    if (majority_available) {
      std::string best;
      int best_count = 0;
      for (const auto& [plan, count] : optimal_counts) {
        const int c = count - (plan == t.optimal.ToString() ? 1 : 0);
        if (c > best_count) best = plan, best_count = c;
      }
      MEWM_TRY(const double m_risk, RiskOf(t, PlanOf(best), "majority", rows[r].id));
      majority.Add(ComparePlanItems(PlanOf(best), t.optimal), m_risk - opt, m_risk / opt);
      majority.regrets.push_back(m_risk - opt);
    }
    const double w = 1.0 / double(t.risks.size());
    double mean_regret = 0.0;
    for (const auto& [plan, risk] : t.risks) {
      random.Add(ComparePlanItems(PlanOf(plan), t.optimal), risk - opt, risk / opt, w);
      mean_regret += w * (risk - opt);
    }
    random.regrets.push_back(mean_regret);
  }
  eval.baselines = {guideline_first.Finish(n), majority.Finish(majority_available ? n : 0),
                    random.Finish(n)};
  eval.baselines[1].available = majority_available;
  return {};
}

}  // namespace

Expected<PolicyEvaluation> EvaluatePolicies(
    const std::vector<std::pair<std::string, policy::PolicyModel*>>& policies,
    const ActionBase& actions, const PolicyEvalOptions& options) {
  MEWM_TRY(const std::vector<CohortEntry> all, ReadSyntheticCohort(options.cohort_dir));
  MEWM_TRY(const policy::PlanGrammar grammar,
           policy::PlanGrammar::Create(actions, options.grammar));
  MEWM_TRY(auto guideline, policy::GuidelinePolicy::Create(actions));
  std::vector<CohortEntry> entries = all;
  if (options.max_patients > 0 && int(entries.size()) > options.max_patients) {
    entries.resize(std::size_t(options.max_patients));
  }

  // 1. The policies answer, seeing only what a planning run sees.
  std::vector<PatientRow> rows;
  for (std::size_t i = 0; i < entries.size(); ++i) {
    MEWM_TRY(PatientRow row,
             AnswerPatient(entries[i], policies, *guideline, grammar, actions, options));
    rows.push_back(std::move(row));
    if (options.progress) options.progress(int(i) + 1, int(entries.size()));
  }
  if (rows.empty()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "cohort '" + options.cohort_dir + "' has no patient");
  }

  // 2. Only now the truth.
  MEWM_TRY(const std::vector<TrueRisks> truths, ReadTruths(options.cohort_dir, rows));

  PolicyEvaluation eval;
  eval.cohort_dir = options.cohort_dir;
  eval.patients = int(rows.size());
  const int n = eval.patients;
  for (std::size_t p = 0; p < policies.size(); ++p) {
    MEWM_TRY(const PolicyScores ps,
             ScorePolicy(p, policies[p].first, rows, truths, grammar, actions, options, n));
    eval.policy_names.push_back(policies[p].first);
    eval.policies.push_back(ps);
  }
  MEWM_RETURN_IF_ERROR(ScoreBaselines(rows, truths, n, eval));
  return eval;
}

std::string PolicyEvaluation::FormatTable() const {
  std::ostringstream out;
  out << "policies alone (first plan, no search) on " << patients << " patients of " << cohort_dir
      << "\n";
  char line[320];
  std::snprintf(line, sizeof(line), "%-28s %6s %6s %6s %9s %9s %7s\n", "method", "F1", "Jacc",
                "Top1", "regret", "reg.med", "HR/opt");
  out << line;
  const auto row = [&](const MethodScores& m) {
    if (!m.available) {
      std::snprintf(line, sizeof(line), "%-28s %6s\n", m.method.c_str(), "n/a");
    } else {
      std::snprintf(line, sizeof(line), "%-28s %6.3f %6.3f %6.3f %9.4f %9.4f %7.3f\n",
                    m.method.c_str(), m.f1, m.jaccard, m.top1, m.regret, m.regret_median,
                    m.risk_ratio);
    }
    out << line;
  };
  for (const PolicyScores& p : policies) row(p.first);
  for (const MethodScores& m : baselines) row(m);
  out << "\nrecall of the true optimum within the top 1 / 5 / 10 proposals\n";
  for (std::size_t i = 0; i < policies.size(); ++i) {
    const PolicyScores& p = policies[i];
    std::snprintf(line, sizeof(line), "%-28s %6.3f %6.3f %6.3f  (%.1f plans/patient)\n",
                  policy_names[i].c_str(), p.recall_at_1, p.recall_at_5, p.recall_at_10,
                  p.mean_plans);
    out << line;
  }
  std::snprintf(line, sizeof(line), "%-28s %6.3f %6.3f %6.3f\n", "guideline ordering",
                guideline_recall_at_1, guideline_recall_at_5, guideline_recall_at_10);
  out << line;
  out << "\nvalidity, findings and cost\n";
  for (std::size_t i = 0; i < policies.size(); ++i) {
    const PolicyScores& p = policies[i];
    const FindingsScores& f = p.findings;
    std::snprintf(line, sizeof(line),
                  "%-28s invalid %d/%d; lesions %.3f, diameter MAE %.1f mm, enhancement MAE "
                  "%.1f HU, necrosis MAE %.3f, Child-Pugh %.3f; %.3f s/patient\n",
                  policy_names[i].c_str(), p.invalid_plans, p.plans_checked,
                  f.lesion_count_accuracy, f.diameter_mae_mm, f.enhancing_mae_hu, f.necrotic_mae,
                  f.child_pugh_accuracy, p.seconds_per_patient);
    out << line;
  }
  return out.str();
}

std::string PolicyEvaluation::ToJson() const {
  json ps = json::array();
  for (std::size_t i = 0; i < policies.size(); ++i) {
    const PolicyScores& p = policies[i];
    const FindingsScores& f = p.findings;
    ps.push_back({{"name", policy_names[i]},
                  {"first_plan", MethodJson(p.first)},
                  {"recall_at_1", p.recall_at_1},
                  {"recall_at_5", p.recall_at_5},
                  {"recall_at_10", p.recall_at_10},
                  {"mean_plans", p.mean_plans},
                  {"plans_checked", p.plans_checked},
                  {"invalid_plans", p.invalid_plans},
                  {"findings",
                   {{"patients", f.patients},
                    {"lesion_count_accuracy", f.lesion_count_accuracy},
                    {"diameter_mae_mm", f.diameter_mae_mm},
                    {"enhancing_mae_hu", f.enhancing_mae_hu},
                    {"necrotic_mae", f.necrotic_mae},
                    {"child_pugh_accuracy", f.child_pugh_accuracy}}},
                  {"seconds_per_patient", p.seconds_per_patient}});
  }
  json bs = json::array();
  for (const MethodScores& m : baselines) bs.push_back(MethodJson(m));
  return json{{"cohort_dir", cohort_dir},
              {"patients", patients},
              {"policies", ps},
              {"baselines", bs},
              {"guideline_ordering",
               {{"recall_at_1", guideline_recall_at_1},
                {"recall_at_5", guideline_recall_at_5},
                {"recall_at_10", guideline_recall_at_10}}}}
      .dump(1);
}

}  // namespace mewm::scenarios

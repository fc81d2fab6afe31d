// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/eval/evaluation.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "method_scores.h"
#include "mewm/core/file_util.h"
#include "mewm/core/plot.h"
#include "mewm/core/seed.h"
#include "mewm/core/stats.h"
#include "mewm/planner/planner.h"
#include "mewm/run/cohort_source.h"
#include "mewm/survival/metrics.h"

namespace mewm::scenarios {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

/// A run's summary.json or a cohort's truth.json: files inside folders, never a FIFO (a
/// summary.json that was one blocked `eval plans` for ever). A 1000-patient truth is about 50 MB.
Expected<json> ReadJson(const std::string& path) {
  constexpr std::uint64_t kMaxBytes = std::uint64_t(1) << 30;
  MEWM_TRY(const std::string text, ReadRegularFile(path, kMaxBytes));
  try {
    return json::parse(text);
  } catch (const std::exception& e) {
    return MakeError(ErrorCode::kCorruptData, "'" + path + "': " + e.what());
  }
}

/// F1 of two item sets (1 when both are empty), with the precision, recall and Jaccard index.
PlanMatch CompareItemSets(const std::set<std::string>& a, const std::set<std::string>& b) {
  PlanMatch m;
  std::size_t common = 0;
  for (const std::string& item : a) common += b.count(item);
  const std::size_t uni = a.size() + b.size() - common;
  m.exact = a == b;
  if (a.empty() && b.empty()) {
    m.precision = m.recall = m.f1 = m.jaccard = 1.0;
    return m;
  }
  m.precision = a.empty() ? 0.0 : double(common) / double(a.size());
  m.recall = b.empty() ? 0.0 : double(common) / double(b.size());
  m.f1 = m.precision + m.recall > 0 ? 2 * m.precision * m.recall / (m.precision + m.recall) : 0.0;
  m.jaccard = uni > 0 ? double(common) / double(uni) : 1.0;
  return m;
}

}  // namespace

PlanMatch ComparePlanItems(const Plan& chosen, const Plan& optimal) {
  const std::set<std::string> a(chosen.items().begin(), chosen.items().end());
  const std::set<std::string> b(optimal.items().begin(), optimal.items().end());
  PlanMatch m = CompareItemSets(a, b);
  static const std::set<std::string> drugs = [] {
    const std::vector<std::string> list = ActionBase::Default().Drugs();
    return std::set<std::string>(list.begin(), list.end());
  }();
  // The items of `items` that are drugs (or, with `drug` false, that are not).
  const auto of_kind = [](const std::set<std::string>& items, bool drug) {
    std::set<std::string> kind;
    for (const std::string& item : items) {
      if ((drugs.count(item) > 0) == drug) kind.insert(item);
    }
    return kind;
  };
  m.drug_f1 = CompareItemSets(of_kind(a, true), of_kind(b, true)).f1;
  m.embolic_f1 = CompareItemSets(of_kind(a, false), of_kind(b, false)).f1;
  return m;
}

namespace {

/// A finished patient of a run, beside its truth: the chosen plan, the guideline's first choice,
/// the optimal plan and the true risk of every valid plan.
struct PlanRow {
  std::string id;
  Plan chosen, first_choice;
  TrueRisks truth;
  /// The largest lesion's, from the truth's covariates; NaN when the truth has none (only
  /// ComparePlanRuns' size bands read it).
  double max_diameter_mm = std::nan("");
};

/// A run's finished patients and the counters of its summary (the methods are left empty).
struct RunRows {
  PlanEvaluation header;
  std::vector<PlanRow> rows;
  /// The policy wrote whole plans (`proposal.plans`: vlm, openai): its first choice is its most
  /// probable plan, not the guideline's.
  bool plan_policy = false;
};

/// Reads a run's summary.json and its synthetic cohort's truth. kNotFound for a manifest cohort.
Expected<RunRows> ReadRunRows(const std::string& run_dir) {
  MEWM_TRY(const json summary, ReadJson((fs::path(run_dir) / "summary.json").string()));
  RunRows run;
  PlanEvaluation& eval = run.header;
  eval.run_dir = run_dir;
  try {
    if (summary.at("run").at("cohort_source").get<std::string>() != "synthetic") {
      return MakeError(
          ErrorCode::kNotFound,
          "run '" + run_dir + "' planned a manifest cohort, which has no ground truth");
    }
    eval.cohort_dir = summary.at("run").at("cohort").get<std::string>();
  } catch (const std::exception& e) {
    return MakeError(ErrorCode::kCorruptData, "'" + run_dir + "/summary.json': " + e.what());
  }
  MEWM_TRY(const std::string truth_path, SyntheticTruthPath(eval.cohort_dir));
  MEWM_TRY(const json truth, ReadJson(truth_path));
  // Runs since the seed was recorded name their cohort's seed: a cohort generated again in the
  // same folder with another seed has patients of the same ids and other truths.
  const json planned_seed = summary.at("run").value("cohort_seed", json());
  if (!planned_seed.is_null()) {
    const json truth_seed = truth.contains("generation") && truth["generation"].is_object()
                                ? truth["generation"].value("seed", json())
                                : json();
    if (truth_seed != planned_seed) {
      return MakeError(ErrorCode::kMismatch,
                       "run '" + run_dir + "' planned the cohort of seed " + planned_seed.dump() +
                           ", but '" + truth_path + "' is the truth of seed " + truth_seed.dump() +
                           ": the cohort was generated again since; regenerate it with seed " +
                           planned_seed.dump() + " (mewm cohort generate --seed) to evaluate");
    }
  }
  std::set<std::string> seen;
  try {
    for (const json& p : summary.at("patients")) {
      const std::string id = p.at("patient_id").get<std::string>();
      // Counted twice, a patient would also see its own optimum in the leave-one-out majority.
      if (!seen.insert(id).second) {
        return MakeError(ErrorCode::kCorruptData, "run '" + run_dir + "': patient '" + id +
                                                      "' is listed twice in summary.json");
      }
      if (p.at("status").get<std::string>() != "finished") {
        ++eval.failed;
        continue;
      }
      PlanRow row;
      row.id = id;
      row.chosen = PlanOf(p.at("plan").get<std::string>());
      const json& proposal = p.at("proposal");
      row.first_choice = PlanOf(proposal.value("first_choice", ""));
      const auto plans = proposal.find("plans");
      if (plans != proposal.end() && plans->is_array() && !plans->empty()) run.plan_policy = true;
      const json& patient_truth = truth.at("patients").at(row.id);
      row.truth = TrueRisksOf(patient_truth);
      const auto covariates = patient_truth.find("covariates");
      if (covariates != patient_truth.end() && covariates->contains("max_diameter_mm")) {
        row.max_diameter_mm = covariates->at("max_diameter_mm").get<double>();
      }
      if (p.contains("counters"))
        eval.simulations_per_patient += p["counters"].value("simulations", 0.0);
      run.rows.push_back(std::move(row));
    }
  } catch (const std::exception& e) {
    return MakeError(
        ErrorCode::kCorruptData,
        "run '" + run_dir + "' does not match cohort truth '" + eval.cohort_dir + "': " + e.what());
  }
  if (run.rows.empty()) {
    return MakeError(ErrorCode::kInvalidArgument, "run '" + run_dir + "' has no finished patient");
  }
  eval.patients = int(run.rows.size());
  eval.simulations_per_patient /= double(run.rows.size());
  return run;
}

/// Scores `plan` for a patient into `acc`: item agreement with the optimum and the regret.
/// kInvalidArgument when the plan is not one of the cohort's valid plans.
Status ScorePlan(Accumulator& acc, const PlanRow& r, const Plan& plan) {
  const double opt = r.truth.risks.at(r.truth.optimal.ToString());
  auto it = r.truth.risks.find(plan.ToString());
  if (it == r.truth.risks.end()) {
    return MakeError(
        ErrorCode::kInvalidArgument,
        "patient '" + r.id + "': plan " + plan.ToString() + " is not a valid plan of the cohort");
  }
  acc.Add(ComparePlanItems(plan, r.truth.optimal), it->second - opt, it->second / opt);
  acc.regrets.push_back(it->second - opt);
  return {};
}

}  // namespace

Expected<PlanEvaluation> EvaluatePlans(const std::string& run_dir) {
  MEWM_TRY(RunRows run, ReadRunRows(run_dir));
  PlanEvaluation eval = std::move(run.header);
  const std::vector<PlanRow>& rows = run.rows;

  std::map<std::string, int> optimal_counts;
  for (const PlanRow& r : rows) ++optimal_counts[r.truth.optimal.ToString()];

  Accumulator pipeline("pipeline"), random("random valid plan"), majority("majority plan"),
      guideline(run.plan_policy ? "policy first plan" : "guideline first choice");
  // The leave-one-out majority needs at least 2 other patients: with 1 it is that patient's
  // optimum, with 0 the patient's own (the truth itself).
  const bool majority_available = rows.size() >= 3;
  for (const PlanRow& r : rows) {
    MEWM_RETURN_IF_ERROR(ScorePlan(pipeline, r, r.chosen));
    if (!r.first_choice.empty()) MEWM_RETURN_IF_ERROR(ScorePlan(guideline, r, r.first_choice));
    // Majority: the most frequent optimum among the *other* patients (ties by name).
    std::string best;
    int best_count = 0;
    for (const auto& [plan, count] : optimal_counts) {
      const int c = count - (plan == r.truth.optimal.ToString() ? 1 : 0);
      if (c > best_count) best = plan, best_count = c;
    }
    if (majority_available) MEWM_RETURN_IF_ERROR(ScorePlan(majority, r, PlanOf(best)));
    // Random: the exact expectation over every valid plan.
    const double opt = r.truth.risks.at(r.truth.optimal.ToString());
    const double w = 1.0 / double(r.truth.risks.size());
    double mean_regret = 0.0;
    for (const auto& [plan, risk] : r.truth.risks) {
      random.Add(ComparePlanItems(PlanOf(plan), r.truth.optimal), risk - opt, risk / opt, w);
      mean_regret += w * (risk - opt);
    }
    random.regrets.push_back(mean_regret);
  }
  eval.methods = {pipeline.Finish(eval.patients), random.Finish(eval.patients),
                  majority.Finish(majority_available ? eval.patients : 0),
                  guideline.Finish(int(guideline.regrets.size()))};
  eval.methods[2].available = majority_available;
  return eval;
}

namespace {

/// PlanRunComparison::by_size's bands: each holds the diameters below its upper edge (mm) and
/// at or above the previous band's.
struct SizeBandEdge {
  const char* name;
  double below_mm;
};
constexpr std::array<SizeBandEdge, 3> kSizeBands = {
    {{"under 50 mm", 50.0}, {"50 to 75 mm", 75.0}, {"75 mm and over", HUGE_VAL}}};

/// The index in kSizeBands of the band holding `diameter_mm`.
std::size_t SizeBandOf(double diameter_mm) {
  std::size_t k = 0;
  while (k + 1 < kSizeBands.size() && !(diameter_mm < kSizeBands[k].below_mm)) ++k;
  return k;
}

/// The methods' columns, one row per method, under a header line.
std::string MethodTable(const std::vector<MethodScores>& methods) {
  std::ostringstream out;
  char line[256];
  std::snprintf(line, sizeof(line), "%-24s %6s %6s %6s %6s %6s %6s %6s %9s %9s %7s\n", "method",
                "F1", "Jacc", "Prec", "Rec", "Top1", "F1drug", "F1emb", "regret", "reg.med",
                "HR/opt");
  out << line;
  for (const MethodScores& m : methods) {
    if (!m.available) {
      std::snprintf(line, sizeof(line), "%-24s %6s %6s %6s %6s %6s %6s %6s %9s %9s %7s\n",
                    m.method.c_str(), "n/a", "n/a", "n/a", "n/a", "n/a", "n/a", "n/a", "n/a", "n/a",
                    "n/a");
      out << line;
      continue;
    }
    std::snprintf(line, sizeof(line),
                  "%-24s %6.3f %6.3f %6.3f %6.3f %6.3f %6.3f %6.3f %9.4f %9.4f %7.3f\n",
                  m.method.c_str(), m.f1, m.jaccard, m.precision, m.recall, m.top1, m.drug_f1,
                  m.embolic_f1, m.regret, m.regret_median, m.risk_ratio);
    out << line;
  }
  return out.str();
}

}  // namespace

std::string PlanEvaluation::FormatTable() const {
  std::ostringstream out;
  out << "plan selection on " << patients << " patients (" << failed << " failed) of " << cohort_dir
      << "\n";
  char line[256];
  std::snprintf(line, sizeof(line), "search: %.1f outcome simulations per patient\n",
                simulations_per_patient);
  out << line << MethodTable(methods);
  return out.str();
}

std::string PlanEvaluation::ToJson() const {
  json methods_json = json::array();
  for (const MethodScores& m : methods) methods_json.push_back(MethodJson(m));
  return json{{"run_dir", run_dir},
              {"cohort_dir", cohort_dir},
              {"patients", patients},
              {"failed", failed},
              {"simulations_per_patient", simulations_per_patient},
              {"methods", methods_json}}
      .dump(1);
}

Expected<PlanRunComparison> ComparePlanRuns(const std::string& run_a, const std::string& run_b) {
  return ComparePlanRuns(std::vector<std::pair<std::string, std::string>>{{run_a, run_b}});
}

Expected<PlanRunComparison> ComparePlanRuns(
    const std::vector<std::pair<std::string, std::string>>& runs) {
  if (runs.empty()) return MakeError(ErrorCode::kInvalidArgument, "no runs to compare");
  PlanRunComparison c;
  Accumulator acc_a("run A"), acc_b("run B");
  std::vector<double> regret_diff, f1_diff, drug_f1_diff, embolic_f1_diff;
  std::vector<PlanRunComparison::Decisive> paired;
  std::array<PlanRunComparison::SizeBand, kSizeBands.size()> bands;  // sums until the end
  // Every patient compared, by id and truth: one met again is a cohort pooled twice.
  std::set<std::pair<std::string, std::map<std::string, double>>> seen;
  for (const auto& [run_a, run_b] : runs) {
    MEWM_TRY(const RunRows a, ReadRunRows(run_a));
    MEWM_TRY(const RunRows b, ReadRunRows(run_b));
    std::map<std::string, const PlanRow*> b_rows;
    for (const PlanRow& r : b.rows) b_rows[r.id] = &r;
    c.runs_a.push_back(run_a);
    c.runs_b.push_back(run_b);
    c.cohort_dirs.push_back(a.header.cohort_dir);
    const std::string prefix =
        runs.size() > 1 ? std::to_string(c.runs_a.size()) + ":" : "";  // the pair's number
    int common = 0;
    for (const PlanRow& ra : a.rows) {
      const auto it = b_rows.find(ra.id);
      if (it == b_rows.end()) {
        ++c.only_a;
        continue;
      }
      const PlanRow& rb = *it->second;
      if (ra.truth.optimal.ToString() != rb.truth.optimal.ToString() ||
          ra.truth.risks != rb.truth.risks) {
        return MakeError(ErrorCode::kInvalidArgument,
                         "runs '" + run_a + "' and '" + run_b +
                             "' planned different cohorts: patient '" + ra.id +
                             "' has other true plan risks in '" + a.header.cohort_dir + "' and '" +
                             b.header.cohort_dir + "'");
      }
      if (!seen.emplace(ra.id, ra.truth.risks).second) {
        return MakeError(ErrorCode::kInvalidArgument,
                         "patient '" + ra.id + "' of '" + a.header.cohort_dir +
                             "' is in two pairs of runs (one cohort pooled twice?): each "
                             "patient may count once");
      }
      if (!std::isfinite(ra.max_diameter_mm)) {
        return MakeError(ErrorCode::kCorruptData,
                         "patient '" + ra.id + "' of '" + a.header.cohort_dir +
                             "' has no covariates.max_diameter_mm in its truth, which the "
                             "comparison's size bands need");
      }
      ++common;
      MEWM_RETURN_IF_ERROR(ScorePlan(acc_a, ra, ra.chosen));
      MEWM_RETURN_IF_ERROR(ScorePlan(acc_b, rb, rb.chosen));
      const double d = acc_a.regrets.back() - acc_b.regrets.back();
      regret_diff.push_back(d);
      paired.push_back({prefix + ra.id, acc_a.regrets.back(), acc_b.regrets.back(),
                        ra.chosen.ToString(), rb.chosen.ToString(), 0.0});
      const PlanMatch match_a = ComparePlanItems(ra.chosen, ra.truth.optimal);
      const PlanMatch match_b = ComparePlanItems(rb.chosen, rb.truth.optimal);
      const double f1_a = match_a.f1, f1_b = match_b.f1;
      f1_diff.push_back(f1_a - f1_b);
      drug_f1_diff.push_back(match_a.drug_f1 - match_b.drug_f1);
      embolic_f1_diff.push_back(match_a.embolic_f1 - match_b.embolic_f1);
      PlanRunComparison::SizeBand& band = bands[SizeBandOf(ra.max_diameter_mm)];
      ++band.patients;
      band.regret_a += acc_a.regrets.back();
      band.regret_b += acc_b.regrets.back();
      band.f1_a += f1_a;
      band.f1_b += f1_b;
      if (d > 0.0) {
        ++c.a_worse;
      } else if (d < 0.0) {
        ++c.a_better;
      } else {
        ++c.same;
      }
    }
    c.only_b += int(b.rows.size()) - common;
    if (common == 0) {
      return MakeError(ErrorCode::kInvalidArgument, "runs '" + run_a + "' and '" + run_b +
                                                        "' have no finished patient in common");
    }
  }
  c.patients = int(regret_diff.size());
  c.a = acc_a.Finish(c.patients);
  c.b = acc_b.Finish(c.patients);
  const std::uint64_t seed = DeriveSeed(1, "plan-run-comparison");
  c.regret_diff = BootstrapMean(regret_diff, seed);
  c.f1_diff = BootstrapMean(f1_diff, seed);
  c.drug_f1_diff = BootstrapMean(drug_f1_diff, seed);
  c.embolic_f1_diff = BootstrapMean(embolic_f1_diff, seed);
  c.regret_diff_median = Median(regret_diff);
  c.sign_test_p = BinomialTestHalf(c.a_worse, c.a_worse + c.a_better);
  c.regret_ratio = c.b.regret > 0.0 ? c.a.regret / c.b.regret : std::nan("");
  for (std::size_t k = 0; k < bands.size(); ++k) {
    PlanRunComparison::SizeBand& band = bands[k];
    if (band.patients == 0) continue;
    band.band = kSizeBands[k].name;
    band.summed_difference = band.regret_a - band.regret_b;
    const double n = band.patients;
    band.regret_a /= n, band.regret_b /= n, band.f1_a /= n, band.f1_b /= n;
    c.by_size.push_back(band);
  }
  const auto gap = [](const PlanRunComparison::Decisive& p) {
    return std::abs(p.regret_a - p.regret_b);
  };
  std::stable_sort(paired.begin(), paired.end(),
                   [&](const auto& x, const auto& y) { return gap(x) > gap(y); });
  const double sum_a = c.a.regret * c.patients, sum_b = c.b.regret * c.patients;
  for (std::size_t k = 0; k < std::min<std::size_t>(3, paired.size()) && gap(paired[k]) > 0; ++k) {
    PlanRunComparison::Decisive p = paired[k];
    const double rest_b = sum_b - p.regret_b;
    p.ratio_without = rest_b > 0.0 ? (sum_a - p.regret_a) / rest_b : std::nan("");
    c.decisive.push_back(std::move(p));
  }
  return c;
}

std::string PlanRunComparison::FormatTable() const {
  std::ostringstream out;
  out << "paired plan selection on " << patients << " patients finished by both runs (" << only_a
      << " by A only, " << only_b << " by B only) of ";
  for (std::size_t k = 0; k < cohort_dirs.size(); ++k) out << (k > 0 ? ", " : "") << cohort_dirs[k];
  out << "\n";
  for (std::size_t k = 0; k < runs_a.size(); ++k) {
    const std::string n = runs_a.size() > 1 ? std::to_string(k + 1) : "";
    out << "  A" << n << ": " << runs_a[k] << "\n  B" << n << ": " << runs_b[k] << "\n";
  }
  out << MethodTable({a, b});
  char line[256];
  std::snprintf(line, sizeof(line),
                "A - B, mean over patients [95%% bootstrap CI]: regret %+.4f [%+.4f, %+.4f], "
                "F1 %+.3f [%+.3f, %+.3f]\n",
                regret_diff.mean, regret_diff.lo, regret_diff.hi, f1_diff.mean, f1_diff.lo,
                f1_diff.hi);
  out << line;
  std::snprintf(line, sizeof(line),
                "A - B, F1 by item kind: drugs %+.3f [%+.3f, %+.3f], Lipiodol and embolics "
                "%+.3f [%+.3f, %+.3f]\n",
                drug_f1_diff.mean, drug_f1_diff.lo, drug_f1_diff.hi, embolic_f1_diff.mean,
                embolic_f1_diff.lo, embolic_f1_diff.hi);
  out << line;
  std::snprintf(line, sizeof(line),
                "A - B, median over patients: regret %+.4f; mean regret A / B: %.2f\n"
                "regret under A: higher for %d patients, lower for %d, equal for %d "
                "(two-sided sign test p = %.3g)\n",
                regret_diff_median, regret_ratio, a_worse, a_better, same, sign_test_p);
  out << line;
  out << "by the largest lesion's diameter:\n";
  for (const SizeBand& band : by_size) {
    std::snprintf(line, sizeof(line),
                  "  %-15s %4d patients  regret A %.4f  B %.4f  F1 A %.3f  B %.3f  "
                  "summed regret A - B %+.4f\n",
                  band.band.c_str(), band.patients, band.regret_a, band.regret_b, band.f1_a,
                  band.f1_b, band.summed_difference);
    out << line;
  }
  if (!decisive.empty()) {
    out << "patients whose regrets differ most (mean regret A / B without the patient):\n";
  }
  for (const Decisive& p : decisive) {
    std::snprintf(line, sizeof(line), "  %-10s A %.4f - B %.4f = %+.4f (%.2f)", p.patient.c_str(),
                  p.regret_a, p.regret_b, p.regret_a - p.regret_b, p.ratio_without);
    out << line << "  A: " << p.plan_a << "  B: " << p.plan_b << "\n";
  }
  return out.str();
}

std::string PlanRunComparison::ToJson() const {
  json decisive_json = json::array();
  for (const Decisive& p : decisive) {
    decisive_json.push_back({{"patient", p.patient},
                             {"regret_a", p.regret_a},
                             {"regret_b", p.regret_b},
                             {"plan_a", p.plan_a},
                             {"plan_b", p.plan_b},
                             {"regret_ratio_without", NumberOrNull(p.ratio_without)}});
  }
  json by_size_json = json::array();
  for (const SizeBand& band : by_size) {
    by_size_json.push_back({{"band", band.band},
                            {"patients", band.patients},
                            {"regret_a", band.regret_a},
                            {"regret_b", band.regret_b},
                            {"f1_a", band.f1_a},
                            {"f1_b", band.f1_b},
                            {"summed_difference", band.summed_difference}});
  }
  return json{{"runs_a", runs_a},
              {"runs_b", runs_b},
              {"cohort_dirs", cohort_dirs},
              {"patients", patients},
              {"only_a", only_a},
              {"only_b", only_b},
              {"methods", {MethodJson(a), MethodJson(b)}},
              {"a_minus_b",
               {{"regret", IntervalJson(regret_diff)},
                {"f1", IntervalJson(f1_diff)},
                {"f1_drugs", IntervalJson(drug_f1_diff)},
                {"f1_embolics", IntervalJson(embolic_f1_diff)},
                {"ci_method", "percentile bootstrap over patients, 2000 resamples"},
                {"regret_median", regret_diff_median},
                {"regret_ratio", NumberOrNull(regret_ratio)},
                {"a_worse", a_worse},
                {"a_better", a_better},
                {"same", same},
                {"sign_test_p", sign_test_p}}},
              {"decisive", decisive_json},
              {"by_largest_lesion", by_size_json}}
      .dump(1);
}

namespace {

/// Follow-up records of a cohort, in manifest order.
Expected<std::vector<survival::SurvivalRecord>> FollowUp(const std::vector<CohortEntry>& entries,
                                                         const std::string& dir) {
  std::vector<survival::SurvivalRecord> y;
  for (const CohortEntry& e : entries) {
    if (!e.survival) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "cohort '" + dir + "': patient '" + e.id + "' has no follow-up");
    }
    y.push_back(*e.survival);
  }
  return y;
}

/// The patient as the survival model sees it and the outcome it scores (OutcomeSource).
Expected<std::pair<PatientCase, Outcome>> ScoredCase(const CohortEntry& entry,
                                                     const OutcomeSource& source) {
  MEWM_TRY(PatientCase patient, LoadPatient(entry));
  if (source.generator == nullptr) {
    MEWM_TRY(Outcome outcome, LoadAdministeredOutcome(entry, ActionBase::Default()));
    return std::make_pair(std::move(patient), std::move(outcome));
  }
  MEWM_TRY(const Plan plan, ActionBase::Default().ParsePlan(entry.administered));
  MEWM_TRY(PatientCase region, Planner::ModelRegion(patient, *source.generator));
  MEWM_TRY(std::vector<Outcome> outcomes,
           source.generator->Simulate(region, {Planner::Request(source.seed, entry.id, plan, 0)}));
  return std::make_pair(std::move(region), std::move(outcomes.front()));
}

}  // namespace

Expected<SurvivalEvaluation> EvaluateSurvival(survival::SurvivalModel& model,
                                              const std::string& cohort_dir,
                                              const std::string& train_dir,
                                              const std::function<void(int, int)>& progress,
                                              const OutcomeSource& source) {
  MEWM_TRY(const std::vector<CohortEntry> entries, ReadSyntheticCohortWithOutcomes(cohort_dir));
  MEWM_TRY(const std::vector<CohortEntry> train, ReadSyntheticCohortWithOutcomes(train_dir));
  MEWM_TRY(const std::vector<survival::SurvivalRecord> y, FollowUp(entries, cohort_dir));
  MEWM_TRY(const std::vector<survival::SurvivalRecord> y_train, FollowUp(train, train_dir));
  MEWM_TRY(const std::string truth_path, SyntheticTruthPath(cohort_dir));
  MEWM_TRY(const json truth, ReadJson(truth_path));
  std::vector<double> risk, oracle;
  std::vector<survival::RiskScore> curves;
  for (std::size_t i = 0; i < entries.size(); ++i) {
    MEWM_TRY(const auto scored, ScoredCase(entries[i], source));
    MEWM_TRY(survival::RiskScore score, model.Score(scored.first, scored.second));
    risk.push_back(score.risk);
    curves.push_back(std::move(score));
    try {
      oracle.push_back(
          truth.at("patients").at(entries[i].id).at("administered_risk").get<double>());
    } catch (const std::exception& e) {
      return MakeError(ErrorCode::kCorruptData, "'" + truth_path + "': " + e.what());
    }
    if (progress) progress(int(i + 1), int(entries.size()));
  }
  SurvivalEvaluation eval;
  eval.patients = int(entries.size());
  MEWM_TRY(eval.harrell_c, survival::HarrellC(risk, y));
  MEWM_TRY(eval.oracle_harrell_c, survival::HarrellC(oracle, y));
  MEWM_TRY(eval.uno_c, survival::UnoC(risk, y, y_train, 48.0));
  MEWM_TRY(eval.integrated_brier,
           survival::IntegratedBrierScore(curves, y, y_train, {3, 6, 12, 18, 24, 30, 36, 42, 48}));
  MEWM_TRY(eval.auc_24, survival::TimeDependentAuc(risk, y, y_train, 24.0));
  MEWM_TRY(eval.observed, survival::FitKaplanMeier(y));
  double last = 0.0;
  for (const survival::SurvivalRecord& r : y) {
    last = std::max(last, r.time);
    eval.deaths += r.event ? 1 : 0;
  }
  constexpr int kSteps = 200;
  std::vector<double> at(curves.size());
  // Checked once per curve, not at each of the 200 times (SurvivalAt checks the whole curve).
  std::vector<bool> valid(curves.size());
  for (std::size_t i = 0; i < curves.size(); ++i) valid[i] = bool(curves[i].Validate());
  for (int k = 1; k <= kSteps && last > 0.0; ++k) {
    const double t = last * k / kSteps;
    for (std::size_t i = 0; i < curves.size(); ++i) {
      at[i] = valid[i] ? curves[i].SurvivalAtUnchecked(t) : 0.0;
    }
    std::sort(at.begin(), at.end());
    const auto quantile = [&](double q) {
      return at[std::min(at.size() - 1, std::size_t(std::lround(q * double(at.size() - 1))))];
    };
    double sum = 0.0;
    for (const double v : at) sum += v;
    eval.curve_times.push_back(t);
    eval.predicted_mean.push_back(at.empty() ? 1.0 : sum / double(at.size()));
    eval.predicted_lo.push_back(at.empty() ? 1.0 : quantile(0.1));
    eval.predicted_hi.push_back(at.empty() ? 1.0 : quantile(0.9));
  }
  return eval;
}

Expected<RgbImage> SurvivalEvaluation::Plot() const {
  SurvivalPlot plot;
  plot.title = "Observed vs predicted survival, " + std::to_string(patients) + " patients";
  plot.x_label = "Months of follow-up";
  PlotCurve km;
  km.label = "Observed: Kaplan-Meier (" + std::to_string(deaths) + " deaths)";
  km.times = observed.times;
  km.values = observed.survival;
  km.color = {20, 20, 20};
  PlotCurve predicted;
  predicted.label = "Predicted: mean of the model's curves";
  predicted.times = curve_times;
  predicted.values = predicted_mean;
  predicted.lo = predicted_lo;
  predicted.hi = predicted_hi;
  predicted.color = {31, 100, 200};
  plot.curves = {km, predicted};
  plot.notes = {"Band: 10th to 90th percentile of the patients' predicted curves"};
  return RenderSurvivalPlot(plot);
}

std::string SurvivalEvaluation::FormatTable() const {
  char text[512];
  std::snprintf(text, sizeof(text),
                "survival on %d held-out patients\n"
                "  Harrell C            %.3f   (oracle, true hazard: %.3f)\n"
                "  Uno C (tau 48 mo)    %.3f\n"
                "  integrated Brier     %.3f   (3-48 months)\n"
                "  AUC at 24 months     %.3f\n",
                patients, harrell_c, oracle_harrell_c, uno_c, integrated_brier, auc_24);
  return text;
}

std::string SurvivalEvaluation::ToJson() const {
  return json{{"patients", patients}, {"harrell_c", harrell_c},
              {"uno_c_tau48", uno_c}, {"integrated_brier_3_48", integrated_brier},
              {"auc_24", auc_24},     {"oracle_harrell_c", oracle_harrell_c}}
      .dump(1);
}

Expected<std::unique_ptr<survival::CoxSurvival>> TrainCoxSurvival(
    const std::string& cohort_dir, survival::CoxTies ties,
    const survival::ModelProvenance& provenance, const std::function<void(int, int)>& progress,
    const OutcomeSource& source) {
  MEWM_TRY(const std::vector<CohortEntry> entries, ReadSyntheticCohortWithOutcomes(cohort_dir));
  MEWM_TRY(const std::vector<survival::SurvivalRecord> y, FollowUp(entries, cohort_dir));
  const auto p = Eigen::Index(survival::CoxFeatureNames().size());
  Eigen::MatrixXd X(Eigen::Index(entries.size()), p);
  for (std::size_t i = 0; i < entries.size(); ++i) {
    MEWM_TRY(const auto scored, ScoredCase(entries[i], source));
    MEWM_TRY(const survival::PreTreatment pre, survival::MeasurePreTreatment(scored.first));
    MEWM_TRY(const Eigen::VectorXd x,
             survival::CoxFeatures(pre, scored.first.tumor, scored.second));
    X.row(Eigen::Index(i)) = x.transpose();
    if (progress) progress(int(i + 1), int(entries.size()));
  }
  // Plan toxicity is in hazard units by definition (core/pharmacology.h): its coefficient is 1,
  // not estimated. Estimated from a few hundred administered plans it came out negative (World
  // v2, 200 patients: -0.49), and a planner that trusted it chose the most toxic plans.
  MEWM_TRY(survival::CoxFit fit, survival::FitCox(X, y, survival::CoxFeatureNames(), ties, 1e-4, 50,
                                                  {{"plan_toxicity", 1.0}}));
  return survival::CoxSurvival::Create(std::move(fit), provenance);
}

Expected<dynamics::BiologyRegression> TrainMechanisticCalibration(
    const std::string& cohort_dir, double ridge, const std::function<void(int, int)>& progress) {
  MEWM_TRY(const std::vector<CohortEntry> entries, ReadSyntheticCohort(cohort_dir));
  MEWM_TRY(const std::string truth_path, SyntheticTruthPath(cohort_dir));
  MEWM_TRY(const json truth, ReadJson(truth_path));
  const auto p = Eigen::Index(dynamics::BiologyFeatureNames().size());
  const auto q = Eigen::Index(dynamics::BiologyTargetNames().size());
  Eigen::MatrixXd X(Eigen::Index(entries.size()), p), Y(Eigen::Index(entries.size()), q);
  for (std::size_t i = 0; i < entries.size(); ++i) {
    MEWM_TRY(const PatientCase patient, LoadPatient(entries[i]));
    MEWM_TRY(const Eigen::VectorXd x, dynamics::BiologyFeatures(patient));
    dynamics::TumorBiology b;
    try {
      const json& j = truth.at("patients").at(entries[i].id).at("biology");
      b.proliferation_per_day = j.at("proliferation_per_day").get<double>();
      b.infiltration_mm2_per_day = j.at("infiltration_mm2_per_day").get<double>();
      b.vascularity = j.at("vascularity").get<double>();
      const json& s = j.at("sensitivity");
      for (std::size_t k = 0; k < 4; ++k)
        b.sensitivity[k] = s.at(dynamics::kDrugClasses[k]).get<double>();
    } catch (const std::exception& e) {
      return MakeError(ErrorCode::kCorruptData,
                       "'" + truth_path + "', patient '" + entries[i].id + "': " + e.what());
    }
    X.row(Eigen::Index(i)) = x.transpose();
    Y.row(Eigen::Index(i)) = dynamics::BiologyTargets(b).transpose();
    if (progress) progress(int(i + 1), int(entries.size()));
  }
  return dynamics::BiologyRegression::Fit(X, Y, ridge);
}

}  // namespace mewm::scenarios

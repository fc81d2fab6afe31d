// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// `mewm eval dynamics`: fidelity of dynamics backends against the synthetic world's truth.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <set>

#include "method_scores.h"
#include "mewm/core/seed.h"
#include "mewm/core/stats.h"
#include "mewm/eval/dynamics_data.h"
#include "mewm/planner/planner.h"
#include "mewm/tace/tumor_features.h"

namespace mewm::scenarios {
namespace {

/// The "no change" baseline: the post-treatment image is the pre-treatment one.
class IdentityDynamics final : public dynamics::DynamicsModel {
 public:
  Expected<std::vector<Outcome>> Simulate(const PatientCase& patient,
                                          const std::vector<SimulationRequest>& requests) override {
    std::vector<Outcome> out;
    for (const SimulationRequest& r : requests) {
      out.push_back({r.plan, r.sample_index, patient.ct.DeepCopy(), patient.tumor.DeepCopy()});
    }
    return out;
  }
  std::int64_t evaluations() const override { return 0; }
  std::string name() const override { return "no change"; }
};

/// The "complete response" baseline: no residual tumor whatever the plan. Its image is the
/// pre-treatment CT, which is not its claim, so its image metrics are not reported.
class CompleteResponseDynamics final : public dynamics::DynamicsModel {
 public:
  Expected<std::vector<Outcome>> Simulate(const PatientCase& patient,
                                          const std::vector<SimulationRequest>& requests) override {
    std::vector<Outcome> out;
    for (const SimulationRequest& r : requests) {
      Outcome o{r.plan, r.sample_index, patient.ct.DeepCopy(),
                LabelVolume(patient.ct.geometry(), patient.ct.extent(), "viable")};
      o.viable_fraction =
          Volume(openvdb::FloatGrid::create(0.0f), patient.ct.geometry(), patient.ct.extent());
      out.push_back(std::move(o));
    }
    return out;
  }
  std::int64_t evaluations() const override { return 0; }
  std::string name() const override { return "complete response"; }
};

/// The autoencoder's ceiling: each request's true outcome, reconstructed. `truth` is set to the
/// patient's true outcomes (in request order) before each Simulate.
class CeilingDynamics final : public dynamics::DynamicsModel {
 public:
  explicit CeilingDynamics(Reconstruction reconstruct) : reconstruct_(std::move(reconstruct)) {}
  Expected<std::vector<Outcome>> Simulate(const PatientCase& patient,
                                          const std::vector<SimulationRequest>& requests) override {
    std::vector<Outcome> out;
    for (std::size_t r = 0; r < requests.size(); ++r) {
      MEWM_TRY(Outcome o, reconstruct_(patient, (*truth)[r]));
      out.push_back(std::move(o));
    }
    return out;
  }
  std::int64_t evaluations() const override { return 0; }
  std::string name() const override { return "autoencoder ceiling"; }
  const std::vector<Outcome>* truth = nullptr;

 private:
  Reconstruction reconstruct_;
};

double MaskMl(const LabelVolume& viable) {
  const Eigen::Vector3d s = viable.geometry().spacing;
  return double(CountLabel(viable)) * s.prod() * 1e-3;
}

/// Dice of two masks; NaN when both are empty.
double Dice(const LabelVolume& a, const LabelVolume& b) {
  std::int64_t na = 0, nb = 0, both = 0;
  auto bacc = b.grid().getConstAccessor();
  for (auto it = a.grid().cbeginValueOn(); it; ++it) {
    if (*it == 0) continue;
    ++na;
    if (bacc.getValue(it.getCoord()) != 0) ++both;
  }
  nb = CountLabel(b);
  return na + nb == 0 ? std::nan("") : 2.0 * double(both) / double(na + nb);
}

/// Mean |a - b| HU over the voxels of `region` (the tumor's neighbourhood).
double HuMae(const Volume& a, const Volume& b, const Volume& region) {
  auto aa = a.grid().getConstAccessor(), ba = b.grid().getConstAccessor();
  double sum = 0.0;
  std::int64_t n = 0;
  for (auto it = region.grid().cbeginValueOn(); it; ++it) {
    sum += std::abs(double(aa.getValue(it.getCoord())) - double(ba.getValue(it.getCoord())));
    ++n;
  }
  return n > 0 ? sum / double(n) : 0.0;
}

double Mean(const std::vector<double>& v) { return MeanStd(v).first; }

struct MethodCases {
  /// Per case (patient, plan): the residual of the mean over the case's samples against the truth.
  std::vector<double> residual_abs, residual_diff, residual_rel;
  /// Per sample: |residual - true|; per case: the SD of the residual across its samples.
  std::vector<double> residual_abs_single, residual_spread;
  /// Images, per case, from its first sample.
  std::vector<double> dice, mask_abs, hu;
  int empty_both = 0;
  std::vector<std::vector<double>> pred_ml, true_ml;  ///< per patient, per plan (residual)
  std::vector<std::vector<double>> pred_coverage, true_coverage;  ///< the same, LipiodolCoverage
  std::vector<std::vector<Plan>> plans;                           ///< per patient, per plan
  std::vector<DenseFloat> crops;
  std::vector<int> crop_patient;
  double seconds = 0.0;
};

/// One patient's Spearman(pred, true) across plans: NaN when the truth is constant (nothing to
/// rank), 0 when the prediction is.
double PatientSpearman(const std::vector<double>& pred, const std::vector<double>& truth) {
  if (std::isnan(Spearman(truth, truth))) return std::nan("");
  const double rho = Spearman(pred, truth);
  return std::isnan(rho) ? 0.0 : rho;
}

/// Each patient's residual figures from the per-case series (cases in patient order, each
/// patient's plans together); `ids` and `lesion_crops` per patient.
std::vector<PatientFidelity> PerPatient(const MethodCases& c, const std::vector<std::string>& ids,
                                        const std::vector<int>& lesion_crops) {
  std::vector<PatientFidelity> out;
  std::size_t k = 0;  // the patient's first case
  for (std::size_t p = 0; p < c.pred_ml.size(); ++p) {
    const std::size_t n = c.pred_ml[p].size();
    const auto of_patient = [&](const std::vector<double>& per_case) {
      return std::vector<double>(per_case.begin() + std::ptrdiff_t(k),
                                 per_case.begin() + std::ptrdiff_t(k + n));
    };
    const std::vector<double> diff = of_patient(c.residual_diff);
    const double bias = Mean(diff);
    std::vector<double> within;
    for (const double d : diff) within.push_back(std::abs(d - bias));
    std::vector<PlanFidelity> plans;
    for (std::size_t q = 0; q < n; ++q) {
      plans.push_back({c.plans[p][q].ToString(), c.pred_ml[p][q], c.true_ml[p][q],
                       c.pred_coverage[p][q], c.true_coverage[p][q]});
    }
    out.push_back({ids[p], lesion_crops[p], Mean(c.true_ml[p]), Mean(of_patient(c.residual_abs)),
                   bias, Mean(within), Mean(of_patient(c.residual_spread)),
                   PatientSpearman(c.pred_ml[p], c.true_ml[p]), std::move(plans)});
    k += n;
  }
  return out;
}

/// Mean over patients of Spearman(pred, true) across plans: patients whose truth is constant are
/// left out (nothing to rank), a constant prediction counts as 0.
double MeanSpearman(const std::vector<std::vector<double>>& pred,
                    const std::vector<std::vector<double>>& truth, int* counted, int* constant) {
  double sum = 0.0;
  int k = 0, flat = 0;
  for (std::size_t p = 0; p < pred.size(); ++p) {
    const double rho = PatientSpearman(pred[p], truth[p]);
    if (std::isnan(rho)) continue;
    if (std::isnan(Spearman(pred[p], truth[p]))) ++flat;
    sum += rho;
    ++k;
  }
  if (counted != nullptr) *counted = k;
  if (constant != nullptr) *constant = flat;
  return k > 0 ? sum / k : std::nan("");
}

/// Each item's effect within patients (ItemEffect), from every method's per-patient series.
std::vector<ItemEffect> ItemEffects(const MethodCases& c) {
  std::map<std::string, ItemEffect> effects;
  for (std::size_t patient = 0; patient < c.plans.size(); ++patient) {
    const std::vector<Plan>& plans = c.plans[patient];
    std::set<std::string> items;
    for (const Plan& plan : plans) items.insert(plan.items().begin(), plan.items().end());
    for (const std::string& item : items) {
      std::vector<bool> holds;
      for (const Plan& plan : plans) holds.push_back(plan.Contains(item));
      const auto n_with = std::count(holds.begin(), holds.end(), true);
      const auto n_without = std::ptrdiff_t(plans.size()) - n_with;
      if (n_with == 0 || n_without == 0) continue;
      // The patient's mean over the plans with the item minus its mean over those without.
      const auto contrast = [&](const std::vector<std::vector<double>>& series) {
        double with = 0.0, without = 0.0;
        for (std::size_t p = 0; p < plans.size(); ++p) {
          (holds[p] ? with : without) += series[patient][p];
        }
        return with / double(n_with) - without / double(n_without);
      };
      ItemEffect& e = effects[item];
      e.item = item;
      ++e.patients;
      e.residual_ml += contrast(c.pred_ml);
      e.true_residual_ml += contrast(c.true_ml);
      e.lipiodol_coverage += contrast(c.pred_coverage);
      e.true_lipiodol_coverage += contrast(c.true_coverage);
    }
  }
  std::vector<ItemEffect> out;
  for (auto& [item, e] : effects) {
    for (double* v :
         {&e.residual_ml, &e.true_residual_ml, &e.lipiodol_coverage, &e.true_lipiodol_coverage}) {
      *v /= e.patients;
    }
    out.push_back(e);
  }
  return out;
}

}  // namespace

/// Scores one method's simulated outcomes of one patient (patient index `patient`) against the
/// true outcomes of the same plans, and keeps their crops for the machine Turing test.
/// `simulated` holds `samples` outcomes per plan, sample-major (sample t of plan p at
/// t * plans + p): the residual and the Lipiodol coverage are their means, as a planner averages
/// over samples; the images are the first sample's.
Status ScorePatient(const std::vector<Outcome>& simulated, int samples,
                    const std::vector<Outcome>& truth, const PatientCase& region,
                    const CropSpec& lesion, const dynamics::DiffusionConfig& crop_config,
                    int patient, MethodCases& c) {
  std::vector<double> pred_ml, true_ml, pred_coverage, true_coverage;
  std::vector<Plan> plans;
  for (std::size_t p = 0; p < truth.size(); ++p) {
    const Outcome& o = simulated[p];
    const double tr = ViableVolumeMl(truth[p]);
    std::vector<double> residuals;
    double pc = 0.0;
    for (int t = 0; t < samples; ++t) {
      const Outcome& sample = simulated[std::size_t(t) * truth.size() + p];
      residuals.push_back(ViableVolumeMl(sample));
      c.residual_abs_single.push_back(std::abs(residuals.back() - tr));
      MEWM_TRY(const double coverage, LipiodolCoverage(sample.post_ct, region.tumor));
      pc += coverage / samples;
    }
    const auto [pr, spread] = MeanStd(residuals);
    c.residual_spread.push_back(spread);
    pred_ml.push_back(pr);
    true_ml.push_back(tr);
    c.residual_abs.push_back(std::abs(pr - tr));
    c.residual_diff.push_back(pr - tr);
    MEWM_TRY(const double tc, LipiodolCoverage(truth[p].post_ct, region.tumor));
    pred_coverage.push_back(pc);
    true_coverage.push_back(tc);
    plans.push_back(truth[p].plan);
    c.residual_rel.push_back(std::abs(pr - tr) / std::max(tr, 1.0));
    c.mask_abs.push_back(std::abs(MaskMl(o.viable) - MaskMl(truth[p].viable)));
    const double dice = Dice(o.viable, truth[p].viable);
    if (std::isnan(dice)) {
      ++c.empty_both;
    } else {
      c.dice.push_back(dice);
    }
    c.hu.push_back(HuMae(o.post_ct, truth[p].post_ct, region.ct));
    MEWM_TRY(auto crop, dynamics::ExtractChannels(o.post_ct, o.viable, lesion, crop_config.window));
    c.crops.push_back(std::move(crop.ct));
    c.crop_patient.push_back(patient);
  }
  c.pred_ml.push_back(std::move(pred_ml));
  c.true_ml.push_back(std::move(true_ml));
  c.pred_coverage.push_back(std::move(pred_coverage));
  c.true_coverage.push_back(std::move(true_coverage));
  c.plans.push_back(std::move(plans));
  return {};
}

/// One method's metrics over every case; the plan-sensitivity control shuffles each patient's
/// predictions across plans with `rng`.
DynamicsMetrics Summarize(const std::string& method, const MethodCases& c, bool has_image,
                          const std::vector<std::string>& ids, const std::vector<int>& lesion_crops,
                          std::mt19937_64& rng) {
  DynamicsMetrics r;
  r.method = method;
  r.cases = int(c.residual_abs.size());
  r.residual_mae_ml = Mean(c.residual_abs);
  r.residual_bias_ml = Mean(c.residual_diff);
  r.residual_rel_error = Median(c.residual_rel);
  r.residual_mae_single_ml = Mean(c.residual_abs_single);
  r.residual_spread_ml = Mean(c.residual_spread);
  r.dice = Mean(c.dice);
  r.dice_cases = int(c.dice.size());
  r.empty_both = c.empty_both;
  r.mask_mae_ml = Mean(c.mask_abs);
  r.has_image = has_image;
  r.hu_mae = Mean(c.hu);
  r.seconds = c.seconds;
  r.item_effects = ItemEffects(c);
  r.per_patient = PerPatient(c, ids, lesion_crops);
  for (std::size_t p = 0; p < r.per_patient.size(); ++p) {
    const double share = double(c.pred_ml[p].size()) / double(std::max(r.cases, 1));
    r.residual_patient_level_ml += std::abs(r.per_patient[p].residual_bias_ml) * share;
    r.residual_within_patient_ml += r.per_patient[p].residual_within_mae_ml * share;
  }
  // Plan sensitivity, and a control with each patient's predictions shuffled across plans.
  r.spearman = MeanSpearman(c.pred_ml, c.true_ml, &r.spearman_patients, &r.spearman_constant);
  if (!std::isnan(r.spearman) && r.spearman_constant < r.spearman_patients) {
    constexpr int kShuffles = 2000;
    int above = 0;
    double total = 0.0;
    for (int s = 0; s < kShuffles; ++s) {
      auto shuffled = c.pred_ml;
      for (auto& v : shuffled) std::shuffle(v.begin(), v.end(), rng);
      const double rho = MeanSpearman(shuffled, c.true_ml, nullptr, nullptr);
      total += rho;
      if (rho >= r.spearman) ++above;
    }
    r.spearman_shuffled = total / kShuffles;
    r.spearman_p = double(above + 1) / double(kShuffles + 1);
  }
  return r;
}

Expected<DynamicsEvaluation> EvaluateDynamics(
    const std::string& cohort_dir,
    const std::vector<std::pair<std::string, dynamics::DynamicsModel*>>& methods,
    const ActionBase& actions, const dynamics::DiffusionConfig& crop_config,
    const TuringTest& turing, std::uint64_t seed, const std::function<void(int, int)>& progress,
    int max_patients, const Reconstruction& ceiling, int samples) {
  if (samples < 1) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "samples per plan must be at least 1, not " + std::to_string(samples));
  }
  MEWM_TRY(const auto outcomes, ReadPlanOutcomes(cohort_dir, actions));
  MEWM_TRY(std::vector<CohortEntry> entries, ReadSyntheticCohort(cohort_dir));
  if (max_patients > 0 && int(entries.size()) > max_patients) entries.resize(max_patients);
  IdentityDynamics identity;
  CompleteResponseDynamics complete;
  std::vector<std::pair<std::string, dynamics::DynamicsModel*>> all = {
      {"no change", &identity}, {"complete response", &complete}};
  CeilingDynamics reconstructed(ceiling);
  if (ceiling) all.emplace_back("autoencoder ceiling", &reconstructed);
  // The baselines and the ceiling are deterministic: one sample each.
  const std::size_t deterministic = all.size();
  all.insert(all.end(), methods.begin(), methods.end());
  std::vector<MethodCases> cases(all.size());
  std::vector<DenseFloat> real_crops;
  std::vector<int> real_patient;
  std::vector<std::string> ids;
  std::vector<int> lesion_crops;
  DynamicsEvaluation eval;
  eval.cohort_dir = cohort_dir;
  eval.samples = samples;
  for (std::size_t n = 0; n < entries.size(); ++n) {
    const CohortEntry& entry = entries[n];
    const auto listed = outcomes.find(entry.id);
    if (listed == outcomes.end() || listed->second.size() < 2) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "patient '" + entry.id + "' of " + cohort_dir +
                           " has no counterfactual plans (generate the cohort with "
                           "--plans-per-patient K)");
    }
    eval.plans_per_patient = int(listed->second.size());
    MEWM_TRY(const PatientCase patient, LoadPatient(entry));
    MEWM_TRY(const PatientCase region, TumorRegion(patient, 6.0));
    MEWM_TRY(const auto crops, dynamics::LesionCrops(patient, crop_config));
    ids.push_back(entry.id);
    lesion_crops.push_back(int(crops.size()));
    std::vector<SimulationRequest> requests;  // sample-major, as ScorePatient reads them
    for (int t = 0; t < samples; ++t) {
      for (const PlanOutcomeFile& file : listed->second) {
        requests.push_back(Planner::Request(seed, entry.id, file.plan, t));
      }
    }
    std::vector<Outcome> truth;
    for (const PlanOutcomeFile& file : listed->second) {
      MEWM_TRY(Outcome outcome, LoadOutcomeFile(file.post, file.plan));
      truth.push_back(std::move(outcome));
      MEWM_TRY(auto crop, dynamics::ExtractChannels(truth.back().post_ct, truth.back().viable,
                                                    crops.front().spec, crop_config.window));
      real_crops.push_back(std::move(crop.ct));
      real_patient.push_back(int(n));
    }
    reconstructed.truth = &truth;
    for (std::size_t m = 0; m < all.size(); ++m) {
      MethodCases& c = cases[m];
      const int method_samples = m < deterministic ? 1 : samples;
      const std::vector<SimulationRequest> method_requests(
          requests.begin(), requests.begin() + std::ptrdiff_t(method_samples * truth.size()));
      const auto t0 = std::chrono::steady_clock::now();
      auto simulated = all[m].second->Simulate(patient, method_requests);
      if (!simulated) {
        return simulated.error().WithContext(all[m].first + ", patient '" + entry.id + "'");
      }
      c.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (simulated->size() != method_requests.size()) {
        return MakeError(ErrorCode::kInternal,
                         all[m].first + " returned " + std::to_string(simulated->size()) +
                             " outcomes for " + std::to_string(method_requests.size()) +
                             " requests of patient '" + entry.id + "'");
      }
      MEWM_RETURN_IF_ERROR(ScorePatient(*simulated, method_samples, truth, region,
                                        crops.front().spec, crop_config, int(n), c));
    }
    ++eval.patients;
    if (progress) progress(int(n + 1), int(entries.size()));
  }
  std::mt19937_64 rng(DeriveSeed(seed, "spearman-shuffle"));
  for (std::size_t m = 0; m < all.size(); ++m) {
    MethodCases& c = cases[m];
    DynamicsMetrics r =
        Summarize(all[m].first, c, all[m].second != &complete, ids, lesion_crops, rng);
    if (turing && r.has_image) {
      std::vector<int> groups = real_patient;
      groups.insert(groups.end(), c.crop_patient.begin(), c.crop_patient.end());
      MEWM_TRY(r.turing, turing(real_crops, c.crops, groups));
      r.has_turing = true;
    }
    eval.methods.push_back(r);
  }
  return eval;
}

Expected<DynamicsComparison> CompareDynamicsMethods(const DynamicsEvaluation& eval,
                                                    const std::string& a, const std::string& b) {
  if (a == b) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "compare two different methods, not '" + a + "' with itself");
  }
  const auto find = [&](const std::string& name) -> Expected<const DynamicsMetrics*> {
    for (const DynamicsMetrics& m : eval.methods) {
      if (m.method == name) return &m;
    }
    return MakeError(ErrorCode::kNotFound,
                     "no method '" + name + "' in the evaluation of " + eval.cohort_dir);
  };
  MEWM_TRY(const DynamicsMetrics* ma, find(a));
  MEWM_TRY(const DynamicsMetrics* mb, find(b));
  const auto same_id = [](const PatientFidelity& x, const PatientFidelity& y) {
    return x.id == y.id;
  };
  if (!std::equal(ma->per_patient.begin(), ma->per_patient.end(), mb->per_patient.begin(),
                  mb->per_patient.end(), same_id)) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "methods '" + a + "' and '" + b + "' were not scored on the same patients");
  }
  DynamicsComparison c;
  c.method_a = a;
  c.method_b = b;
  std::vector<double> mae, level, rho;
  for (std::size_t p = 0; p < ma->per_patient.size(); ++p) {
    const PatientFidelity& pa = ma->per_patient[p];
    const PatientFidelity& pb = mb->per_patient[p];
    mae.push_back(pa.residual_mae_ml - pb.residual_mae_ml);
    level.push_back(std::abs(pa.residual_bias_ml) - std::abs(pb.residual_bias_ml));
    if (std::isnan(pa.spearman) || std::isnan(pb.spearman)) continue;
    const double d = pa.spearman - pb.spearman;
    rho.push_back(d);
    if (d > 0.0) {
      ++c.spearman_higher;
    } else if (d < 0.0) {
      ++c.spearman_lower;
    } else {
      ++c.spearman_same;
    }
  }
  c.patients = int(mae.size());
  c.spearman_patients = int(rho.size());
  const std::uint64_t seed = DeriveSeed(1, "dynamics-method-comparison");
  c.residual_mae_diff = BootstrapMean(mae, seed);
  c.residual_level_diff = BootstrapMean(level, seed);
  c.spearman_diff = BootstrapMean(rho, seed);
  return c;
}

std::string DynamicsEvaluation::FormatTable() const {
  std::string out = "dynamics fidelity on " + cohort_dir + ": " + std::to_string(patients) +
                    " patients x " + std::to_string(plans_per_patient) + " plans x " +
                    std::to_string(samples) + (samples == 1 ? " sample\n" : " samples\n");
  char line[640];
  std::snprintf(line, sizeof line, "%-18s %9s %9s %8s %13s %9s %7s %22s %20s %8s\n", "method",
                "resid.MAE", "resid.bias", "resid.rel", "Dice(n,empty)", "mask.MAE", "HU.MAE",
                "Spearman(shuffle),n", "Turing AUC [95% CI]", "sim.s");
  out += line;
  for (const DynamicsMetrics& m : methods) {
    char spearman[96], turing_text[64], dice[48], hu[16];
    if (std::isnan(m.spearman)) {
      std::snprintf(spearman, sizeof spearman, "n/a");
    } else {
      std::snprintf(spearman, sizeof spearman, "%+.3f (%+.3f),%d", m.spearman, m.spearman_shuffled,
                    m.spearman_patients);
    }
    if (m.has_turing) {
      std::snprintf(turing_text, sizeof turing_text, "%.3f [%.3f, %.3f]", m.turing.auc,
                    m.turing.ci_low, m.turing.ci_high);
    } else {
      std::snprintf(turing_text, sizeof turing_text, "-");
    }
    std::snprintf(dice, sizeof dice, "%.3f(%d,%d)", m.dice, m.dice_cases, m.empty_both);
    if (m.has_image) {
      std::snprintf(hu, sizeof hu, "%.1f", m.hu_mae);
    } else {
      std::snprintf(hu, sizeof hu, "-");
    }
    std::snprintf(line, sizeof line,
                  "%-18s %7.2fmL %+8.2fmL %8.3f %13s %7.2fmL %7s %22s %20s %8.1f\n",
                  m.method.c_str(), m.residual_mae_ml, m.residual_bias_ml, m.residual_rel_error,
                  dice, m.mask_mae_ml, hu, spearman, turing_text, m.seconds);
    out += line;
  }
  out +=
      "residual: the integrated viable fraction (what survival reads); Dice over cases where "
      "either viable mask (fraction >= 0.5) is non-empty, n cases, empty = both empty; Spearman: "
      "mean over the n patients whose true residual varies across plans, a constant prediction "
      "counting 0; Turing folds and CI grouped by patient\n";
  // One line per method with two of its figures (`format` names them).
  const auto per_method = [&](const char* format, double DynamicsMetrics::*a,
                              double DynamicsMetrics::*b) {
    for (const DynamicsMetrics& m : methods) {
      std::snprintf(line, sizeof line, format, m.method.c_str(), m.*a, m.*b);
      out += line;
    }
  };
  out +=
      "residual error by patient: the mean |bias| of each patient's level over its plans, and "
      "the mean error within patients once that level is removed:\n";
  per_method("  %-18s patient level %.2f mL, within patients %.2f mL\n",
             &DynamicsMetrics::residual_patient_level_ml,
             &DynamicsMetrics::residual_within_patient_ml);
  if (samples > 1) {
    out += "with " + std::to_string(samples) +
           " samples per plan: residual, Spearman and item effects read the mean of a plan's "
           "samples (the baselines and the ceiling are deterministic: one each), the images "
           "(Dice, mask, HU, Turing) its first sample. Single samples:\n";
    per_method("  %-18s residual MAE %.2f mL, SD across samples %.2f mL\n",
               &DynamicsMetrics::residual_mae_single_ml, &DynamicsMetrics::residual_spread_ml);
  }
  out +=
      "item effects within patients (plans with the item minus plans without), predicted / true: "
      "residual mL, Lipiodol coverage; n patients:\n";
  for (const DynamicsMetrics& m : methods) {
    out += "  " + m.method + ":";
    for (const ItemEffect& e : m.item_effects) {
      std::snprintf(line, sizeof line, " %s %+.1f/%+.1f", e.item.c_str(), e.residual_ml,
                    e.true_residual_ml);
      out += line;
      if (m.has_image) {
        std::snprintf(line, sizeof line, " %+.3f/%+.3f", e.lipiodol_coverage,
                      e.true_lipiodol_coverage);
        out += line;
      }
      out += " " + std::to_string(e.patients) + ";";
    }
    out.back() = '\n';
  }
  if (paired) {
    const DynamicsComparison& c = *paired;
    std::snprintf(line, sizeof line,
                  "paired by patient, %s - %s, mean [95%% bootstrap CI]:\n"
                  "  over the %d patients: residual MAE %+.2f mL [%+.2f, %+.2f], patient level "
                  "%+.2f mL [%+.2f, %+.2f]\n"
                  "  over the %d whose true residual varies: Spearman %+.3f [%+.3f, %+.3f], "
                  "higher for %d, lower for %d, equal for %d\n",
                  c.method_a.c_str(), c.method_b.c_str(), c.patients, c.residual_mae_diff.mean,
                  c.residual_mae_diff.lo, c.residual_mae_diff.hi, c.residual_level_diff.mean,
                  c.residual_level_diff.lo, c.residual_level_diff.hi, c.spearman_patients,
                  c.spearman_diff.mean, c.spearman_diff.lo, c.spearman_diff.hi, c.spearman_higher,
                  c.spearman_lower, c.spearman_same);
    out += line;
  }
  return out;
}

std::string DynamicsEvaluation::ToJson() const {
  nlohmann::json j = {{"cohort", cohort_dir},
                      {"patients", patients},
                      {"plans_per_patient", plans_per_patient},
                      {"samples", samples}};
  for (const DynamicsMetrics& m : methods) {
    nlohmann::json e = {{"method", m.method},
                        {"cases", m.cases},
                        {"residual_mae_ml", m.residual_mae_ml},
                        {"residual_bias_ml", m.residual_bias_ml},
                        {"residual_rel_error_median", m.residual_rel_error},
                        {"residual_mae_single_ml", m.residual_mae_single_ml},
                        {"residual_sample_sd_ml", m.residual_spread_ml},
                        {"residual_patient_level_ml", m.residual_patient_level_ml},
                        {"residual_within_patient_ml", m.residual_within_patient_ml},
                        {"dice", m.dice},
                        {"dice_cases", m.dice_cases},
                        {"empty_both", m.empty_both},
                        {"mask_mae_ml", m.mask_mae_ml},
                        {"hu_mae", m.has_image ? nlohmann::json(m.hu_mae) : nlohmann::json()},
                        {"spearman", NumberOrNull(m.spearman)},
                        {"spearman_patients", m.spearman_patients},
                        {"spearman_constant", m.spearman_constant},
                        {"spearman_shuffled", NumberOrNull(m.spearman_shuffled)},
                        {"spearman_p", m.spearman_p},
                        {"simulation_seconds", m.seconds}};
    e["item_effects"] = nlohmann::json::array();
    for (const ItemEffect& effect : m.item_effects) {
      nlohmann::json item = {{"item", effect.item},
                             {"patients", effect.patients},
                             {"residual_ml", effect.residual_ml},
                             {"true_residual_ml", effect.true_residual_ml}};
      if (m.has_image) {
        item["lipiodol_coverage"] = effect.lipiodol_coverage;
        item["true_lipiodol_coverage"] = effect.true_lipiodol_coverage;
      }
      e["item_effects"].push_back(item);
    }
    e["per_patient"] = nlohmann::json::array();
    for (const PatientFidelity& p : m.per_patient) {
      nlohmann::json plans = nlohmann::json::array();
      for (const PlanFidelity& q : p.plans) {
        nlohmann::json plan = {{"plan", q.plan},
                               {"residual_ml", q.residual_ml},
                               {"true_residual_ml", q.true_residual_ml}};
        if (m.has_image) {
          plan["lipiodol_coverage"] = q.lipiodol_coverage;
          plan["true_lipiodol_coverage"] = q.true_lipiodol_coverage;
        }
        plans.push_back(std::move(plan));
      }
      e["per_patient"].push_back({{"id", p.id},
                                  {"lesion_crops", p.lesion_crops},
                                  {"true_residual_ml", p.true_residual_ml},
                                  {"residual_mae_ml", p.residual_mae_ml},
                                  {"residual_bias_ml", p.residual_bias_ml},
                                  {"residual_within_mae_ml", p.residual_within_mae_ml},
                                  {"residual_sample_sd_ml", p.residual_spread_ml},
                                  {"spearman", NumberOrNull(p.spearman)},
                                  {"plans", std::move(plans)}});
    }
    if (m.has_turing) {
      e["turing"] = {{"auc", m.turing.auc},
                     {"ci95", {m.turing.ci_low, m.turing.ci_high}},
                     {"ci_method", "patient-cluster bootstrap"},
                     {"real", m.turing.real},
                     {"synthetic", m.turing.synthetic},
                     {"folds", m.turing.folds},
                     {"patients", m.turing.groups}};
    }
    j["methods"].push_back(e);
  }
  if (paired) {
    const DynamicsComparison& c = *paired;
    j["paired"] = {{"a", c.method_a},
                   {"b", c.method_b},
                   {"patients", c.patients},
                   {"residual_mae_ml", IntervalJson(c.residual_mae_diff)},
                   {"residual_patient_level_ml", IntervalJson(c.residual_level_diff)},
                   {"spearman_patients", c.spearman_patients},
                   {"spearman", IntervalJson(c.spearman_diff)},
                   {"spearman_higher", c.spearman_higher},
                   {"spearman_lower", c.spearman_lower},
                   {"spearman_same", c.spearman_same},
                   {"ci_method", "percentile bootstrap over patients, 2000 resamples"}};
  }
  return j.dump(2);
}

}  // namespace mewm::scenarios

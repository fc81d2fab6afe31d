// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// `mewm eval dynamics`: fidelity of dynamics backends against the synthetic world's truth.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>

#include "mewm/core/seed.h"
#include "mewm/scenarios/dynamics_data.h"
#include "mewm/scenarios/planner.h"

namespace mewm::scenarios {
namespace {

/// The identity baseline: the post-treatment image is the pre-treatment one.
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
  std::string name() const override { return "identity"; }
};

std::vector<double> Ranks(const std::vector<double>& v) {
  std::vector<std::size_t> order(v.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return v[a] < v[b]; });
  std::vector<double> rank(v.size());
  for (std::size_t i = 0; i < order.size();) {
    std::size_t j = i;
    while (j + 1 < order.size() && v[order[j + 1]] == v[order[i]]) ++j;
    for (std::size_t k = i; k <= j; ++k) rank[order[k]] = 0.5 * double(i + j);
    i = j + 1;
  }
  return rank;
}

double ViableMl(const LabelVolume& viable) {
  const Eigen::Vector3d s = viable.geometry().spacing;
  return double(CountLabel(viable)) * s.prod() * 1e-3;
}

double Dice(const LabelVolume& a, const LabelVolume& b) {
  std::int64_t na = 0, nb = 0, both = 0;
  auto bacc = b.grid().getConstAccessor();
  for (auto it = a.grid().cbeginValueOn(); it; ++it) {
    if (*it == 0) continue;
    ++na;
    if (bacc.getValue(it.getCoord()) != 0) ++both;
  }
  nb = CountLabel(b);
  return na + nb == 0 ? 1.0 : 2.0 * double(both) / double(na + nb);
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

double Median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const std::size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

struct MethodCases {
  std::vector<double> dice, rel, abs_ml, hu;
  std::vector<std::vector<double>> pred_ml, true_ml;  ///< per patient, per plan
  std::vector<DenseFloat> crops;
  double seconds = 0.0;
};

}  // namespace

double Spearman(const std::vector<double>& a, const std::vector<double>& b) {
  if (a.size() != b.size() || a.size() < 2) return std::nan("");
  const std::vector<double> ra = Ranks(a), rb = Ranks(b);
  const double ma = std::accumulate(ra.begin(), ra.end(), 0.0) / double(ra.size());
  const double mb = std::accumulate(rb.begin(), rb.end(), 0.0) / double(rb.size());
  double sab = 0, saa = 0, sbb = 0;
  for (std::size_t i = 0; i < ra.size(); ++i) {
    sab += (ra[i] - ma) * (rb[i] - mb);
    saa += (ra[i] - ma) * (ra[i] - ma);
    sbb += (rb[i] - mb) * (rb[i] - mb);
  }
  if (saa <= 0.0 || sbb <= 0.0) return std::nan("");
  return sab / std::sqrt(saa * sbb);
}

Expected<DynamicsEvaluation> EvaluateDynamics(
    const std::string& cohort_dir,
    const std::vector<std::pair<std::string, dynamics::DynamicsModel*>>& methods,
    const ActionBase& actions, const dynamics::DiffusionConfig& crop_config,
    const TuringTest& turing, std::uint64_t seed, const std::function<void(int, int)>& progress) {
  MEWM_TRY(const auto outcomes, ReadPlanOutcomes(cohort_dir, actions));
  MEWM_TRY(const std::vector<CohortEntry> entries, ReadSyntheticCohort(cohort_dir));
  IdentityDynamics identity;
  std::vector<std::pair<std::string, dynamics::DynamicsModel*>> all = {{"identity", &identity}};
  all.insert(all.end(), methods.begin(), methods.end());
  std::vector<MethodCases> cases(all.size());
  std::vector<DenseFloat> real_crops;
  DynamicsEvaluation eval;
  eval.cohort_dir = cohort_dir;
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
    std::vector<SimulationRequest> requests;
    std::vector<Outcome> truth;
    for (const PlanOutcomeFile& file : listed->second) {
      requests.push_back({file.plan, 0, Planner::SampleSeed(seed, entry.id, file.plan, 0),
                          Planner::SharedSeed(seed, entry.id, 0)});
      MEWM_TRY(Outcome outcome, LoadOutcomeFile(file.post, file.plan));
      truth.push_back(std::move(outcome));
      MEWM_TRY(auto crop, dynamics::ExtractChannels(truth.back().post_ct, truth.back().viable,
                                                    crops.front(), crop_config.window));
      real_crops.push_back(std::move(crop.ct));
    }
    for (std::size_t m = 0; m < all.size(); ++m) {
      const auto t0 = std::chrono::steady_clock::now();
      auto simulated = all[m].second->Simulate(patient, requests);
      if (!simulated) {
        return simulated.error().WithContext(all[m].first + ", patient '" + entry.id + "'");
      }
      cases[m].seconds +=
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::vector<double> pred_ml, true_ml;
      for (std::size_t p = 0; p < requests.size(); ++p) {
        const Outcome& o = (*simulated)[p];
        const double pv = ViableMl(o.viable), tv = ViableMl(truth[p].viable);
        pred_ml.push_back(pv);
        true_ml.push_back(tv);
        cases[m].dice.push_back(Dice(o.viable, truth[p].viable));
        cases[m].rel.push_back(std::abs(pv - tv) / std::max(tv, 1.0));
        cases[m].abs_ml.push_back(std::abs(pv - tv));
        cases[m].hu.push_back(HuMae(o.post_ct, truth[p].post_ct, region.ct));
        MEWM_TRY(auto crop,
                 dynamics::ExtractChannels(o.post_ct, o.viable, crops.front(), crop_config.window));
        cases[m].crops.push_back(std::move(crop.ct));
      }
      cases[m].pred_ml.push_back(std::move(pred_ml));
      cases[m].true_ml.push_back(std::move(true_ml));
    }
    ++eval.patients;
    if (progress) progress(int(n + 1), int(entries.size()));
  }
  std::mt19937_64 rng(DeriveSeed(seed, "spearman-shuffle"));
  for (std::size_t m = 0; m < all.size(); ++m) {
    const MethodCases& c = cases[m];
    DynamicsMetrics r;
    r.method = all[m].first;
    r.cases = int(c.dice.size());
    const auto mean = [](const std::vector<double>& v) {
      return v.empty() ? 0.0 : std::accumulate(v.begin(), v.end(), 0.0) / double(v.size());
    };
    r.dice = mean(c.dice);
    r.volume_rel_error = Median(c.rel);
    r.volume_mae_ml = mean(c.abs_ml);
    r.hu_mae = mean(c.hu);
    r.seconds = c.seconds;
    // Plan sensitivity, and a control with each patient's predictions shuffled across plans.
    const auto mean_spearman = [&](const std::vector<std::vector<double>>& pred, int* count) {
      double sum = 0.0;
      int k = 0;
      for (std::size_t p = 0; p < pred.size(); ++p) {
        const double rho = Spearman(pred[p], c.true_ml[p]);
        if (std::isnan(rho)) continue;
        sum += rho;
        ++k;
      }
      if (count != nullptr) *count = k;
      return k > 0 ? sum / k : std::nan("");
    };
    r.spearman = mean_spearman(c.pred_ml, &r.spearman_patients);
    if (!std::isnan(r.spearman)) {
      constexpr int kShuffles = 2000;
      int above = 0;
      double total = 0.0;
      for (int s = 0; s < kShuffles; ++s) {
        auto shuffled = c.pred_ml;
        for (auto& v : shuffled) std::shuffle(v.begin(), v.end(), rng);
        const double rho = mean_spearman(shuffled, nullptr);
        total += rho;
        if (rho >= r.spearman) ++above;
      }
      r.spearman_shuffled = total / kShuffles;
      r.spearman_p = double(above + 1) / double(kShuffles + 1);
    }
    if (turing) {
      MEWM_TRY(r.turing, turing(real_crops, c.crops));
      r.has_turing = true;
    }
    eval.methods.push_back(r);
  }
  return eval;
}

std::string DynamicsEvaluation::FormatTable() const {
  std::string out = "dynamics fidelity on " + cohort_dir + ": " + std::to_string(patients) +
                    " patients x " + std::to_string(plans_per_patient) + " plans\n";
  char line[512];
  std::snprintf(line, sizeof line, "%-12s %7s %9s %9s %7s %17s %9s %20s %8s\n", "method", "Dice",
                "vol.rel", "vol.MAE", "HU.MAE", "Spearman(shuffle)", "perm.p",
                "Turing AUC [95% CI]", "sim.s");
  out += line;
  for (const DynamicsMetrics& m : methods) {
    char spearman[64], turing_text[64];
    if (std::isnan(m.spearman)) {
      std::snprintf(spearman, sizeof spearman, "n/a (constant)");
    } else {
      std::snprintf(spearman, sizeof spearman, "%+.3f (%+.3f)", m.spearman, m.spearman_shuffled);
    }
    if (m.has_turing) {
      std::snprintf(turing_text, sizeof turing_text, "%.3f [%.3f, %.3f]", m.turing.auc,
                    m.turing.ci_low, m.turing.ci_high);
    } else {
      std::snprintf(turing_text, sizeof turing_text, "-");
    }
    std::snprintf(line, sizeof line, "%-12s %7.3f %9.3f %7.2fmL %7.1f %17s %9.4f %20s %8.1f\n",
                  m.method.c_str(), m.dice, m.volume_rel_error, m.volume_mae_ml, m.hu_mae, spearman,
                  std::isnan(m.spearman) ? 1.0 : m.spearman_p, turing_text, m.seconds);
    out += line;
  }
  return out;
}

std::string DynamicsEvaluation::ToJson() const {
  nlohmann::json j = {
      {"cohort", cohort_dir}, {"patients", patients}, {"plans_per_patient", plans_per_patient}};
  for (const DynamicsMetrics& m : methods) {
    const auto num = [](double v) { return std::isnan(v) ? nlohmann::json() : nlohmann::json(v); };
    nlohmann::json e = {{"method", m.method},
                        {"cases", m.cases},
                        {"dice", m.dice},
                        {"volume_rel_error_median", m.volume_rel_error},
                        {"volume_mae_ml", m.volume_mae_ml},
                        {"hu_mae", m.hu_mae},
                        {"spearman", num(m.spearman)},
                        {"spearman_patients", m.spearman_patients},
                        {"spearman_shuffled", num(m.spearman_shuffled)},
                        {"spearman_p", m.spearman_p},
                        {"simulation_seconds", m.seconds}};
    if (m.has_turing) {
      e["turing"] = {{"auc", m.turing.auc},
                     {"ci95", {m.turing.ci_low, m.turing.ci_high}},
                     {"real", m.turing.real},
                     {"synthetic", m.turing.synthetic},
                     {"folds", m.turing.folds}};
    }
    j["methods"].push_back(e);
  }
  return j.dump(2);
}

}  // namespace mewm::scenarios

// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Evaluation and training against synthetic cohorts. With `mewm cohort stats`, bench and the
// dynamics data, these are the only readers of a cohort's truth/ and outcomes.csv: plan
// selection is compared with the true optimum, survival is trained and scored on the observed
// outcomes, and the mechanistic calibration learns from a *training* cohort's biology. The
// planner itself never sees them.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "mewm/core/expected.h"
#include "mewm/core/render.h"
#include "mewm/core/stats.h"
#include "mewm/dynamics/calibration.h"
#include "mewm/dynamics/dynamics_model.h"
#include "mewm/survival/cox_survival.h"
#include "mewm/survival/metrics.h"
#include "mewm/tace/action_base.h"

namespace mewm::scenarios {

/// Item-set agreement of a chosen plan with the optimal one (MeWM's table).
struct PlanMatch {
  double precision = 0.0, recall = 0.0, f1 = 0.0, jaccard = 0.0;
  bool exact = false;
  /// F1 over the plans' drugs alone (the shipped vocabulary's, ActionBase::Default) and over
  /// their other items alone (Lipiodol and the embolics): where two plans disagree. Each is 1
  /// when neither plan holds an item of its kind.
  double drug_f1 = 0.0, embolic_f1 = 0.0;
};
PlanMatch ComparePlanItems(const Plan& chosen, const Plan& optimal);

/// Averages over patients for one method.
struct MethodScores {
  std::string method;
  /// false when the method cannot be scored on this run: the majority baseline needs at least 2
  /// other patients per patient (3 in all); with fewer, its leave-one-out majority would be the
  /// patient's own optimum. The scores are then 0, null in JSON and "n/a" in the table.
  bool available = true;
  int patients = 0;
  double f1 = 0.0, jaccard = 0.0, precision = 0.0, recall = 0.0, top1 = 0.0;
  double drug_f1 = 0.0, embolic_f1 = 0.0;  ///< PlanMatch::drug_f1 and ::embolic_f1, averaged
  double regret = 0.0;                     ///< mean of true risk(chosen) - true risk(optimal)
  double regret_median = 0.0;
  double risk_ratio = 0.0;  ///< mean of true risk(chosen) / true risk(optimal)
};

struct PlanEvaluation {
  std::string run_dir, cohort_dir;
  int patients = 0;  ///< finished patients compared
  int failed = 0;    ///< patients of the run that failed (not compared)
  /// The search's cost: outcome simulations per compared patient (the run's counters; the
  /// chosen plan's rendering is not counted).
  double simulations_per_patient = 0.0;
  std::vector<MethodScores> methods;  ///< pipeline first, then the baselines

  std::string FormatTable() const;
  std::string ToJson() const;
};

/// Compares a run's chosen plans with its synthetic cohort's truth, next to three baselines on
/// the same patients: a random valid plan (the exact expectation over every valid plan), the
/// majority optimal plan (leave-one-out over the other patients; not available with fewer than 3
/// finished patients) and the policy's first choice without search ("guideline first choice", or
/// "policy first plan" where the policy wrote whole plans). kNotFound when the run has no
/// synthetic cohort truth.
Expected<PlanEvaluation> EvaluatePlans(const std::string& run_dir);

/// Two runs' chosen plans compared patient by patient, on the patients both finished: two
/// settings (samples, backends, guidance) judged on the same patients, where the spread between
/// patients would hide a difference of means. Each difference is run A minus run B: its mean over
/// patients with a 95% percentile-bootstrap interval (2000 resamples, a fixed seed). Several
/// pairs of runs, each of its own cohort, pool their patients into one comparison.
struct PlanRunComparison {
  /// One entry per pair of runs compared, in order; cohort_dirs: run A's.
  std::vector<std::string> runs_a, runs_b, cohort_dirs;
  int patients = 0;            ///< finished in both runs of a pair: the patients compared
  int only_a = 0, only_b = 0;  ///< finished in one run of a pair only (not compared)
  MethodScores a, b;           ///< each run's chosen plans on the compared patients
  MeanInterval regret_diff, f1_diff;
  MeanInterval drug_f1_diff, embolic_f1_diff;  ///< f1_diff split by item kind (PlanMatch)
  int a_worse = 0, a_better = 0, same = 0;     ///< patients whose true regret under A is above,
                                               ///< below or equal to B's
  /// The typical patient, where a few large, high-risk patients dominate the mean: the median of
  /// the per-patient regret differences, and the exact two-sided sign test of `a_worse` against
  /// `a_better` (ties left out; 1 when every patient ties).
  double regret_diff_median = 0.0, sign_test_p = 1.0;
  double regret_ratio = 0.0;  ///< A's mean regret over B's; NaN when B's is 0
  /// A patient whose true regrets under A and B differ much: regret has heavy tails, so a few
  /// high-risk patients can decide the mean and the ratio.
  struct Decisive {
    std::string patient;  ///< its id; with several pairs, "<pair number from 1>:<id>"
    double regret_a = 0.0, regret_b = 0.0;
    std::string plan_a, plan_b;
    double ratio_without = 0.0;  ///< A's mean regret over B's without this patient; NaN as above
  };
  /// The (at most) three patients with the largest |regret A - regret B|, largest first; those
  /// that tie are left out.
  std::vector<Decisive> decisive;
  /// The comparison split by the size of each patient's largest lesion (the truth's
  /// covariates.max_diameter_mm), where a dynamics model's gap often lies: under 50 mm, 50 to
  /// 75 mm, 75 mm and over. Bands without a patient are left out.
  struct SizeBand {
    std::string band;  ///< "under 50 mm", "50 to 75 mm", "75 mm and over"
    int patients = 0;
    double regret_a = 0.0, regret_b = 0.0, f1_a = 0.0, f1_b = 0.0;  ///< means over its patients
    /// Its patients' summed regret difference A - B: the bands' sums add up to all patients'
    /// (a share of a total near 0 would mean little).
    double summed_difference = 0.0;
  };
  std::vector<SizeBand> by_size;

  std::string FormatTable() const;
  std::string ToJson() const;
};

/// Compares two runs of one synthetic cohort (the runs may read it from different folders). Fails
/// as EvaluatePlans does for either run; kInvalidArgument when no patient finished in both or
/// when a common patient's truth differs between the runs' cohorts (different cohorts).
Expected<PlanRunComparison> ComparePlanRuns(const std::string& run_a, const std::string& run_b);

/// Pools pairs of runs (A, B), each pair of one synthetic cohort, into one comparison over all
/// their common patients: a bar measured over several held-out cohorts. Fails as the pair
/// overload does for each pair, and with kInvalidArgument for no pairs, or when one patient (the
/// same id and truth) would count twice, as when two pairs planned one cohort.
Expected<PlanRunComparison> ComparePlanRuns(
    const std::vector<std::pair<std::string, std::string>>& runs);

struct SurvivalEvaluation {
  int patients = 0;
  double harrell_c = 0.0, uno_c = 0.0, integrated_brier = 0.0, auc_24 = 0.0;
  double oracle_harrell_c = 0.0;  ///< Harrell's C of the true hazard of the administered plan
  /// Calibration in one picture: the Kaplan-Meier curve of the observed follow-up, and the mean
  /// and the 10th to 90th percentile of the patients' predicted curves at `curve_times`
  /// (months, 200 steps up to the last follow-up).
  survival::KaplanMeier observed;
  int deaths = 0;
  std::vector<double> curve_times, predicted_mean, predicted_lo, predicted_hi;

  std::string FormatTable() const;
  std::string ToJson() const;
  /// The observed Kaplan-Meier curve against the predicted curves (core/plot.h), for a PNG.
  Expected<RgbImage> Plot() const;
};

/// Which post-treatment outcome a survival model is fit or scored on: the administered true image
/// (no generator), or a dynamics model's outcome of the administered plan (sample 0 of run `seed`,
/// on the region the planner hands its models). A survival model that scores a generator's
/// outcomes when planning can so be fit, and checked, on that generator's outcomes.
struct OutcomeSource {
  dynamics::DynamicsModel* generator = nullptr;
  std::uint64_t seed = 1;
};

/// Scores each held-out patient's administered outcome and compares with the observed follow-up.
/// `train_dir` gives the censoring distribution for Uno's C and the Brier score.
Expected<SurvivalEvaluation> EvaluateSurvival(survival::SurvivalModel& model,
                                              const std::string& cohort_dir,
                                              const std::string& train_dir,
                                              const std::function<void(int, int)>& progress = {},
                                              const OutcomeSource& source = {});

/// Fits the Cox survival backend on a training cohort's administered outcomes and follow-up.
Expected<std::unique_ptr<survival::CoxSurvival>> TrainCoxSurvival(
    const std::string& cohort_dir, survival::CoxTies ties,
    const survival::ModelProvenance& provenance, const std::function<void(int, int)>& progress = {},
    const OutcomeSource& source = {});

/// Fits the mechanistic calibration (visible features -> biology) on a training cohort.
Expected<dynamics::BiologyRegression> TrainMechanisticCalibration(
    const std::string& cohort_dir, double ridge,
    const std::function<void(int, int)>& progress = {});

}  // namespace mewm::scenarios

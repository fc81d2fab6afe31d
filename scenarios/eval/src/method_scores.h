// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Shared by the plan evaluation (evaluation.cc) and the policy evaluation (policy_eval.cc): the
// plan strings of result and truth files, and one method's running scores; and by every
// evaluation's JSON, the form of a bootstrap interval and of an undefined figure.
#pragma once

#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "mewm/core/stats.h"
#include "mewm/eval/evaluation.h"
#include "mewm/tace/action_base.h"

namespace mewm::scenarios {

/// A mean with its bootstrap interval as the evaluations' JSON writes it.
inline nlohmann::json IntervalJson(const MeanInterval& m) {
  return nlohmann::json{{"mean", m.mean}, {"lo", m.lo}, {"hi", m.hi}};
}

/// A figure that may be undefined (NaN) as the evaluations' JSON writes it: null when undefined.
inline nlohmann::json NumberOrNull(double v) {
  return std::isnan(v) ? nlohmann::json() : nlohmann::json(v);
}

/// A plan string of result.json or truth.json ("Lipiodol+Epirubicin", "none") as a Plan; the
/// items are not checked.
inline Plan PlanOf(const std::string& text) {
  std::vector<std::string> items;
  if (text == "none" || text.empty()) return Plan(items);
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, '+')) items.push_back(item);
  return Plan(items);
}

/// A patient's entry of the cohort's truth.json: the optimal plan and the true risk of every
/// valid plan.
struct TrueRisks {
  Plan optimal;
  std::map<std::string, double> risks;
};

/// Reads a patient's entry of truth.json. Throws (the json's exceptions, or std::runtime_error when
/// the optimal plan has no risk or a risk is not a positive number); the callers report
/// kCorruptData naming the file.
inline TrueRisks TrueRisksOf(const nlohmann::json& t) {
  TrueRisks truth;
  truth.optimal = PlanOf(t.at("optimal_plan").get<std::string>());
  for (const auto& [plan, risk] : t.at("plan_risks").items()) {
    // A relative hazard: risks of 0 printed HR/opt "-nan" and negative ones a negative regret.
    const double value = risk.get<double>();
    if (!(value > 0.0 && value < 1e300)) {
      throw std::runtime_error("the risk of plan " + plan + " is " + risk.dump() +
                               ", not a positive number");
    }
    truth.risks[plan] = value;
  }
  if (truth.risks.count(truth.optimal.ToString()) == 0) {
    throw std::runtime_error("the optimal plan " + truth.optimal.ToString() + " has no risk");
  }
  return truth;
}

/// Accumulates one method's per-patient results.
struct Accumulator {
  explicit Accumulator(std::string method) { s.method = std::move(method); }
  MethodScores s;
  std::vector<double> regrets;
  void Add(const PlanMatch& m, double regret, double ratio, double weight = 1.0) {
    s.f1 += weight * m.f1;
    s.jaccard += weight * m.jaccard;
    s.precision += weight * m.precision;
    s.recall += weight * m.recall;
    s.top1 += weight * (m.exact ? 1.0 : 0.0);
    s.drug_f1 += weight * m.drug_f1;
    s.embolic_f1 += weight * m.embolic_f1;
    s.regret += weight * regret;
    s.risk_ratio += weight * ratio;
  }
  MethodScores Finish(int patients) {
    const double n = std::max(1, patients);
    s.patients = patients;
    for (double* v : {&s.f1, &s.jaccard, &s.precision, &s.recall, &s.top1, &s.drug_f1,
                      &s.embolic_f1, &s.regret, &s.risk_ratio}) {
      *v /= n;
    }
    s.regret_median = Median(regrets);
    return s;
  }
};

/// One method's row in the evaluations' JSON; a method that could not be scored (too few patients
/// for a majority plan) has null numbers, never zeros that read like a result.
inline nlohmann::json MethodJson(const MethodScores& m) {
  if (!m.available) {
    nlohmann::json j = {{"method", m.method}, {"available", false}, {"patients", m.patients}};
    for (const char* key : {"f1", "jaccard", "precision", "recall", "top1", "f1_drugs",
                            "f1_embolics", "regret_mean", "regret_median", "risk_ratio_mean"}) {
      j[key] = nullptr;
    }
    return j;
  }
  return {{"method", m.method},
          {"available", true},
          {"patients", m.patients},
          {"f1", m.f1},
          {"jaccard", m.jaccard},
          {"precision", m.precision},
          {"recall", m.recall},
          {"top1", m.top1},
          {"f1_drugs", m.drug_f1},
          {"f1_embolics", m.embolic_f1},
          {"regret_mean", m.regret},
          {"regret_median", m.regret_median},
          {"risk_ratio_mean", m.risk_ratio}};
}

}  // namespace mewm::scenarios

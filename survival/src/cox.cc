// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/survival/cox.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <limits>
#include <nlohmann/json.hpp>
#include <numeric>
#include <string>
#include <utility>

namespace mewm::survival {
namespace {

constexpr char kJsonFormat[] = "mewm.cox";
constexpr int kJsonVersion = 1;
// Convergence threshold on the change of the penalized log-likelihood in one Newton step.
constexpr double kLogLikTolerance = 1e-9;
// Step halvings before concluding that no step improves the objective (2^-40 ~ 1e-12).
constexpr int kMaxHalvings = 40;

std::string Num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", v);
  return buf;
}

Unexpected Invalid(const std::string& message) {
  return MakeError(ErrorCode::kInvalidArgument, "FitCox: " + message);
}

/// Value, gradient and information (negative Hessian) of the partial log-likelihood.
struct Evaluation {
  double log_likelihood = 0.0;
  Eigen::VectorXd gradient;
  Eigen::MatrixXd information;
};

/// The partial likelihood of fixed data. Subjects are visited in decreasing time so that the risk
/// set sums (S0, S1, S2) accumulate; subjects tied in time form one group.
class PartialLikelihood {
 public:
  PartialLikelihood(const Eigen::MatrixXd& z, const std::vector<SurvivalRecord>& y, CoxTies ties)
      : zt_(z.transpose()), y_(y), ties_(ties), order_(y.size()) {
    std::iota(order_.begin(), order_.end(), std::size_t{0});
    std::stable_sort(order_.begin(), order_.end(),
                     [&](std::size_t a, std::size_t b) { return y[a].time > y[b].time; });
    for (std::size_t k = 0; k < order_.size();) {
      std::size_t end = k + 1;
      while (end < order_.size() && y[order_[end]].time == y[order_[k]].time) ++end;
      group_end_.push_back(end);
      k = end;
    }
  }

  Evaluation Evaluate(const Eigen::VectorXd& beta) const {
    const Eigen::Index p = zt_.rows();
    const Eigen::VectorXd eta = zt_.transpose() * beta;
    // exp(eta - c) with c = max eta cannot overflow; c is added back to every log term.
    const double c = eta.maxCoeff();
    Evaluation ev;
    ev.gradient = Eigen::VectorXd::Zero(p);
    ev.information = Eigen::MatrixXd::Zero(p, p);
    double s0 = 0.0;
    Eigen::VectorXd s1 = Eigen::VectorXd::Zero(p);
    Eigen::MatrixXd s2 = Eigen::MatrixXd::Zero(p, p);
    std::size_t start = 0;
    for (const std::size_t end : group_end_) {
      int deaths = 0;
      double d0 = 0.0;
      Eigen::VectorXd d1 = Eigen::VectorXd::Zero(p);
      Eigen::MatrixXd d2 = Eigen::MatrixXd::Zero(p, p);
      for (std::size_t k = start; k < end; ++k) {
        const std::size_t i = order_[k];
        const double w = std::exp(eta[Eigen::Index(i)] - c);
        const auto zi = zt_.col(Eigen::Index(i));
        s0 += w;
        s1.noalias() += w * zi;
        s2.noalias() += w * zi * zi.transpose();
        if (!y_[i].event) continue;
        ++deaths;
        d0 += w;
        d1.noalias() += w * zi;
        d2.noalias() += w * zi * zi.transpose();
        ev.log_likelihood += eta[Eigen::Index(i)];
        ev.gradient += zi;
      }
      start = end;
      for (int k = 0; k < deaths; ++k) {
        // Efron: the k-th of d tied deaths sees the risk set less k/d of the tied deaths' weight.
        const double f = ties_ == CoxTies::kEfron ? double(k) / double(deaths) : 0.0;
        const double den = s0 - f * d0;
        const Eigen::VectorXd a = (s1 - f * d1) / den;
        ev.log_likelihood -= std::log(den) + c;
        ev.gradient -= a;
        ev.information.noalias() += (s2 - f * d2) / den - a * a.transpose();
      }
    }
    return ev;
  }

  /// Breslow baseline cumulative hazard at the distinct event times, increasing.
  std::pair<std::vector<double>, std::vector<double>> Baseline(const Eigen::VectorXd& beta) const {
    const Eigen::VectorXd eta = zt_.transpose() * beta;
    const double c = eta.maxCoeff();
    std::vector<double> times;
    std::vector<double> increments;
    double s0 = 0.0;
    std::size_t start = 0;
    for (const std::size_t end : group_end_) {
      int deaths = 0;
      for (std::size_t k = start; k < end; ++k) {
        s0 += std::exp(eta[Eigen::Index(order_[k])] - c);
        deaths += y_[order_[k]].event ? 1 : 0;
      }
      if (deaths > 0) {
        times.push_back(y_[order_[start]].time);
        increments.push_back(double(deaths) * std::exp(-c) / s0);
      }
      start = end;
    }
    std::reverse(times.begin(), times.end());
    std::reverse(increments.begin(), increments.end());
    std::partial_sum(increments.begin(), increments.end(), increments.begin());
    return {std::move(times), std::move(increments)};
  }

 private:
  Eigen::MatrixXd zt_;  // p x n: one column per subject
  const std::vector<SurvivalRecord>& y_;
  CoxTies ties_;
  std::vector<std::size_t> order_;      // subjects by decreasing time
  std::vector<std::size_t> group_end_;  // end (in order_) of each group of equal times
};

Status CheckInputs(const Eigen::MatrixXd& x, const std::vector<SurvivalRecord>& y,
                   const std::vector<std::string>& names, double l2, int max_iter) {
  if (std::size_t(x.rows()) != y.size()) {
    return Invalid("X has " + std::to_string(x.rows()) + " rows but there are " +
                   std::to_string(y.size()) + " survival records");
  }
  if (std::size_t(x.cols()) != names.size()) {
    return Invalid("X has " + std::to_string(x.cols()) + " columns but there are " +
                   std::to_string(names.size()) + " feature names");
  }
  if (x.cols() == 0) return Invalid("X has no columns (expected at least one feature)");
  if (!std::isfinite(l2) || l2 < 0.0)
    return Invalid("l2 must be finite and >= 0 (got " + Num(l2) + ")");
  if (max_iter < 1) return Invalid("max_iter must be >= 1 (got " + std::to_string(max_iter) + ")");
  for (Eigen::Index j = 0; j < x.cols(); ++j) {
    for (Eigen::Index i = 0; i < x.rows(); ++i) {
      if (!std::isfinite(x(i, j))) {
        return Invalid("X(" + std::to_string(i) + ", " + std::to_string(j) + ") ['" +
                       names[std::size_t(j)] + "'] is not finite");
      }
    }
  }
  int events = 0;
  for (std::size_t i = 0; i < y.size(); ++i) {
    if (!std::isfinite(y[i].time) || y[i].time < 0.0) {
      return Invalid("y[" + std::to_string(i) + "].time must be finite and >= 0 (got " +
                     Num(y[i].time) + ")");
    }
    events += y[i].event ? 1 : 0;
  }
  if (events < 2) {
    return Invalid("needs at least 2 events (got " + std::to_string(events) + " among " +
                   std::to_string(y.size()) + " subjects)");
  }
  return {};
}

}  // namespace

Expected<CoxFit> FitCox(const Eigen::MatrixXd& x, const std::vector<SurvivalRecord>& y,
                        const std::vector<std::string>& names, CoxTies ties, double l2,
                        int max_iter, const std::map<std::string, double>& fixed) {
  MEWM_RETURN_IF_ERROR(CheckInputs(x, y, names, l2, max_iter));
  std::vector<Eigen::Index> held;  // features whose coefficient is given
  for (const auto& [name, value] : fixed) {
    const auto at = std::find(names.begin(), names.end(), name);
    if (at == names.end()) return Invalid("fixed coefficient for unknown feature '" + name + "'");
    if (!std::isfinite(value)) {
      return Invalid("fixed coefficient of '" + name + "' is not finite (" + Num(value) + ")");
    }
    held.push_back(Eigen::Index(at - names.begin()));
  }
  const Eigen::Index n = x.rows();
  const Eigen::Index p = x.cols();

  CoxFit fit;
  fit.feature_names = names;
  fit.mean = x.colwise().mean().transpose();
  fit.scale = Eigen::VectorXd::Ones(p);
  Eigen::MatrixXd z = x.rowwise() - fit.mean.transpose();
  for (Eigen::Index j = 0; j < p; ++j) {
    const double sd = std::sqrt(z.col(j).squaredNorm() / double(n - 1));
    if (sd > 1e-12 * (1.0 + std::abs(fit.mean[j]))) {
      fit.scale[j] = sd;
      z.col(j) /= sd;
    } else {
      z.col(j).setZero();  // constant column: carries no information, keep its beta at 0
    }
  }

  const PartialLikelihood likelihood(z, y, ties);
  const auto objective = [&](const Eigen::VectorXd& b, const Evaluation& ev) {
    return ev.log_likelihood - 0.5 * l2 * b.squaredNorm();
  };
  Eigen::VectorXd beta = Eigen::VectorXd::Zero(p);
  for (const auto& [name, value] : fixed) {
    const auto j = Eigen::Index(std::find(names.begin(), names.end(), name) - names.begin());
    beta[j] = value * fit.scale[j];  // per unit -> per standard deviation
  }
  Evaluation ev = likelihood.Evaluate(beta);
  double current = objective(beta, ev);
  if (!std::isfinite(current)) {
    return MakeError(ErrorCode::kInternal, "FitCox: partial likelihood is not finite at beta = 0");
  }

  for (int iter = 1; iter <= max_iter; ++iter) {
    Eigen::VectorXd gradient = ev.gradient - l2 * beta;
    Eigen::MatrixXd information = ev.information;
    information.diagonal().array() += l2;
    for (const Eigen::Index j : held) {  // a given coefficient never moves
      gradient[j] = 0.0;
      information.row(j).setZero();
      information.col(j).setZero();
      information(j, j) = 1.0;
    }
    // A tiny damping keeps the solve defined for constant columns when l2 = 0. It changes the
    // path, not the fixed point (gradient = 0).
    information.diagonal().array() += 1e-10 * std::max(1.0, information.diagonal().maxCoeff());
    const Eigen::VectorXd step = information.ldlt().solve(gradient);
    if (!step.allFinite()) break;

    bool accepted = false;
    double factor = 1.0;
    Eigen::VectorXd candidate;
    Evaluation candidate_ev;
    double candidate_value = current;
    for (int h = 0; h <= kMaxHalvings; ++h, factor *= 0.5) {
      candidate = beta + factor * step;
      candidate_ev = likelihood.Evaluate(candidate);
      candidate_value = objective(candidate, candidate_ev);
      if (std::isfinite(candidate_value) && candidate_value >= current) {
        accepted = true;
        break;
      }
    }
    if (!accepted) {
      // No step along an ascent direction improves the objective: it is at its numerical maximum.
      fit.converged = true;
      break;
    }
    fit.iterations = iter;
    const double change = candidate_value - current;
    beta = std::move(candidate);
    ev = std::move(candidate_ev);
    current = candidate_value;
    if (std::abs(change) < kLogLikTolerance) {
      fit.converged = true;
      break;
    }
  }

  fit.beta = beta;
  fit.log_likelihood = ev.log_likelihood;
  auto baseline = likelihood.Baseline(beta);
  fit.baseline_times = std::move(baseline.first);
  fit.baseline_cumhaz = std::move(baseline.second);
  return fit;
}

Eigen::VectorXd CoxFit::Coefficients() const { return beta.cwiseQuotient(scale); }

double CoxFit::LinearPredictor(const Eigen::VectorXd& x) const {
  if (x.size() != beta.size() || mean.size() != beta.size() || scale.size() != beta.size()) {
    return std::numeric_limits<double>::quiet_NaN();
  }
  return ((x - mean).cwiseQuotient(scale)).dot(beta);
}

double CoxFit::RelativeRisk(const Eigen::VectorXd& x) const { return std::exp(LinearPredictor(x)); }

RiskScore CoxFit::Predict(const Eigen::VectorXd& x) const {
  RiskScore score;
  score.risk = RelativeRisk(x);
  score.times_months = baseline_times;
  score.survival.reserve(baseline_cumhaz.size());
  for (const double h : baseline_cumhaz) score.survival.push_back(std::exp(-h * score.risk));
  return score;
}

namespace {

using nlohmann::json;

std::vector<double> ToVector(const Eigen::VectorXd& v) {
  return std::vector<double>(v.data(), v.data() + v.size());
}

constexpr double kMaxAbsBeta = 100.0;
constexpr std::size_t kMaxBaselineTimes = 100000;

Unexpected Corrupt(const std::string& message) {
  return MakeError(ErrorCode::kCorruptData, "Cox model JSON: " + message);
}

Expected<const json*> Field(const json& j, const char* key) {
  const auto it = j.find(key);
  if (it == j.end()) return Corrupt(std::string("missing field '") + key + "'");
  return &*it;
}

Expected<std::vector<double>> FiniteArray(const json& j, const char* key) {
  MEWM_TRY(const json* field, Field(j, key));
  if (!field->is_array()) return Corrupt(std::string("'") + key + "' must be an array of numbers");
  std::vector<double> out;
  out.reserve(field->size());
  for (const json& v : *field) {
    if (!v.is_number()) return Corrupt(std::string("'") + key + "' must be an array of numbers");
    out.push_back(v.get<double>());
    if (!std::isfinite(out.back())) {
      return Corrupt(std::string("'") + key + "' holds a non-finite number");
    }
  }
  return out;
}

Eigen::VectorXd ToEigen(const std::vector<double>& v) {
  return Eigen::Map<const Eigen::VectorXd>(v.data(), Eigen::Index(v.size()));
}

Expected<CoxFit> ParseCoxJson(const json& j) {
  if (!j.is_object()) return Corrupt("top level must be an object");
  MEWM_TRY(const json* format, Field(j, "format"));
  if (!format->is_string() || format->get<std::string>() != kJsonFormat) {
    return Corrupt(std::string("'format' must be \"") + kJsonFormat + "\"");
  }
  MEWM_TRY(const json* version, Field(j, "version"));
  if (!version->is_number_integer() || version->get<long long>() != kJsonVersion) {
    return Corrupt("'version' must be " + std::to_string(kJsonVersion));
  }

  CoxFit fit;
  MEWM_TRY(const json* names, Field(j, "feature_names"));
  if (!names->is_array()) return Corrupt("'feature_names' must be an array of strings");
  for (const json& name : *names) {
    if (!name.is_string()) return Corrupt("'feature_names' must be an array of strings");
    fit.feature_names.push_back(name.get<std::string>());
  }
  MEWM_TRY(const std::vector<double> beta, FiniteArray(j, "beta"));
  MEWM_TRY(const std::vector<double> mean, FiniteArray(j, "mean"));
  MEWM_TRY(const std::vector<double> scale, FiniteArray(j, "scale"));
  MEWM_TRY(fit.baseline_times, FiniteArray(j, "baseline_times"));
  MEWM_TRY(fit.baseline_cumhaz, FiniteArray(j, "baseline_cumhaz"));

  const std::size_t p = fit.feature_names.size();
  if (p == 0) return Corrupt("'feature_names' is empty");
  if (beta.size() != p || mean.size() != p || scale.size() != p) {
    return Corrupt("'beta', 'mean' and 'scale' must have one entry per feature (" +
                   std::to_string(p) + "; got " + std::to_string(beta.size()) + ", " +
                   std::to_string(mean.size()) + ", " + std::to_string(scale.size()) + ")");
  }
  for (std::size_t k = 0; k < p; ++k) {
    // On standardised features a coefficient is a log hazard ratio per SD: beyond 100 every
    // plan's hazard overflows or vanishes (1e300 scored every plan 0).
    if (std::abs(beta[k]) > kMaxAbsBeta) {
      return Corrupt("'beta' of feature '" + fit.feature_names[k] + "' is " + Num(beta[k]) +
                     ", beyond +-" + Num(kMaxAbsBeta) + " per standard deviation");
    }
    if (!(scale[k] > 0.0)) {
      return Corrupt("'scale' of feature '" + fit.feature_names[k] + "' must be > 0 (got " +
                     Num(scale[k]) + ")");
    }
  }
  const std::size_t m = fit.baseline_times.size();
  if (m > kMaxBaselineTimes) {
    // One time per distinct event of the training cohort; a longer curve is no model of ours
    // and slows every scored plan.
    return Corrupt("'baseline_times' holds " + std::to_string(m) + " times, over " +
                   std::to_string(kMaxBaselineTimes));
  }
  if (fit.baseline_cumhaz.size() != m) {
    return Corrupt("'baseline_times' and 'baseline_cumhaz' differ in length (" + std::to_string(m) +
                   " vs " + std::to_string(fit.baseline_cumhaz.size()) + ")");
  }
  for (std::size_t k = 0; k < m; ++k) {
    if (fit.baseline_times[k] < 0.0 ||
        (k > 0 && !(fit.baseline_times[k] > fit.baseline_times[k - 1]))) {
      return Corrupt("'baseline_times' must be >= 0 and strictly increasing (at index " +
                     std::to_string(k) + ")");
    }
    if (fit.baseline_cumhaz[k] < 0.0 ||
        (k > 0 && fit.baseline_cumhaz[k] < fit.baseline_cumhaz[k - 1])) {
      return Corrupt("'baseline_cumhaz' must be >= 0 and non-decreasing (at index " +
                     std::to_string(k) + ")");
    }
  }

  MEWM_TRY(const json* iterations, Field(j, "iterations"));
  if (!iterations->is_number_integer() || iterations->get<long long>() < 0 ||
      iterations->get<long long>() > std::numeric_limits<int>::max()) {
    return Corrupt("'iterations' must be a non-negative integer");
  }
  MEWM_TRY(const json* log_likelihood, Field(j, "log_likelihood"));
  if (!log_likelihood->is_number() || !std::isfinite(log_likelihood->get<double>())) {
    return Corrupt("'log_likelihood' must be a finite number");
  }
  MEWM_TRY(const json* converged, Field(j, "converged"));
  if (!converged->is_boolean()) return Corrupt("'converged' must be true or false");

  fit.beta = ToEigen(beta);
  fit.mean = ToEigen(mean);
  fit.scale = ToEigen(scale);
  fit.iterations = int(iterations->get<long long>());
  fit.log_likelihood = log_likelihood->get<double>();
  fit.converged = converged->get<bool>();
  return fit;
}

}  // namespace

std::string CoxFit::ToJson() const {
  json j;
  j["format"] = kJsonFormat;
  j["version"] = kJsonVersion;
  j["feature_names"] = feature_names;
  j["beta"] = ToVector(beta);
  j["mean"] = ToVector(mean);
  j["scale"] = ToVector(scale);
  j["baseline_times"] = baseline_times;
  j["baseline_cumhaz"] = baseline_cumhaz;
  j["iterations"] = iterations;
  j["log_likelihood"] = log_likelihood;
  j["converged"] = converged;
  // Invalid UTF-8 in a feature name is replaced rather than thrown.
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

Expected<CoxFit> CoxFit::FromJson(const std::string& text) {
  try {
    const json j = json::parse(text, /*cb=*/nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) return Corrupt("not valid JSON");
    return ParseCoxJson(j);
  } catch (const json::exception& e) {
    // The checks above avoid throwing accessors; this is the module edge for anything left.
    return Corrupt(std::string("unexpected JSON error: ") + e.what());
  }
}

}  // namespace mewm::survival

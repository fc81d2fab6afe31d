// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "search.h"

#include <algorithm>
#include <chrono>

#include "mewm/core/assert.h"
#include "mewm/core/seed.h"
#include "mewm/core/stats.h"

namespace mewm::scenarios::detail {
namespace {

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

/// The mean curve over the samples, and the lowest and highest sample's S(t) at its times.
survival::RiskScore MeanCurve(const std::vector<const survival::RiskScore*>& curves,
                              std::vector<double>* lo, std::vector<double>* hi) {
  survival::RiskScore mean;
  if (curves.empty()) return mean;
  mean.times_months = curves.front()->times_months;
  mean.survival.assign(mean.times_months.size(), 0.0);
  lo->assign(mean.times_months.size(), 1.0);
  hi->assign(mean.times_months.size(), 0.0);
  for (const survival::RiskScore* c : curves) {
    mean.risk += c->risk / double(curves.size());
    // Validated once per curve: SurvivalAt validates the whole curve at every call, which made
    // this quadratic in the baseline's length (a model of 200,000 times took minutes a patient).
    const bool valid = bool(c->Validate());
    for (std::size_t i = 0; i < mean.times_months.size(); ++i) {
      const double v = valid ? c->SurvivalAtUnchecked(mean.times_months[i]) : 0.0;
      mean.survival[i] += v / double(curves.size());
      (*lo)[i] = std::min((*lo)[i], v);
      (*hi)[i] = std::max((*hi)[i], v);
    }
  }
  return mean;
}

}  // namespace

PlanOrder PlanOrder::ByItems(const policy::Proposal& proposal) {
  PlanOrder order;
  for (const std::vector<std::string>* list : {&proposal.drugs, &proposal.embolics}) {
    for (std::size_t i = 0; i < list->size(); ++i) order.item_rank_.emplace((*list)[i], int(i));
  }
  return order;
}

PlanOrder PlanOrder::ByPlans(const std::vector<Plan>& plans) {
  PlanOrder order;
  for (std::size_t i = 0; i < plans.size(); ++i) {
    order.plan_rank_.emplace(plans[i].ToString(), int(i));
  }
  return order;
}

std::vector<int> PlanOrder::Rank(const Plan& plan) const {
  if (!plan_rank_.empty()) {
    const auto it = plan_rank_.find(plan.ToString());
    return {it == plan_rank_.end() ? int(plan_rank_.size()) : it->second};
  }
  std::vector<int> rank;
  for (const std::string& item : plan.items()) {
    const auto it = item_rank_.find(item);
    if (it != item_rank_.end()) rank.push_back(it->second);
  }
  std::sort(rank.begin(), rank.end());
  return rank;
}

bool PlanOrder::operator()(const CandidateScore& a, const CandidateScore& b) const {
  if (a.risk_mean != b.risk_mean) return a.risk_mean < b.risk_mean;
  const std::vector<int> rank_a = Rank(a.plan), rank_b = Rank(b.plan);
  if (rank_a != rank_b) return rank_a < rank_b;
  return a.plan.ToString() < b.plan.ToString();
}

int CountKind(const Plan& plan, const ActionBase& actions, ItemKind kind) {
  int n = 0;
  for (const std::string& item : plan.items()) {
    auto found = actions.Find(item);
    if (found && found->kind == kind) ++n;
  }
  return n;
}

Search::Search(const PlannerSpec& spec, const PatientCase& patient, std::uint64_t run_seed,
               dynamics::DynamicsModel& dynamics, survival::SurvivalModel& survival,
               const PlannerObserver& observer, PlanDecision* out)
    : spec_(spec),
      patient_(patient),
      run_seed_(run_seed),
      dynamics_(dynamics),
      survival_(survival),
      observer_(observer),
      out_(out) {}

Expected<std::vector<CandidateScore>> Search::Evaluate(const std::vector<Plan>& plans,
                                                       const std::string& stage, int step) {
  std::vector<SimulationRequest> requests;
  std::vector<bool> all_hit(plans.size(), true);
  for (std::size_t p = 0; p < plans.size(); ++p) {
    for (int s = 0; s < spec_.samples; ++s) {
      const auto key = std::make_pair(plans[p].ToString(), s);
      if (memo_.count(key) || pending_.count(key)) {
        ++out_->counters.memo_hits;
        continue;
      }
      pending_.insert(key);
      all_hit[p] = false;
      requests.push_back(Planner::Request(run_seed_, patient_.id, plans[p], s));
    }
  }
  for (std::size_t begin = 0; begin < requests.size(); begin += std::size_t(spec_.max_batch)) {
    const std::size_t end = std::min(requests.size(), begin + std::size_t(spec_.max_batch));
    std::vector<SimulationRequest> batch(requests.begin() + std::ptrdiff_t(begin),
                                         requests.begin() + std::ptrdiff_t(end));
    MEWM_TRY(std::vector<SampleScore> scores, Simulate(batch));
    MEWM_ASSERT(scores.size() == batch.size(), "one score per request");
    for (std::size_t r = 0; r < batch.size(); ++r) {
      const auto key = std::make_pair(batch[r].plan.ToString(), batch[r].sample_index);
      MEWM_ASSERT(memo_.count(key) == 0, "plan " + key.first + " sample " +
                                             std::to_string(key.second) + " simulated twice");
      memo_[key] = std::move(scores[r]);
      pending_.erase(key);
    }
  }
  std::vector<CandidateScore> result;
  for (std::size_t p = 0; p < plans.size(); ++p) {
    std::vector<const SampleScore*> samples;
    for (int s = 0; s < spec_.samples; ++s) {
      samples.push_back(&memo_.at(std::make_pair(plans[p].ToString(), s)));
    }
    result.push_back(Aggregate(plans[p], samples));
    Report(result.back(), stage, step, all_hit[p]);
  }
  return result;
}

Expected<CandidateScore> Search::EvaluateFresh(const Plan& plan, int beam, const std::string& stage,
                                               int step) {
  std::vector<SampleScore> scores;
  for (int s = 0; s < spec_.samples; ++s) {
    const std::uint64_t seed = DeriveSeed(Planner::SampleSeed(run_seed_, patient_.id, plan, s),
                                          {std::uint64_t(beam), fresh_counter_++});
    // Fresh, unshared draws per call, as MeWM's loop samples new noise every time.
    MEWM_TRY(std::vector<SampleScore> one, Simulate({{plan, s, seed, 0}}));
    scores.push_back(std::move(one.front()));
  }
  std::vector<const SampleScore*> samples;
  for (const SampleScore& s : scores) samples.push_back(&s);
  CandidateScore score = Aggregate(plan, samples);
  Report(score, stage, step, false);
  return score;
}

Expected<std::vector<SampleScore>> Search::Simulate(const std::vector<SimulationRequest>& batch) {
  if (observer_.cancelled && observer_.cancelled()) {
    return MakeError(ErrorCode::kCancelled, "planning cancelled");
  }
  const auto t0 = Clock::now();
  const std::int64_t work_before = dynamics_.evaluations();
  MEWM_TRY(std::vector<Outcome> outcomes, dynamics_.Simulate(patient_, batch));
  out_->counters.model_evaluations += dynamics_.evaluations() - work_before;
  out_->counters.dynamics_seconds += Since(t0);
  if (observer_.stage_seconds) observer_.stage_seconds("dynamics", Since(t0));
  ++out_->counters.batches;
  if (outcomes.size() != batch.size()) {
    return MakeError(ErrorCode::kInternal, dynamics_.name() + " returned " +
                                               std::to_string(outcomes.size()) + " outcomes for " +
                                               std::to_string(batch.size()) + " requests");
  }
  out_->counters.simulations += std::int64_t(batch.size());
  const auto t1 = Clock::now();
  std::vector<SampleScore> scores;
  for (std::size_t r = 0; r < batch.size(); ++r) {
    MEWM_RETURN_IF_ERROR(CheckOutcome(outcomes[r], batch[r], patient_));
    MEWM_TRY(survival::RiskScore score, survival_.Score(patient_, outcomes[r]));
    ++out_->counters.survival_scores;
    scores.push_back({score.risk, std::move(score)});
  }
  out_->counters.survival_seconds += Since(t1);
  if (observer_.stage_seconds) observer_.stage_seconds("survival", Since(t1));
  return scores;
}

CandidateScore Search::Aggregate(const Plan& plan, const std::vector<const SampleScore*>& samples) {
  CandidateScore c;
  c.plan = plan;
  std::vector<const survival::RiskScore*> curves;
  for (const SampleScore* s : samples) {
    c.sample_risks.push_back(s->risk);
    curves.push_back(&s->curve);
  }
  std::tie(c.risk_mean, c.risk_std) = MeanStd(c.sample_risks);
  c.curve = MeanCurve(curves, &c.survival_lo, &c.survival_hi);
  c.curve.risk = c.risk_mean;
  return c;
}

void Search::Report(const CandidateScore& score, const std::string& stage, int step,
                    bool memo_hit) {
  ++out_->counters.candidates;
  const std::string key = score.plan.ToString();
  auto it = evaluated_index_.find(key);
  if (it == evaluated_index_.end()) {
    evaluated_index_[key] = out_->evaluated.size();
    out_->evaluated.push_back(score);
  } else {
    out_->evaluated[it->second] = score;
  }
  if (observer_.candidate) observer_.candidate(score, stage, step, memo_hit);
}

bool SearchSpace::Inside(const Plan& plan) const {
  return within.empty() || std::any_of(within.begin(), within.end(), [&](const Plan& w) {
           return std::all_of(plan.items().begin(), plan.items().end(),
                              [&](const std::string& i) { return w.Contains(i); });
         });
}

std::vector<Plan> SearchSpace::Expand(const Plan& plan, const SearchStage& stage) const {
  std::vector<Plan> out;
  for (const std::string& item : stage.items) {
    if (plan.Contains(item)) continue;
    Plan next = plan.With(item);
    if (Inside(next) && CountKind(next, actions, stage.kind) <= stage.horizon &&
        actions.Violations(next, protocol).empty()) {
      out.push_back(next);
    }
  }
  return out;
}

}  // namespace mewm::scenarios::detail

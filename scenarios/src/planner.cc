// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/scenarios/planner.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <optional>
#include <set>

#include "mewm/core/assert.h"
#include "mewm/core/plan_space.h"
#include "mewm/core/seed.h"

namespace mewm::scenarios {
namespace {

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

/// Models see the tumor's neighbourhood only; outcomes then cost a small copy instead of the
/// whole CT. 20 mm covers the mechanistic margin (6 mm) plus a follow-up's growth; a backend that
/// reads more context (the diffusion model's crops) asks for more.
constexpr double kPlanningMarginMm = 20.0;

struct SampleScore {
  double risk = 0.0;
  survival::RiskScore curve;
};

survival::RiskScore MeanCurve(const std::vector<const survival::RiskScore*>& curves) {
  survival::RiskScore mean;
  if (curves.empty()) return mean;
  mean.times_months = curves.front()->times_months;
  mean.survival.assign(mean.times_months.size(), 0.0);
  for (const survival::RiskScore* c : curves) {
    mean.risk += c->risk / double(curves.size());
    for (std::size_t i = 0; i < mean.times_months.size(); ++i) {
      const Expected<double> s = c->SurvivalAt(mean.times_months[i]);
      mean.survival[i] += (s ? *s : 0.0) / double(curves.size());
    }
  }
  return mean;
}

bool Better(const CandidateScore& a, const CandidateScore& b) {
  if (a.risk_mean != b.risk_mean) return a.risk_mean < b.risk_mean;
  return a.plan.ToString() < b.plan.ToString();  // deterministic tie-break
}

/// The state of one patient's search.
class Search {
 public:
  Search(const PlannerSpec& spec, const PatientCase& patient, std::uint64_t run_seed,
         dynamics::DynamicsModel& dynamics, survival::SurvivalModel& survival,
         const PlannerObserver& observer, PlanDecision* out)
      : spec_(spec),
        patient_(patient),
        run_seed_(run_seed),
        dynamics_(dynamics),
        survival_(survival),
        observer_(observer),
        out_(out) {}

  /// Scores `plans` with T samples each: memoised samples are reused, the rest go to the
  /// dynamics model in batches of at most max_batch requests.
  Expected<std::vector<CandidateScore>> Evaluate(const std::vector<Plan>& plans,
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
        requests.push_back({plans[p], s, Planner::SampleSeed(run_seed_, patient_.id, plans[p], s),
                            Planner::SharedSeed(run_seed_, patient_.id, s)});
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

  /// Scores one plan with fresh samples, one request per Simulate call and no memo: MeWM's loop.
  Expected<CandidateScore> EvaluateFresh(const Plan& plan, int beam, const std::string& stage,
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

 private:
  Expected<std::vector<SampleScore>> Simulate(const std::vector<SimulationRequest>& batch) {
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
      return MakeError(ErrorCode::kInternal,
                       dynamics_.name() + " returned " + std::to_string(outcomes.size()) +
                           " outcomes for " + std::to_string(batch.size()) + " requests");
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

  CandidateScore Aggregate(const Plan& plan, const std::vector<const SampleScore*>& samples) {
    CandidateScore c;
    c.plan = plan;
    std::vector<const survival::RiskScore*> curves;
    for (const SampleScore* s : samples) {
      c.sample_risks.push_back(s->risk);
      curves.push_back(&s->curve);
    }
    std::tie(c.risk_mean, c.risk_std) = MeanStd(c.sample_risks);
    c.curve = MeanCurve(curves);
    c.curve.risk = c.risk_mean;
    return c;
  }

  void Report(const CandidateScore& score, const std::string& stage, int step, bool memo_hit) {
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

  const PlannerSpec& spec_;
  const PatientCase& patient_;
  std::uint64_t run_seed_;
  dynamics::DynamicsModel& dynamics_;
  survival::SurvivalModel& survival_;
  const PlannerObserver& observer_;
  PlanDecision* out_;
  std::map<std::pair<std::string, int>, SampleScore> memo_;
  std::set<std::pair<std::string, int>> pending_;
  std::map<std::string, std::size_t> evaluated_index_;
  std::uint64_t fresh_counter_ = 0;
};

int CountKind(const Plan& plan, const ActionBase& actions, ItemKind kind) {
  int n = 0;
  for (const std::string& item : plan.items()) {
    auto found = actions.Find(item);
    if (found && found->kind == kind) ++n;
  }
  return n;
}

}  // namespace

std::pair<double, double> MeanStd(const std::vector<double>& values) {
  if (values.empty()) return {0.0, 0.0};
  double mean = 0.0;
  for (double v : values) mean += v;
  mean /= double(values.size());
  if (values.size() < 2) return {mean, 0.0};
  double ss = 0.0;
  for (double v : values) ss += (v - mean) * (v - mean);
  return {mean, std::sqrt(ss / double(values.size() - 1))};
}

std::uint64_t Planner::SampleSeed(std::uint64_t run_seed, const std::string& patient_id,
                                  const mewm::Plan& plan, int sample_index) {
  // Seed 0 means "unperturbed" to the mechanistic model; sample seeds are never 0.
  const std::uint64_t seed = DeriveSeed(
      run_seed, {HashString(patient_id), HashString(plan.ToString()), std::uint64_t(sample_index)});
  return seed == 0 ? 1 : seed;
}

std::uint64_t Planner::SharedSeed(std::uint64_t run_seed, const std::string& patient_id,
                                  int sample_index) {
  const std::uint64_t seed = DeriveSeed(
      run_seed, {HashString(patient_id), HashString("shared"), std::uint64_t(sample_index)});
  return seed == 0 ? 1 : seed;
}

Expected<Planner> Planner::Create(const PlannerSpec& spec, const ActionBase& actions,
                                  const std::string& protocol,
                                  const std::vector<std::string>& require,
                                  const std::vector<std::string>& forbid,
                                  dynamics::DynamicsModel& dynamics,
                                  survival::SurvivalModel& survival) {
  if (spec.beams < 1 || spec.samples < 1 || spec.max_batch < 1 || spec.drug_horizon < 0 ||
      spec.embolic_horizon < 0) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "planner: beams, samples and max_batch must be >= 1, horizons >= 0");
  }
  MEWM_TRY(std::vector<std::string> root, actions.MandatoryItems(protocol));
  root.insert(root.end(), require.begin(), require.end());
  MEWM_TRY(const mewm::Plan root_plan, actions.MakePlan(root));
  if (auto valid = actions.Validate(root_plan, protocol); !valid) {
    return valid.error().WithContext("planner: the required items");
  }
  if (CountKind(root_plan, actions, ItemKind::kDrug) > spec.drug_horizon ||
      CountKind(root_plan, actions, ItemKind::kEmbolic) > spec.embolic_horizon) {
    return MakeError(ErrorCode::kInvalidArgument, "planner: the mandatory and required items (" +
                                                      root_plan.ToString() +
                                                      ") exceed the horizons");
  }
  return Planner(spec, actions, protocol, require, forbid, dynamics, survival);
}

Expected<PlanDecision> Planner::Plan(const PatientCase& full_patient,
                                     const policy::Proposal& proposal, std::uint64_t run_seed,
                                     const PlannerObserver& observer) {
  const auto t0 = Clock::now();
  MEWM_TRY(const PatientCase patient,
           TumorRegion(full_patient, std::max(kPlanningMarginMm, dynamics_->context_margin_mm())));
  PlanDecision decision;
  Search search(spec_, patient, run_seed, *dynamics_, *survival_, observer, &decision);

  const auto allowed = [&](const std::string& item) {
    return std::find(forbid_.begin(), forbid_.end(), item) == forbid_.end();
  };
  std::vector<std::string> drugs, embolics;
  for (const std::string& d : proposal.drugs) {
    if (allowed(d)) drugs.push_back(d);
  }
  MEWM_TRY(std::vector<std::string> root_items, actions_.MandatoryItems(protocol_));
  for (const std::string& e : proposal.embolics) {
    if (allowed(e) && std::find(root_items.begin(), root_items.end(), e) == root_items.end()) {
      embolics.push_back(e);
    }
  }
  root_items.insert(root_items.end(), require_.begin(), require_.end());
  MEWM_TRY(const mewm::Plan root, actions_.MakePlan(root_items));

  const auto valid = [&](const mewm::Plan& p) { return actions_.Violations(p, protocol_).empty(); };
  const auto expand = [&](const mewm::Plan& p, const std::vector<std::string>& items, ItemKind kind,
                          int horizon) {
    std::vector<mewm::Plan> out;
    for (const std::string& item : items) {
      if (p.Contains(item)) continue;
      mewm::Plan next = p.With(item);
      if (CountKind(next, actions_, kind) <= horizon && valid(next)) out.push_back(next);
    }
    return out;
  };
  struct Stage {
    const char* name;
    const std::vector<std::string>* items;
    ItemKind kind;
    int horizon;
    int steps;
  };
  const std::vector<Stage> stages = {
      {"drug", &drugs, ItemKind::kDrug, spec_.drug_horizon,
       spec_.drug_horizon - CountKind(root, actions_, ItemKind::kDrug)},
      {"embolic", &embolics, ItemKind::kEmbolic, spec_.embolic_horizon,
       spec_.embolic_horizon - CountKind(root, actions_, ItemKind::kEmbolic)}};

  if (spec_.search == SearchMode::kExhaustive) {
    MEWM_TRY(const std::vector<mewm::Plan> all,
             EnumeratePlans(actions_, spec_.drug_horizon, spec_.embolic_horizon, protocol_));
    std::set<std::string> items(root_items.begin(), root_items.end());
    items.insert(drugs.begin(), drugs.end());
    items.insert(embolics.begin(), embolics.end());
    std::vector<mewm::Plan> plans;
    for (const mewm::Plan& p : all) {
      const bool inside = std::all_of(p.items().begin(), p.items().end(),
                                      [&](const std::string& i) { return items.count(i) > 0; });
      const bool has_required = std::all_of(root_items.begin(), root_items.end(),
                                            [&](const std::string& i) { return p.Contains(i); });
      if (inside && has_required) plans.push_back(p);
    }
    MEWM_TRY(std::vector<CandidateScore> scores, search.Evaluate(plans, "exhaustive", 1));
    std::sort(scores.begin(), scores.end(), Better);
    if (observer.beam) {
      observer.beam(
          "exhaustive", 1,
          std::vector<CandidateScore>(
              scores.begin(), scores.begin() + std::min<std::ptrdiff_t>(
                                                   spec_.beams, std::ptrdiff_t(scores.size()))));
    }
    decision.best = scores.front();
  } else if (spec_.search == SearchMode::kBeam) {
    MEWM_TRY(std::vector<CandidateScore> kept, search.Evaluate({root}, "root", 0));
    for (const Stage& stage : stages) {
      for (int step = 1; step <= stage.steps; ++step) {
        std::vector<mewm::Plan> candidates;
        std::set<mewm::Plan> seen;
        for (const CandidateScore& k : kept) {
          if (seen.insert(k.plan).second) candidates.push_back(k.plan);
        }
        for (const CandidateScore& k : kept) {
          for (mewm::Plan& next : expand(k.plan, *stage.items, stage.kind, stage.horizon)) {
            if (seen.insert(next).second) candidates.push_back(std::move(next));
          }
        }
        MEWM_TRY(std::vector<CandidateScore> scores, search.Evaluate(candidates, stage.name, step));
        std::sort(scores.begin(), scores.end(), Better);
        scores.resize(std::min(scores.size(), std::size_t(spec_.beams)));
        kept = std::move(scores);
        if (observer.beam) observer.beam(stage.name, step, kept);
      }
    }
    decision.best = kept.front();
  } else {
    // reference: MeWM's released loop. Beams start without the protocol's mandatory items; the
    // drug stage scores drug-only plans; a beam takes its argmin candidate only when it beats the
    // beam's current score; the worst beam is then overwritten by the best; the mandatory items
    // are appended unscored; the embolic stage repeats the same. No memo, one candidate per call.
    struct Beam {
      mewm::Plan plan;
      std::optional<CandidateScore> score;
    };
    std::vector<Beam> beams(std::size_t(spec_.beams), Beam{mewm::Plan(require_), std::nullopt});
    const auto rules_ok = [&](const mewm::Plan& p) { return actions_.Violations(p, "").empty(); };
    const auto run_stage = [&](const Stage& stage, int steps) -> Status {
      for (int step = 1; step <= steps; ++step) {
        for (std::size_t b = 0; b < beams.size(); ++b) {
          bool improved = false;
          for (const std::string& item : *stage.items) {
            const mewm::Plan next = beams[b].plan.With(item);
            if (beams[b].plan.Contains(item) || !rules_ok(next)) continue;
            MEWM_TRY(CandidateScore score, search.EvaluateFresh(next, int(b), stage.name, step));
            if (!beams[b].score || score.risk_mean < beams[b].score->risk_mean) {
              beams[b].score = std::move(score);
              improved = true;
            }
          }
          // Only an improving candidate changes the plan; otherwise the beam keeps its items.
          if (improved) beams[b].plan = beams[b].score->plan;
        }
        const auto by_score = [](const Beam& x, const Beam& y) {
          const double a = x.score ? x.score->risk_mean : HUGE_VAL;
          const double c = y.score ? y.score->risk_mean : HUGE_VAL;
          return a < c;
        };
        auto best = std::min_element(beams.begin(), beams.end(), by_score);
        auto worst = std::max_element(beams.begin(), beams.end(), by_score);
        *worst = *best;
        if (observer.beam) {
          std::vector<CandidateScore> kept;
          for (const Beam& beam : beams) {
            if (beam.score) kept.push_back(*beam.score);
          }
          observer.beam(stage.name, step, kept);
        }
      }
      return {};
    };
    MEWM_RETURN_IF_ERROR(run_stage(stages[0], stages[0].steps));
    MEWM_TRY(const std::vector<std::string> mandatory, actions_.MandatoryItems(protocol_));
    for (Beam& beam : beams) {
      for (const std::string& item : mandatory) beam.plan = beam.plan.With(item);
    }
    MEWM_RETURN_IF_ERROR(run_stage(stages[1], stages[1].steps));
    const Beam* best = nullptr;
    for (const Beam& beam : beams) {
      if (beam.score && (!best || beam.score->risk_mean < best->score->risk_mean)) best = &beam;
    }
    if (best == nullptr) {
      // No candidate at all (empty proposal): score the mandatory plan once.
      MEWM_TRY(decision.best, search.EvaluateFresh(beams.front().plan, 0, "root", 0));
    } else {
      decision.best = *best->score;
      decision.best.plan = best->plan;  // as released: the score may predate the last items
    }
  }
  decision.counters.search_seconds = Since(t0);
  return decision;
}

}  // namespace mewm::scenarios

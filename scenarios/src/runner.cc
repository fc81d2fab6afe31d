// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/scenarios/runner.h"

#include <chrono>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "mewm/core/file_util.h"
#include "mewm/core/log.h"
#include "mewm/core/seed.h"
#include "mewm/core/vdb_io.h"
#include "mewm/dynamics/calibration.h"
#include "mewm/scenarios/cohort.h"
#include "mewm/scenarios/planner.h"
#include "mewm/survival/cox_survival.h"

namespace mewm::scenarios {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

using Clock = std::chrono::steady_clock;

PlanScoreView View(const CandidateScore& c) { return {c.plan.items(), c.risk_mean, c.risk_std}; }

json CandidateJson(const CandidateScore& c) {
  return {{"plan", c.plan.ToString()},
          {"items", c.plan.items()},
          {"risk_mean", c.risk_mean},
          {"risk_std", c.risk_std},
          {"sample_risks", c.sample_risks}};
}

constexpr const char* kResultFormat = "mewm.patient_result";

/// The synthetic cohort for this scenario: reused when its manifest matches, else generated.
Status PrepareSyntheticCohort(const ScenarioSpec& spec, const std::string& dir,
                              const std::function<void(int, int)>& progress,
                              const std::function<bool()>& cancelled) {
  const fs::path manifest = fs::path(dir) / "manifest.json";
  if (fs::exists(manifest)) {
    MEWM_TRY(const std::string text, ReadFile(manifest.string()));
    try {
      const json m = json::parse(text);
      if (m.at("seed").get<std::string>() == std::to_string(spec.cohort.seed) &&
          m.at("n").get<int>() == spec.cohort.n &&
          m.at("spacing_mm").get<double>() == spec.cohort.spacing_mm &&
          m.at("world_version").get<std::string>() == kWorldVersion) {
        return {};
      }
    } catch (const std::exception&) {
      // Unreadable: regenerate below.
    }
  }
  CohortOptions c;
  c.n = spec.cohort.n;
  c.seed = spec.cohort.seed;
  c.out_dir = dir;
  c.force = true;
  c.write_nifti = false;
  c.world.spacing_mm = spec.cohort.spacing_mm;
  c.progress = progress;
  c.cancelled = cancelled;
  return GenerateCohort(c, spec.actions);
}

}  // namespace

Expected<std::unique_ptr<dynamics::DynamicsModel>> LoadDynamics(const ScenarioSpec& spec) {
  if (spec.dynamics_backend == "diffusion") {
    dynamics::DiffusionBackendOptions options = spec.diffusion;
    options.actions = spec.actions;
    options.device = spec.device;
    // MeWM's loop as released samples with 200 ancestral steps; `reference` reproduces it.
    if (spec.planner.search == SearchMode::kReference) {
      options.sampler = dynamics::ReferenceSampler();
    }
    return dynamics::CreateRegisteredDiffusion(options);
  }
  MEWM_TRY(const dynamics::BiologyRegression calibration,
           dynamics::BiologyRegression::Load(spec.calibration));
  dynamics::MechanisticConfig config = spec.mechanistic;
  if (spec.calibrated_uncertainty) {
    // Samples follow the calibration's predictive spread instead of a fixed sigma.
    for (std::size_t k = 0; k < config.sample_log_sd.size(); ++k) {
      config.sample_log_sd[k] = std::min(4.0, calibration.residual_sd()[Eigen::Index(k)]);
    }
  }
  MEWM_TRY(auto model, dynamics::MechanisticDynamics::Create(config, calibration.AsSource()));
  return std::unique_ptr<dynamics::DynamicsModel>(std::move(model));
}

Expected<Models> LoadModels(const ScenarioSpec& spec) {
  Models models;
  MEWM_TRY(models.policy, policy::GuidelinePolicy::Create(spec.actions, spec.guideline));
  MEWM_TRY(models.dynamics, LoadDynamics(spec));
  MEWM_TRY(models.survival, survival::CoxSurvival::Load(spec.survival_model));
  return models;
}

Expected<std::vector<CohortEntry>> PrepareCohort(const ScenarioSpec& spec,
                                                 const std::string& synthetic_dir,
                                                 const std::function<void(int, int)>& progress,
                                                 const std::function<bool()>& cancelled) {
  if (spec.cohort.source == CohortSpec::Source::kManifest) {
    return ReadManifest(spec.cohort.manifest);
  }
  MEWM_RETURN_IF_ERROR(PrepareSyntheticCohort(spec, synthetic_dir, progress, cancelled));
  return ReadSyntheticCohort(synthetic_dir);
}

struct Runner::Impl {
  ScenarioSpec spec;
  RunOptions options;
  std::string run_id, out, cohort_dir;
  std::unique_ptr<policy::PolicyModel> policy;
  std::unique_ptr<dynamics::DynamicsModel> dynamics;
  std::unique_ptr<survival::SurvivalModel> survival;
  std::uint64_t seq = 0;

  Status Emit(EventSink& sink, EventBody body) {
    return sink.Emit(Event{run_id, ++seq, NowNs(), std::move(body)});
  }

  Expected<bool> AlreadyFinished(const std::string& id) const {
    const fs::path result = fs::path(out) / "patients" / id / "result.json";
    if (!fs::exists(result)) return false;
    MEWM_TRY(const std::string text, ReadFile(result.string()));
    try {
      return json::parse(text).at("status").get<std::string>() == "finished";
    } catch (const std::exception&) {
      return false;  // unreadable: plan it again
    }
  }

  /// Plans one patient and writes its folder atomically. Returns the decision's event data.
  Status PlanPatient(const CohortEntry& entry, EventSink& sink, PatientFinished* finished) {
    const auto t0 = Clock::now();
    MEWM_TRY(const PatientCase patient, LoadPatient(entry));
    const auto t_policy = Clock::now();
    MEWM_TRY(const policy::Proposal proposal, policy->Propose(patient));
    if (options.stage_seconds) {
      options.stage_seconds("policy",
                            std::chrono::duration<double>(Clock::now() - t_policy).count());
    }
    MEWM_RETURN_IF_ERROR(Emit(
        sink, ProposalMade{patient.id, proposal.drugs, proposal.embolics, proposal.rationale}));
    MEWM_TRY(Planner planner, Planner::Create(spec.planner, spec.actions, spec.protocol,
                                              spec.require, spec.forbid, *dynamics, *survival));
    Status sink_status;
    PlannerObserver observer;
    observer.candidate = [&](const CandidateScore& c, const std::string& stage, int step,
                             bool memo) {
      if (sink_status) {
        sink_status = Emit(sink, CandidateEvaluated{patient.id, stage, step, View(c), memo});
      }
    };
    observer.beam = [&](const std::string& stage, int step,
                        const std::vector<CandidateScore>& kept) {
      std::vector<PlanScoreView> beams;
      for (const CandidateScore& c : kept) beams.push_back(View(c));
      if (sink_status) sink_status = Emit(sink, BeamUpdated{patient.id, stage, step, beams});
    };
    observer.cancelled = [&] { return !sink_status || (options.cancelled && options.cancelled()); };
    observer.stage_seconds = options.stage_seconds;
    auto decision = planner.Plan(patient, proposal, spec.seed, observer);
    MEWM_RETURN_IF_ERROR(sink_status);
    if (!decision) return decision.error();

    // The chosen plan's outcome on the full lattice: sample 0, the same seed the search used.
    const CandidateScore& best = decision->best;
    const SimulationRequest request{best.plan, 0,
                                    Planner::SampleSeed(spec.seed, patient.id, best.plan, 0),
                                    Planner::SharedSeed(spec.seed, patient.id, 0)};
    MEWM_TRY(std::vector<Outcome> outcomes, dynamics->Simulate(patient, {request}));
    MEWM_RETURN_IF_ERROR(CheckOutcome(outcomes.front(), request, patient));

    const Expected<double> median_or = best.curve.MedianMonths();
    const double median = median_or ? *median_or : -1.0;
    // The policy's own single plan, kept for the "no search" baseline of `mewm eval plans`.
    auto first_choice = policy::FirstChoicePlan(proposal, spec.actions, spec.planner.drug_horizon,
                                                spec.planner.embolic_horizon, spec.protocol);
    json candidates = json::array();
    for (const CandidateScore& c : decision->evaluated) candidates.push_back(CandidateJson(c));
    const PlannerCounters& k = decision->counters;
    const json result = {
        {"format", kResultFormat},
        {"version", 1},
        {"status", "finished"},
        {"patient_id", patient.id},
        {"run_id", run_id},
        {"search", ToString(spec.planner.search)},
        {"proposal",
         {{"drugs", proposal.drugs},
          {"embolics", proposal.embolics},
          {"rationale", proposal.rationale},
          {"first_choice", first_choice ? first_choice->ToString() : std::string()}}},
        {"chosen", CandidateJson(best)},
        {"survival_curve",
         {{"times_months", best.curve.times_months}, {"survival", best.curve.survival}}},
        {"median_months", median},
        {"candidates", candidates},
        {"counters",
         {{"simulations", k.simulations},
          {"render_simulations", 1},  // the chosen plan re-simulated on the full lattice
          {"memo_hits", k.memo_hits},
          {"batches", k.batches},
          {"model_evaluations", k.model_evaluations},
          {"survival_scores", k.survival_scores}}},
        {"volume", "post_chosen.vdb"}};
    const fs::path final_dir = fs::path(out) / "patients" / patient.id;
    const fs::path temp_dir = fs::path(out) / "patients" / (".tmp-" + patient.id);
    std::error_code ec;
    fs::remove_all(temp_dir, ec);
    fs::create_directories(temp_dir, ec);
    if (ec) return MakeError(ErrorCode::kIo, "cannot create '" + temp_dir.string() + "'");
    VolumeSet set;
    set.metadata.patient_id = patient.id;
    set.metadata.provenance_json = json{
        {"run_id", run_id},
        {"plan", best.plan.ToString()},
        {"model", dynamics->name()}}.dump();
    set.scalars.emplace("ct", outcomes.front().post_ct);
    set.labels.emplace("viable", outcomes.front().viable);
    if (outcomes.front().viable_fraction) {
      set.scalars.emplace("viable_fraction", *outcomes.front().viable_fraction);
    }
    set.labels.emplace("pre_tumor", patient.tumor);
    MEWM_RETURN_IF_ERROR(WriteVdb((temp_dir / "post_chosen.vdb").string(), set));
    MEWM_RETURN_IF_ERROR(
        WriteFileAtomic((temp_dir / "result.json").string(), result.dump(1) + "\n"));
    fs::remove_all(final_dir, ec);
    fs::rename(temp_dir, final_dir, ec);
    if (ec) {
      return MakeError(ErrorCode::kIo, "cannot move '" + temp_dir.string() + "' to '" +
                                           final_dir.string() + "': " + ec.message());
    }
    MEWM_RETURN_IF_ERROR(Emit(sink, PlanDecided{patient.id, View(best), median,
                                                (final_dir / "post_chosen.vdb").string()}));
    *finished = {patient.id, k.simulations, k.memo_hits, k.model_evaluations,
                 std::chrono::duration<double>(Clock::now() - t0).count()};
    return {};
  }

  Status RecordFailure(const std::string& id, const std::string& error) {
    const fs::path dir = fs::path(out) / "patients" / id;
    std::error_code ec;
    fs::remove_all(dir, ec);
    fs::create_directories(dir, ec);
    const json result = {{"format", kResultFormat}, {"version", 1},     {"status", "failed"},
                         {"patient_id", id},        {"run_id", run_id}, {"error", error}};
    return WriteFileAtomic((dir / "result.json").string(), result.dump(1) + "\n");
  }
};

Runner::Runner(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Runner::~Runner() = default;
const std::string& Runner::run_id() const { return impl_->run_id; }
const std::string& Runner::output_dir() const { return impl_->out; }

std::string DefaultRunId(const ScenarioSpec& spec) {
  char id[32];
  std::snprintf(id, sizeof(id), "%016llx",
                static_cast<unsigned long long>(
                    DeriveSeed(spec.seed, spec.text + ToString(spec.planner.search))));
  return spec.name + "-" + std::string(id).substr(0, 8);
}

Expected<std::unique_ptr<Runner>> Runner::Create(const ScenarioSpec& spec,
                                                 const RunOptions& options) {
  if (options.shard_count < 1 || options.shard_index < 0 ||
      options.shard_index >= options.shard_count) {
    return MakeError(ErrorCode::kInvalidArgument, "shard must be i/N with 0 <= i < N, got " +
                                                      std::to_string(options.shard_index) + "/" +
                                                      std::to_string(options.shard_count));
  }
  auto impl = std::make_unique<Impl>();
  impl->spec = spec;
  impl->options = options;
  impl->out = options.output_dir.empty() ? spec.output : options.output_dir;
  impl->cohort_dir =
      spec.cohort.dir.empty() ? (fs::path(impl->out) / "cohort").string() : spec.cohort.dir;
  impl->run_id = options.run_id.empty() ? DefaultRunId(spec) : options.run_id;

  MEWM_TRY(Models models, LoadModels(spec));
  impl->policy = std::move(models.policy);
  impl->dynamics = std::move(models.dynamics);
  impl->survival = std::move(models.survival);
  return std::unique_ptr<Runner>(new Runner(std::move(impl)));
}

Expected<RunSummary> Runner::Run(EventSink& sink) {
  Impl& m = *impl_;
  const auto t0 = Clock::now();
  RunSummary summary{m.run_id, m.out, 0, 0, 0, false};
  std::error_code ec;
  fs::create_directories(fs::path(m.out) / "patients", ec);
  if (ec) return MakeError(ErrorCode::kIo, "cannot create '" + m.out + "': " + ec.message());
  if (!m.options.resume) {
    // A fresh run replaces the previous results in this folder (the cohort cache stays).
    for (const char* name : {"events.jsonl", "summary.json", "summary.csv"}) {
      fs::remove(fs::path(m.out) / name, ec);
    }
    fs::remove_all(fs::path(m.out) / "patients", ec);
    fs::create_directories(fs::path(m.out) / "patients", ec);
  }
  const std::string events_path = (fs::path(m.out) / "events.jsonl").string();
  if (m.options.resume && fs::exists(events_path)) {
    // Continue the earlier run's sequence so the log stays one gap-free stream.
    // A line cut off by a crash is dropped, so appended events start on a line of their own.
    MEWM_TRY(const std::string log, ReadFile(events_path));
    if (!log.empty() && log.back() != '\n') {
      MEWM_RETURN_IF_ERROR(WriteFileAtomic(events_path, log.substr(0, log.rfind('\n') + 1)));
    }
    auto earlier = ReadEvents(events_path);
    if (!earlier) return earlier.error().WithContext("cannot resume");
    if (!earlier->empty()) {
      if (earlier->back().run_id != m.run_id) {
        return MakeError(ErrorCode::kMismatch, "cannot resume: '" + m.out + "' holds run " +
                                                   earlier->back().run_id + ", not " + m.run_id +
                                                   " (another scenario or seed)");
      }
      m.seq = earlier->back().seq;
    }
  }
  std::unique_ptr<JsonlSink> jsonl;
  FanoutSink fanout;
  if (m.options.write_event_log) {
    MEWM_TRY(jsonl, JsonlSink::Open(events_path));
    fanout.Add(jsonl.get());  // durable first
  }
  fanout.Add(&sink);

  const auto fail_run = [&](const Error& e) -> Expected<RunSummary> {
    (void)m.Emit(fanout, RunFailed{e.message});
    return e;
  };
  MEWM_RETURN_IF_ERROR(WriteFileAtomic((fs::path(m.out) / "scenario.toml").string(), m.spec.text));
  const json run = {
      {"run_id", m.run_id},
      {"scenario", m.spec.name},
      {"scenario_path", m.spec.path},
      {"seed", std::to_string(m.spec.seed)},
      {"search", ToString(m.spec.planner.search)},
      {"cohort_source",
       m.spec.cohort.source == CohortSpec::Source::kSynthetic ? "synthetic" : "manifest"},
      {"cohort", m.spec.cohort.source == CohortSpec::Source::kSynthetic
                     ? fs::absolute(m.cohort_dir).string()
                     : fs::absolute(m.spec.cohort.manifest).string()},
      {"shard",
       std::to_string(m.options.shard_index) + "/" + std::to_string(m.options.shard_count)}};
  MEWM_RETURN_IF_ERROR(
      WriteFileAtomic((fs::path(m.out) / "run.json").string(), run.dump(1) + "\n"));

  Status progress_status;
  auto prepared = PrepareCohort(
      m.spec, m.cohort_dir,
      [&](int done, int total) {
        if (progress_status) progress_status = m.Emit(fanout, Progress{"cohort", done, total});
        if (m.options.cohort_progress) m.options.cohort_progress(done, total);
      },
      m.options.cancelled);
  MEWM_RETURN_IF_ERROR(progress_status);
  if (!prepared && prepared.error().code == ErrorCode::kCancelled) {
    // Cancelled while the cohort was generated: nothing was planned (the cohort has no manifest
    // yet, so a later run generates it again).
    summary.cancelled = true;
    MEWM_RETURN_IF_ERROR(WriteSummary(m.out));
    MEWM_RETURN_IF_ERROR(m.Emit(fanout, RunCancelled{0}));
    return summary;
  }
  if (!prepared) return fail_run(prepared.error());
  const std::vector<CohortEntry> entries = std::move(*prepared);
  std::vector<const CohortEntry*> todo;
  for (std::size_t i = 0; i < entries.size(); ++i) {
    if (int(i % std::size_t(m.options.shard_count)) != m.options.shard_index) {
      ++summary.skipped;
      continue;
    }
    if (m.options.resume) {
      MEWM_TRY(const bool done, m.AlreadyFinished(entries[i].id));
      if (done) {
        ++summary.skipped;
        continue;
      }
    }
    todo.push_back(&entries[i]);
  }
  MEWM_RETURN_IF_ERROR(m.Emit(
      fanout, RunStarted{m.spec.name, m.out, m.spec.seed, int(todo.size()), summary.skipped}));
  for (std::size_t i = 0; i < todo.size(); ++i) {
    if (m.options.cancelled && m.options.cancelled()) {
      summary.cancelled = true;
      break;
    }
    const CohortEntry& entry = *todo[i];
    MEWM_RETURN_IF_ERROR(m.Emit(fanout, PatientStarted{entry.id, int(i), int(todo.size())}));
    PatientFinished finished;
    const Status planned = m.PlanPatient(entry, fanout, &finished);
    if (planned) {
      ++summary.finished;
      MEWM_RETURN_IF_ERROR(m.Emit(fanout, finished));
    } else if (planned.error().code == ErrorCode::kCancelled) {
      summary.cancelled = true;
      break;
    } else {
      ++summary.failed;
      LogWarn("patient " + entry.id + " failed: " + planned.error().message);
      MEWM_RETURN_IF_ERROR(m.RecordFailure(entry.id, planned.error().message));
      MEWM_RETURN_IF_ERROR(m.Emit(fanout, PatientFailed{entry.id, planned.error().message}));
    }
  }
  MEWM_RETURN_IF_ERROR(WriteSummary(m.out));
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  if (summary.cancelled) {
    MEWM_RETURN_IF_ERROR(m.Emit(fanout, RunCancelled{summary.finished}));
  } else {
    MEWM_RETURN_IF_ERROR(m.Emit(fanout, RunFinished{summary.finished, summary.failed, seconds}));
  }
  return summary;
}

Status WriteSummary(const std::string& output_dir) {
  const fs::path patients = fs::path(output_dir) / "patients";
  std::vector<fs::path> dirs;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(patients, ec)) {
    const std::string name = e.path().filename().string();
    if (e.is_directory() && name.rfind(".tmp-", 0) != 0) dirs.push_back(e.path());
  }
  std::sort(dirs.begin(), dirs.end());
  json list = json::array();
  std::ostringstream csv;
  csv << "patient_id,status,plan,risk_mean,risk_std,median_months,simulations,memo_hits,error\n";
  std::int64_t simulations = 0, memo_hits = 0, evaluations = 0;
  int finished = 0, failed = 0;
  for (const fs::path& dir : dirs) {
    const std::string path = (dir / "result.json").string();
    MEWM_TRY(const std::string text, ReadFile(path));
    try {
      const json r = json::parse(text);
      const std::string status = r.at("status").get<std::string>();
      json item = {{"patient_id", r.at("patient_id")}, {"status", status}};
      if (status == "finished") {
        ++finished;
        const json& c = r.at("chosen");
        const json& k = r.at("counters");
        item["plan"] = c.at("plan");
        item["items"] = c.at("items");
        item["risk_mean"] = c.at("risk_mean");
        item["risk_std"] = c.at("risk_std");
        item["median_months"] = r.at("median_months");
        item["proposal"] = r.at("proposal");
        item["counters"] = k;
        simulations += k.at("simulations").get<std::int64_t>();
        memo_hits += k.at("memo_hits").get<std::int64_t>();
        evaluations += k.at("model_evaluations").get<std::int64_t>();
        csv << r.at("patient_id").get<std::string>() << ",finished,"
            << CsvQuote(c.at("plan").get<std::string>()) << "," << c.at("risk_mean").dump() << ","
            << c.at("risk_std").dump() << "," << r.at("median_months").dump() << ","
            << k.at("simulations").dump() << "," << k.at("memo_hits").dump() << ",\n";
      } else {
        ++failed;
        item["error"] = r.at("error");
        csv << r.at("patient_id").get<std::string>() << ",failed,,,,,,,"
            << CsvQuote(r.at("error").get<std::string>()) << "\n";
      }
      list.push_back(item);
    } catch (const std::exception& e) {
      return MakeError(ErrorCode::kCorruptData, "'" + path + "': " + e.what());
    }
  }
  json summary = {{"finished", finished},
                  {"failed", failed},
                  {"simulations", simulations},
                  {"memo_hits", memo_hits},
                  {"model_evaluations", evaluations},
                  {"patients", list}};
  const fs::path run_json = fs::path(output_dir) / "run.json";
  if (fs::exists(run_json)) {
    MEWM_TRY(const std::string text, ReadFile(run_json.string()));
    try {
      summary["run"] = json::parse(text);
    } catch (const std::exception& e) {
      return MakeError(ErrorCode::kCorruptData, "'" + run_json.string() + "': " + e.what());
    }
  }
  MEWM_RETURN_IF_ERROR(
      WriteFileAtomic((fs::path(output_dir) / "summary.json").string(), summary.dump(1) + "\n"));
  return WriteFileAtomic((fs::path(output_dir) / "summary.csv").string(), csv.str());
}

Status MergeResults(const std::vector<std::string>& shard_dirs, const std::string& output_dir) {
  if (shard_dirs.empty()) {
    return MakeError(ErrorCode::kInvalidArgument, "merge needs at least one shard folder");
  }
  std::string scenario_text, first_run;
  json run;
  std::set<int> indices;
  int count = -1;
  for (const std::string& shard : shard_dirs) {
    MEWM_TRY(const std::string text, ReadFile((fs::path(shard) / "scenario.toml").string()));
    MEWM_TRY(const std::string run_text, ReadFile((fs::path(shard) / "run.json").string()));
    json this_run;
    try {
      this_run = json::parse(run_text);
    } catch (const std::exception& e) {
      return MakeError(ErrorCode::kCorruptData, "'" + shard + "/run.json': " + e.what());
    }
    int i = -1, n = -1;
    if (std::sscanf(this_run.value("shard", "").c_str(), "%d/%d", &i, &n) != 2 ||
        (count >= 0 && n != count) || !indices.insert(i).second) {
      return MakeError(ErrorCode::kMismatch,
                       "'" + shard + "' is not a distinct shard i/N of " +
                           "the same run (its shard: " + this_run.value("shard", "?") + ")");
    }
    count = n;
    if (first_run.empty()) {
      scenario_text = text;
      first_run = shard;
      run = this_run;
    } else if (text != scenario_text || this_run.value("search", "") != run.value("search", "")) {
      return MakeError(ErrorCode::kMismatch, "'" + shard +
                                                 "' ran another scenario or search than '" +
                                                 first_run + "'; only shards of one run merge");
    }
    if (fs::exists(output_dir) && fs::equivalent(output_dir, shard)) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "merge output '" + output_dir + "' is one of the shards");
    }
  }
  if (int(indices.size()) != count) {
    return MakeError(ErrorCode::kInvalidArgument, "merge got " + std::to_string(indices.size()) +
                                                      " of " + std::to_string(count) +
                                                      " shards; every shard 0.." +
                                                      std::to_string(count - 1) + " is needed");
  }
  std::error_code ec;
  std::map<std::string, fs::path> sources;  // patient id -> folder, checked before any write
  for (const std::string& shard : shard_dirs) {
    for (const auto& e : fs::directory_iterator(fs::path(shard) / "patients", ec)) {
      const std::string id = e.path().filename().string();
      if (!e.is_directory() || id.rfind(".tmp-", 0) == 0) continue;
      if (auto [it, fresh] = sources.emplace(id, e.path()); !fresh) {
        return MakeError(ErrorCode::kMismatch, "patient '" + id + "' is in both '" +
                                                   it->second.string() + "' and '" + shard + "'");
      }
    }
  }
  fs::remove_all(fs::path(output_dir) / "patients", ec);  // no leftovers of an earlier merge
  fs::create_directories(fs::path(output_dir) / "patients", ec);
  if (ec) return MakeError(ErrorCode::kIo, "cannot create '" + output_dir + "': " + ec.message());
  for (const auto& [id, source] : sources) {
    const fs::path target = fs::path(output_dir) / "patients" / id;
    fs::copy(source, target, fs::copy_options::recursive, ec);
    if (ec) {
      return MakeError(ErrorCode::kIo, "cannot copy '" + source.string() + "' to '" +
                                           target.string() + "': " + ec.message());
    }
  }
  MEWM_RETURN_IF_ERROR(
      WriteFileAtomic((fs::path(output_dir) / "scenario.toml").string(), scenario_text));
  run["shard"] = "merged from " + std::to_string(shard_dirs.size()) + " shards";
  MEWM_RETURN_IF_ERROR(
      WriteFileAtomic((fs::path(output_dir) / "run.json").string(), run.dump(1) + "\n"));
  return WriteSummary(output_dir);
}

}  // namespace mewm::scenarios

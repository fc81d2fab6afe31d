// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/run/runner.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>

#include "mewm/core/file_util.h"
#include "mewm/core/log.h"
#include "mewm/core/nifti_io.h"
#include "mewm/core/plot.h"
#include "mewm/core/render.h"
#include "mewm/core/seed.h"
#include "mewm/core/vdb_io.h"
#include "mewm/core/volume_file.h"
#include "mewm/dynamics/calibration.h"
#include "mewm/planner/planner.h"
#include "mewm/survival/cox_survival.h"

namespace mewm::scenarios {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

using Clock = std::chrono::steady_clock;

PlanScoreView View(const CandidateScore& c) { return {c.plan.items(), c.risk_mean, c.risk_std}; }

/// A plan-writing policy's ranked plans with their log-probabilities, and its stated findings.
json ProposalPlansJson(const policy::Proposal& proposal) {
  json plans = json::array();
  for (const policy::RankedPlan& r : proposal.plans) {
    plans.push_back({{"plan", r.plan.ToString()}, {"log_prob", r.log_prob}});
  }
  return plans;
}

/// result.json's "proposal": the items, the rationale, the first choice and, for a policy that
/// writes whole plans (vlm, openai), its ranked "plans"; an item policy's results carry no
/// "plans" key, so they read as before plan-writing policies existed.
json ProposalJson(const policy::Proposal& proposal, const Expected<Plan>& first_choice) {
  json j = {{"drugs", proposal.drugs},
            {"embolics", proposal.embolics},
            {"rationale", proposal.rationale},
            {"first_choice", first_choice ? first_choice->ToString() : std::string()}};
  if (!proposal.plans.empty()) j["plans"] = ProposalPlansJson(proposal);
  return j;
}

json CandidateJson(const CandidateScore& c) {
  return {{"plan", c.plan.ToString()},
          {"items", c.plan.items()},
          {"risk_mean", c.risk_mean},
          {"risk_std", c.risk_std},
          {"sample_risks", c.sample_risks}};
}

constexpr const char* kResultFormat = "mewm.patient_result";

/// The files a run writes at the top of its results folder (besides patients/ and cohort/).
constexpr const char* kRunFiles[] = {"run.json", "scenario.toml", "events.jsonl", "summary.json",
                                     "summary.csv"};

/// The files a run may write in a patient's folder (results.nifti adds the two NIfTI files).
constexpr const char* kPostVdb = "post_chosen.vdb";
constexpr const char* kPostCtNifti = "post_chosen_ct.nii.gz";
constexpr const char* kPostLabelsNifti = "post_chosen_labels.nii.gz";
constexpr const char* kSurvivalPng = "survival.png";
constexpr const char* kPatientFiles[] = {"result.json", kPostVdb, kPostCtNifti, kPostLabelsNifti,
                                         kSurvivalPng};

bool IsTempName(const std::string& name) { return name.rfind(".tmp-", 0) == 0; }

bool IsPatientFile(const std::string& name) {
  return std::any_of(std::begin(kPatientFiles), std::end(kPatientFiles),
                     [&](const char* f) { return name == f; });
}

/// The NIfTI view of post_chosen.vdb for viewers that read no .vdb: the post-treatment CT, and
/// one label map on the CT's lattice (0 background, 1 tumor before treatment that is not viable
/// after it, 2 viable tumor after treatment). The files carry the patient's affine.
Status WritePostNifti(const fs::path& dir, const Volume& ct, const LabelVolume& viable,
                      const LabelVolume& pre_tumor) {
  for (const LabelVolume* mask : {&viable, &pre_tumor}) {
    if (!mask->geometry().ApproxEquals(ct.geometry(), 1e-9) || mask->extent() != ct.extent()) {
      return MakeError(ErrorCode::kInternal,
                       "grid '" + mask->name() + "' is not on the lattice of the post CT");
    }
  }
  const IndexBox box = CoveringBox(ct);
  MEWM_RETURN_IF_ERROR(WriteNifti((dir / kPostCtNifti).string(), ct.ToDense(box)));
  DenseLabel labels = pre_tumor.ToDense(box);
  const DenseLabel alive = viable.ToDense(box);
  for (std::size_t n = 0; n < labels.data.size(); ++n) {
    labels.data[n] = alive.data[n] != 0 ? 2 : (labels.data[n] != 0 ? 1 : 0);
  }
  return WriteNiftiLabels((dir / kPostLabelsNifti).string(), labels);
}

/// run.json of a mewm run (an object with string run_id, scenario and shard), or nullopt when
/// `dir` has none or another file under that name.
std::optional<json> ReadRunJson(const fs::path& dir) {
  std::error_code ec;
  const fs::path path = dir / "run.json";
  if (!fs::is_regular_file(path, ec)) return std::nullopt;
  auto text = ReadFile(path.string());
  if (!text) return std::nullopt;
  try {
    json j = json::parse(*text);
    if (j.is_object() && j.contains("run_id") && j["run_id"].is_string() &&
        j.contains("scenario") && j["scenario"].is_string() && j.contains("shard") &&
        j["shard"].is_string()) {
      return j;
    }
  } catch (const std::exception&) {
  }
  return std::nullopt;
}

/// One patients/<id>/result.json as summary.json and summary.csv list it.
struct ResultRow {
  json item;
  std::string csv;
  std::string patient_id;
  bool finished = false;
  std::int64_t simulations = 0, memo_hits = 0, evaluations = 0;
};

/// A JSON file's text as runs write them (indented, one trailing newline). Bytes that are not
/// UTF-8 (a model's or an endpoint's error message) become U+FFFD, where nlohmann's default threw.
std::string JsonFileText(const json& j) {
  return j.dump(1, ' ', false, json::error_handler_t::replace) + "\n";
}

/// Reads and checks a result.json a run wrote; kCorruptData naming `path` when it is not one.
Expected<ResultRow> ReadResultRow(const fs::path& path) {
  // A result is tens of KB; a merge reads the shards' as input it did not write.
  constexpr std::uint64_t kMaxResultBytes = 16u << 20;
  MEWM_TRY(const std::string text, ReadRegularFile(path.string(), kMaxResultBytes));
  ResultRow row;
  // The fields the summary copies, checked by type: an array risk_mean shifted the CSV's columns,
  // and simulations 1e30 overflowed an integer.
  const auto bad = [&](const std::string& key, const json& value, const char* expected) {
    return MakeError(ErrorCode::kCorruptData, "'" + path.string() + "': " + key + " is " +
                                                  value.dump().substr(0, 40) + ", expected " +
                                                  expected);
  };
  try {
    const json r = json::parse(text);
    if (!r.is_object() || r.value("format", "") != kResultFormat) {
      return MakeError(ErrorCode::kCorruptData, "'" + path.string() +
                                                    "' is not a patient result (format must be '" +
                                                    kResultFormat + "')");
    }
    const std::string status = r.at("status").get<std::string>();
    row.patient_id = r.at("patient_id").get<std::string>();
    row.item = {{"patient_id", row.patient_id}, {"status", status}};
    if (status == "finished") {
      row.finished = true;
      const json& c = r.at("chosen");
      const json& k = r.at("counters");
      for (const char* key : {"risk_mean", "risk_std"}) {
        const json& v = c.at(key);
        if (!v.is_number() || !std::isfinite(v.get<double>())) {
          return bad(std::string("chosen.") + key, v, "a finite number");
        }
      }
      if (!c.at("plan").is_string()) return bad("chosen.plan", c.at("plan"), "a string");
      if (!r.at("median_months").is_number()) {
        return bad("median_months", r.at("median_months"), "a number");
      }
      for (const char* key : {"simulations", "memo_hits", "model_evaluations"}) {
        const json& v = k.at(key);
        if (!v.is_number_integer() || v.get<std::int64_t>() < 0) {
          return bad(std::string("counters.") + key, v, "a count (an integer >= 0)");
        }
      }
      row.item["plan"] = c.at("plan");
      row.item["items"] = c.at("items");
      row.item["risk_mean"] = c.at("risk_mean");
      row.item["risk_std"] = c.at("risk_std");
      row.item["median_months"] = r.at("median_months");
      row.item["proposal"] = r.at("proposal");
      row.item["counters"] = k;
      row.simulations = k.at("simulations").get<std::int64_t>();
      row.memo_hits = k.at("memo_hits").get<std::int64_t>();
      row.evaluations = k.at("model_evaluations").get<std::int64_t>();
      // result.json says -1 when the median survival is not reached within the curve's
      // horizon; the CSV leaves that field empty, as spreadsheets and pandas expect.
      const json& median = r.at("median_months");
      const std::string median_csv =
          median.is_number() && median.get<double>() < 0.0 ? "" : median.dump();
      row.csv = row.patient_id + ",finished," + CsvQuote(c.at("plan").get<std::string>()) + "," +
                c.at("risk_mean").dump() + "," + c.at("risk_std").dump() + "," + median_csv + "," +
                k.at("simulations").dump() + "," + k.at("memo_hits").dump() + ",\n";
    } else if (status == "failed") {
      row.item["error"] = r.at("error");
      row.csv =
          row.patient_id + ",failed,,,,,,," + CsvQuote(r.at("error").get<std::string>()) + "\n";
    } else {
      return MakeError(ErrorCode::kCorruptData, "'" + path.string() + "': status '" + status +
                                                    "', expected 'finished' or 'failed'");
    }
  } catch (const std::exception& e) {
    return MakeError(ErrorCode::kCorruptData, "'" + path.string() + "': " + e.what());
  }
  return row;
}

std::string MedianText(const survival::RiskScore& curve) {
  const Expected<double> median = curve.MedianMonths();
  if (!median) return "median not reached";
  char text[48];
  std::snprintf(text, sizeof text, "median %.1f months", *median);
  return text;
}

/// survival.png: the chosen plan's and the next-best plan's predicted survival (the mean curve
/// over their samples), each with the band from its lowest to its highest sample curve.
Status WriteSurvivalPlot(const fs::path& path, const std::string& patient_id,
                         const PlanDecision& decision, int samples) {
  const CandidateScore& best = decision.best;
  const CandidateScore* next = nullptr;
  for (const CandidateScore& c : decision.evaluated) {
    if (c.plan.ToString() == best.plan.ToString()) continue;
    if (next == nullptr || c.risk_mean < next->risk_mean ||
        (c.risk_mean == next->risk_mean && c.plan.ToString() < next->plan.ToString())) {
      next = &c;
    }
  }
  SurvivalPlot plot;
  plot.title = "Patient " + patient_id + ": predicted survival";
  const auto curve = [](const CandidateScore& c, const std::string& role,
                        const std::array<std::uint8_t, 3>& color) {
    PlotCurve out;
    out.label = role + ": " + c.plan.ToString() + " (" + MedianText(c.curve) + ")";
    out.times = c.curve.times_months;
    out.values = c.curve.survival;
    if (c.survival_lo.size() == out.times.size() && c.survival_hi.size() == out.times.size()) {
      out.lo = c.survival_lo;
      out.hi = c.survival_hi;
    }
    out.color = color;
    return out;
  };
  plot.curves.push_back(curve(best, "Chosen", {31, 100, 200}));
  if (next != nullptr) {
    plot.curves.push_back(curve(*next, "Next best", {230, 120, 20}));
    plot.curves.back().dashed = true;
  }
  plot.notes.push_back("Lines: mean over T = " + std::to_string(samples) +
                       " simulated outcomes. Bands: lowest to highest sample.");
  MEWM_TRY(const RgbImage image, RenderSurvivalPlot(plot));
  return WritePng(path.string(), image);
}

/// OK when every entry of `patients` is what a run writes there: patient folders holding only
/// result.json (a patient result), the other kPatientFiles and temporary files, and `.tmp-*`
/// folders of an interrupted patient. Replacing them then deletes nothing a run did not write.
Status CheckPatientsFolder(const fs::path& patients) {
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(patients, ec))) return {};
  const auto foreign = [&](const fs::path& p, const std::string& why) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "'" + p.string() + "' " + why +
                         "; mewm only replaces what a run wrote there. Move it away or choose "
                         "another --out");
  };
  // A link would have the run write its patients wherever it leads (--resume did).
  if (fs::is_symlink(patients, ec)) return foreign(patients, "is a symbolic link");
  if (!fs::is_directory(patients, ec)) return foreign(patients, "is not a folder");
  for (const auto& entry : fs::directory_iterator(patients, ec)) {
    if (entry.is_symlink() || !entry.is_directory()) {
      return foreign(entry.path(), "is not a patient folder of a mewm run");
    }
    for (const auto& file : fs::directory_iterator(entry.path(), ec)) {
      const std::string name = file.path().filename().string();
      if (file.is_symlink() || !file.is_regular_file() ||
          (!IsPatientFile(name) && !IsTempName(name))) {
        return foreign(file.path(), "was not written by a mewm run");
      }
      if (name == "result.json" && !ReadResultRow(file.path())) {
        return foreign(file.path(), "is not a patient result of a mewm run");
      }
    }
    if (ec) break;
  }
  if (ec)
    return MakeError(ErrorCode::kIo, "cannot list '" + patients.string() + "': " + ec.message());
  return {};
}

/// The checks of CheckRunFolder; returns the last seq of the log a resume continues (0: none).
Expected<std::uint64_t> CheckFolder(const ScenarioSpec& spec, const RunOptions& options,
                                    const std::string& out, const std::string& run_id) {
  std::error_code ec;
  const fs::path dir(out);
  if (!fs::exists(dir, ec)) return std::uint64_t{0};
  if (!fs::is_directory(dir, ec)) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "output folder '" + out + "' exists and is not a folder");
  }
  const std::optional<json> run = ReadRunJson(dir);

  // Resume: the folder's log (or else its run.json) must be this run's, and whole. It is read
  // first, and never modified here.
  std::uint64_t last_seq = 0;
  bool log_is_ours = false;
  const fs::path events = dir / "events.jsonl";
  if (options.resume && fs::exists(events, ec)) {
    MEWM_TRY(const std::string log, ReadFile(events.string()));
    if (!log.empty() && log.back() != '\n') {
      const auto line = std::count(log.begin(), log.end(), '\n') + 1;
      return MakeError(ErrorCode::kCorruptData,
                       "cannot resume: '" + events.string() + "' line " + std::to_string(line) +
                           " is cut short (no newline at its end; the process was killed while "
                           "writing it). Delete that line to resume, or run without --resume to "
                           "start over; the file is left as it is");
    }
    auto earlier = ReadEvents(events.string());
    if (!earlier) {
      return earlier.error().WithContext("cannot resume (the file is left as it is)");
    }
    if (!earlier->empty()) {
      if (earlier->back().run_id != run_id) {
        return MakeError(ErrorCode::kMismatch, "cannot resume: '" + out + "' holds run " +
                                                   earlier->back().run_id + ", not " + run_id +
                                                   " (another scenario or seed)");
      }
      last_seq = earlier->back().seq;
      log_is_ours = true;
    }
  }
  if (options.resume && !log_is_ours && run && (*run)["run_id"].get<std::string>() != run_id) {
    return MakeError(ErrorCode::kMismatch, "cannot resume: '" + out + "' holds run " +
                                               (*run)["run_id"].get<std::string>() + ", not " +
                                               run_id + " (another scenario or seed)");
  }

  // A folder holding nothing but this scenario's own synthetic cohort (generated there ahead of
  // the run, as models/README.md shows) counts as empty. The one entry must be that cohort: a
  // folder holding one file of the user's (notes.txt, or a summary.csv of their own) counted as
  // empty while the cohort did not exist yet, and the run overwrote the file without --force.
  bool empty = fs::is_empty(dir, ec);
  if (!empty && spec.cohort.source == CohortSpec::Source::kSynthetic) {
    auto cohort = SyntheticCohortDir(spec, out);
    std::size_t entries = 0;
    bool is_cohort = false;
    for (auto it = fs::directory_iterator(dir, ec); !ec && it != fs::directory_iterator(); ++it) {
      ++entries;
      std::error_code same;
      is_cohort = cohort && fs::equivalent(it->path(), *cohort, same);
    }
    empty = entries == 1 && is_cohort && IsEmptyOrMewmCohort(*cohort);
  }
  const bool same_scenario = run && (*run)["scenario"].get<std::string>() == spec.name;
  if (!empty && !same_scenario && !log_is_ours) {
    if (!options.force) {
      return MakeError(
          ErrorCode::kInvalidArgument,
          "output folder '" + out + "' is not empty and is not a results folder of scenario '" +
              spec.name + "' (" +
              (run ? "its run.json is of scenario '" + (*run)["scenario"].get<std::string>() + "'"
                   : std::string("it has no run.json of a mewm run")) +
              "); choose a new or empty folder with --out, or pass --force to write the run "
              "there (mewm never deletes files it did not write)");
    }
    if (!run) {
      // Nothing proves that files under the names a run writes are a run's: refuse them.
      for (const char* name : kRunFiles) {
        if (fs::exists(dir / name, ec) || fs::is_symlink(dir / name, ec)) {
          return MakeError(ErrorCode::kInvalidArgument,
                           "'" + (dir / name).string() +
                               "' was not written by a mewm run (no run.json of a run beside "
                               "it); mewm does not overwrite it, even with --force");
        }
      }
      const fs::path cohort = dir / "cohort";
      if (spec.cohort.source == CohortSpec::Source::kSynthetic && spec.cohort.dir.empty() &&
          fs::exists(cohort, ec) && !fs::exists(cohort / "manifest.json", ec)) {
        return MakeError(ErrorCode::kInvalidArgument,
                         "'" + cohort.string() +
                             "' is not a synthetic cohort of mewm (no manifest.json); the run "
                             "would generate its cohort there. Move it away or set cohort.dir");
      }
    }
  }
  MEWM_RETURN_IF_ERROR(CheckPatientsFolder(dir / "patients"));
  return last_seq;
}

/// Every file the manifest rows name, through `check` (the server's confinement). Then the run's
/// own inputs: a synthetic cohort folder that mewm did not write is refused here, before the run
/// writes anything, rather than when the cohort is prepared.
Status CheckCohortInputs(const std::string& cohort_dir, const std::vector<CohortEntry>* manifest,
                         const std::function<Status(const ScenarioPath&)>& check) {
  if (manifest == nullptr) {
    if (IsEmptyOrMewmCohort(cohort_dir)) return {};
    return MakeError(ErrorCode::kInvalidArgument,
                     "cohort folder '" + cohort_dir + "' is not a cohort written by mewm (no " +
                         std::string(kCohortMarker) + " or manifest.json from the synthetic " +
                         "world); mewm replaces only its own cohorts, so set cohort.dir to " +
                         "another folder or empty it");
  }
  if (!check) return {};
  for (const CohortEntry& e : *manifest) {
    for (const auto& [column, path] : {std::pair<const char*, const std::string*>{"ct", &e.ct},
                                       {"tumor", &e.tumor},
                                       {"liver", &e.liver},
                                       {"note", &e.note},
                                       {"post", &e.post}}) {
      if (path->empty()) continue;
      MEWM_RETURN_IF_ERROR(check({e.origin + " " + column, *path}));
    }
  }
  return {};
}

}  // namespace

Expected<Models> LoadModels(const ScenarioSpec& spec, const BackendRegistry& backends) {
  Models models;
  MEWM_TRY(models.policy, backends.CreatePolicy(spec));
  MEWM_TRY(models.dynamics, backends.CreateDynamics(spec));
  MEWM_TRY(models.survival, backends.CreateSurvival(spec));
  return models;
}

Expected<std::vector<CohortEntry>> PrepareCohort(const ScenarioSpec& spec,
                                                 const BackendRegistry& backends,
                                                 const std::string& synthetic_dir,
                                                 const std::function<void(int, int)>& progress,
                                                 const std::function<bool()>& cancelled) {
  if (spec.cohort.source == CohortSpec::Source::kManifest) {
    return ReadManifest(spec.cohort.manifest);
  }
  MEWM_RETURN_IF_ERROR(backends.PrepareSyntheticCohort(spec.cohort, spec.actions, synthetic_dir,
                                                       progress, cancelled));
  return ReadSyntheticCohort(synthetic_dir);
}

struct Runner::Impl {
  ScenarioSpec spec;
  RunOptions options;
  BackendRegistry backends;
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

  /// One patient's search: the proposal, and the planner's decision within it.
  struct Searched {
    PatientCase patient;
    policy::Proposal proposal;
    PlanDecision decision;
  };

  /// Loads the patient, asks the policy and searches, emitting proposal, candidate and beam
  /// events as they happen.
  Expected<Searched> Search(const CohortEntry& entry, EventSink& sink) {
    MEWM_TRY(PatientCase patient, LoadPatient(entry));
    const auto t_policy = Clock::now();
    MEWM_TRY(policy::Proposal proposal, policy->Propose(patient));
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
    return Searched{std::move(patient), std::move(proposal), std::move(*decision)};
  }

  /// The patient's result.json.
  json ResultJson(const Searched& s, double median) const {
    const CandidateScore& best = s.decision.best;
    // The policy's own single plan, kept for the "no search" baseline of `mewm eval plans`.
    // A plan-writing policy's first choice is its most probable plan.
    auto first_choice =
        !s.proposal.plans.empty()
            ? Expected<Plan>(s.proposal.plans.front().plan)
            : policy::FirstChoicePlan(s.proposal, spec.actions, spec.planner.drug_horizon,
                                      spec.planner.embolic_horizon, spec.protocol);
    json candidates = json::array();
    for (const CandidateScore& c : s.decision.evaluated) candidates.push_back(CandidateJson(c));
    const PlannerCounters& k = s.decision.counters;
    return {{"format", kResultFormat},
            {"version", 1},
            {"status", "finished"},
            {"patient_id", s.patient.id},
            {"run_id", run_id},
            {"search", ToString(spec.planner.search)},
            {"proposal", ProposalJson(s.proposal, first_choice)},
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
  }

  /// Writes the patient's folder (volume, NIfTI, plot, result.json) under a temporary name and
  /// then moves it into place, so a folder is either whole or absent: a failed write (a full
  /// disk) removes what it wrote. Returns its path.
  Expected<fs::path> WritePatientFolder(const Searched& s, const Outcome& outcome,
                                        const json& result) const {
    const PatientCase& patient = s.patient;
    const fs::path final_dir = fs::path(out) / "patients" / patient.id;
    const fs::path temp_dir = fs::path(out) / "patients" / (".tmp-" + patient.id);
    std::error_code ec;
    fs::remove_all(temp_dir, ec);
    fs::create_directories(temp_dir, ec);
    if (ec) return MakeError(ErrorCode::kIo, "cannot create '" + temp_dir.string() + "'");
    Status written = WritePatientFiles(temp_dir, s, outcome, result);
    if (written) {
      fs::remove_all(final_dir, ec);
      fs::rename(temp_dir, final_dir, ec);
      if (ec) {
        written = MakeError(ErrorCode::kIo, "cannot move '" + temp_dir.string() + "' to '" +
                                                final_dir.string() + "': " + ec.message());
      }
    }
    if (!written) {
      fs::remove_all(temp_dir, ec);
      return std::move(written).error();
    }
    return final_dir;
  }

  /// Writes the patient's files into `dir`; WritePatientFolder owns the folder.
  Status WritePatientFiles(const fs::path& dir, const Searched& s, const Outcome& outcome,
                           const json& result) const {
    const PatientCase& patient = s.patient;
    VolumeSet set;
    set.metadata.patient_id = patient.id;
    set.metadata.provenance_json = json{
        {"run_id", run_id},
        {"plan", s.decision.best.plan.ToString()},
        {"model", dynamics->name()}}.dump();
    set.scalars.emplace("ct", outcome.post_ct);
    set.labels.emplace("viable", outcome.viable);
    if (outcome.viable_fraction) set.scalars.emplace("viable_fraction", *outcome.viable_fraction);
    set.labels.emplace("pre_tumor", patient.tumor);
    MEWM_RETURN_IF_ERROR(WriteVdb((dir / kPostVdb).string(), set));
    if (spec.results.nifti) {
      MEWM_RETURN_IF_ERROR(WritePostNifti(dir, outcome.post_ct, outcome.viable, patient.tumor));
    }
    if (spec.results.plots) {
      MEWM_RETURN_IF_ERROR(
          WriteSurvivalPlot(dir / kSurvivalPng, patient.id, s.decision, spec.planner.samples));
    }
    return WriteFileAtomic((dir / "result.json").string(), JsonFileText(result));
  }

  /// Plans one patient and writes its folder atomically. Returns the decision's event data.
  Status PlanPatient(const CohortEntry& entry, EventSink& sink, PatientFinished* finished) {
    const auto t0 = Clock::now();
    MEWM_TRY(const Searched searched, Search(entry, sink));
    const PatientCase& patient = searched.patient;
    // The chosen plan's outcome on the full lattice: sample 0, the same seed the search used.
    const CandidateScore& best = searched.decision.best;
    const SimulationRequest request = Planner::Request(spec.seed, patient.id, best.plan, 0);
    MEWM_TRY(std::vector<Outcome> outcomes, dynamics->Simulate(patient, {request}));
    MEWM_RETURN_IF_ERROR(CheckOutcome(outcomes.front(), request, patient));
    const Expected<double> median_or = best.curve.MedianMonths();
    const double median = median_or ? *median_or : -1.0;
    MEWM_TRY(const fs::path folder,
             WritePatientFolder(searched, outcomes.front(), ResultJson(searched, median)));
    MEWM_RETURN_IF_ERROR(Emit(
        sink, PlanDecided{patient.id, View(best), median, (folder / "post_chosen.vdb").string()}));
    const PlannerCounters& k = searched.decision.counters;
    *finished = {patient.id, k.simulations, k.memo_hits, k.model_evaluations,
                 std::chrono::duration<double>(Clock::now() - t0).count()};
    return {};
  }

  Status RecordFailure(const std::string& id, const std::string& error) {
    const fs::path dir = fs::path(out) / "patients" / id;
    std::error_code ec;
    fs::remove_all(dir, ec);
    fs::create_directories(dir, ec);
    if (ec)
      return MakeError(ErrorCode::kIo, "cannot create '" + dir.string() + "': " + ec.message());
    const json result = {{"format", kResultFormat}, {"version", 1},     {"status", "failed"},
                         {"patient_id", id},        {"run_id", run_id}, {"error", error}};
    return WriteFileAtomic((dir / "result.json").string(), JsonFileText(result));
  }

  /// Creates the results folder with scenario.toml and run.json (which marks it as this
  /// scenario's), and patients/; a fresh run removes an earlier run's results (CheckFolder made
  /// sure they are a run's). The cohort cache stays.
  Status PrepareFolder() {
    std::error_code ec;
    fs::create_directories(out, ec);
    if (ec) return MakeError(ErrorCode::kIo, "cannot create '" + out + "': " + ec.message());
    // run.json first: it is what marks the folder as this scenario's results folder.
    MEWM_RETURN_IF_ERROR(WriteFileAtomic((fs::path(out) / "scenario.toml").string(), spec.text));
    json run = {
        {"run_id", run_id},
        {"scenario", spec.name},
        {"scenario_path", spec.path},
        {"seed", spec.seed},
        {"search", ToString(spec.planner.search)},
        {"cohort_source",
         spec.cohort.source == CohortSpec::Source::kSynthetic ? "synthetic" : "manifest"},
        {"cohort", spec.cohort.source == CohortSpec::Source::kSynthetic
                       ? fs::absolute(cohort_dir).string()
                       : fs::absolute(spec.cohort.manifest).string()},
        {"shard", std::to_string(options.shard_index) + "/" + std::to_string(options.shard_count)}};
    // The synthetic cohort's seed, so that `mewm eval plans` can tell the truth it reads from the
    // truth of another cohort generated since in the same folder.
    if (spec.cohort.source == CohortSpec::Source::kSynthetic) {
      run["cohort_seed"] = std::to_string(spec.cohort.seed);
    }
    MEWM_RETURN_IF_ERROR(WriteFileAtomic((fs::path(out) / "run.json").string(), JsonFileText(run)));
    fs::create_directories(fs::path(out) / "patients", ec);
    if (ec)
      return MakeError(ErrorCode::kIo, "cannot create '" + out + "/patients': " + ec.message());
    if (!options.resume) {
      // A fresh run replaces the previous results in this folder (the cohort cache stays);
      // CheckFolder made sure that they are a run's.
      for (const char* name : {"events.jsonl", "summary.json", "summary.csv"}) {
        fs::remove(fs::path(out) / name, ec);
      }
      std::vector<fs::path> earlier;
      for (const auto& entry : fs::directory_iterator(fs::path(out) / "patients", ec)) {
        earlier.push_back(entry.path());
      }
      for (const fs::path& path : earlier) fs::remove_all(path, ec);
    }
    return {};
  }

  /// The entries this run plans: its shard's, less those an earlier run finished (resume).
  Expected<std::vector<const CohortEntry*>> Select(const std::vector<CohortEntry>& entries,
                                                   RunSummary& summary) {
    std::vector<const CohortEntry*> todo;
    for (std::size_t i = 0; i < entries.size(); ++i) {
      if (int(i % std::size_t(options.shard_count)) != options.shard_index) {
        ++summary.skipped;
        continue;
      }
      if (options.resume) {
        MEWM_TRY(const bool done, AlreadyFinished(entries[i].id));
        if (done) {
          ++summary.skipped;
          continue;
        }
      }
      todo.push_back(&entries[i]);
    }
    return todo;
  }

  /// Plans each selected patient in turn, until done or cancelled.
  Status PlanAll(const std::vector<const CohortEntry*>& todo, EventSink& fanout,
                 RunSummary& summary) {
    for (std::size_t i = 0; i < todo.size(); ++i) {
      if (options.cancelled && options.cancelled()) {
        summary.cancelled = true;
        break;
      }
      const CohortEntry& entry = *todo[i];
      MEWM_RETURN_IF_ERROR(Emit(fanout, PatientStarted{entry.id, int(i), int(todo.size())}));
      PatientFinished finished;
      const Status planned = PlanPatient(entry, fanout, &finished);
      if (planned) {
        ++summary.finished;
        MEWM_RETURN_IF_ERROR(Emit(fanout, finished));
      } else if (planned.error().code == ErrorCode::kCancelled) {
        summary.cancelled = true;
        break;
      } else {
        ++summary.failed;
        LogWarn("patient " + entry.id + " failed: " + planned.error().message);
        MEWM_RETURN_IF_ERROR(RecordFailure(entry.id, planned.error().message));
        MEWM_RETURN_IF_ERROR(Emit(fanout, PatientFailed{entry.id, planned.error().message}));
      }
    }
    return {};
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
  MEWM_TRY(impl->cohort_dir, SyntheticCohortDir(spec, impl->out));
  impl->run_id = options.run_id.empty() ? DefaultRunId(spec) : options.run_id;

  impl->backends = options.backends ? *options.backends : BackendRegistry::Builtin();
  MEWM_TRY(Models models, LoadModels(spec, impl->backends));
  impl->policy = std::move(models.policy);
  impl->dynamics = std::move(models.dynamics);
  impl->survival = std::move(models.survival);
  // A cancel reaches into a proposal that waits on an endpoint and into a simulation batch.
  impl->policy->set_cancelled(options.cancelled);
  impl->dynamics->set_cancelled(options.cancelled);
  return std::unique_ptr<Runner>(new Runner(std::move(impl)));
}

Status CheckRunFolder(const ScenarioSpec& spec, const RunOptions& options) {
  const std::string out = options.output_dir.empty() ? spec.output : options.output_dir;
  const std::string run_id = options.run_id.empty() ? DefaultRunId(spec) : options.run_id;
  MEWM_RETURN_IF_ERROR(CheckFolder(spec, options, out, run_id));
  if (spec.cohort.source == CohortSpec::Source::kManifest) {
    MEWM_TRY(const auto entries, ReadManifest(spec.cohort.manifest));
    return CheckCohortInputs("", &entries, options.check_input);
  }
  MEWM_TRY(const std::string cohort_dir, SyntheticCohortDir(spec, out));
  return CheckCohortInputs(cohort_dir, nullptr, options.check_input);
}

Expected<RunSummary> Runner::Run(EventSink& sink) {
  Impl& m = *impl_;
  const auto t0 = Clock::now();
  RunSummary summary{m.run_id, m.out, 0, 0, 0, false};
  // Everything that can refuse the run is checked before anything is written.
  MEWM_TRY(const std::uint64_t last_seq, CheckFolder(m.spec, m.options, m.out, m.run_id));
  std::optional<std::vector<CohortEntry>> manifest_entries;
  if (m.spec.cohort.source == CohortSpec::Source::kManifest) {
    MEWM_TRY(manifest_entries, ReadManifest(m.spec.cohort.manifest));
  }
  MEWM_RETURN_IF_ERROR(CheckCohortInputs(
      m.cohort_dir, manifest_entries ? &*manifest_entries : nullptr, m.options.check_input));
  MEWM_RETURN_IF_ERROR(m.PrepareFolder());
  const std::string events_path = (fs::path(m.out) / "events.jsonl").string();
  // A resumed run continues the earlier sequence, so the log stays one gap-free stream.
  if (m.options.resume) m.seq = last_seq;
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

  Status progress_status;
  auto prepared = manifest_entries
                      ? Expected<std::vector<CohortEntry>>(std::move(*manifest_entries))
                      : PrepareCohort(
                            m.spec, m.backends, m.cohort_dir,
                            [&](int done, int total) {
                              if (progress_status) {
                                progress_status = m.Emit(fanout, Progress{"cohort", done, total});
                              }
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
  MEWM_TRY(const std::vector<const CohortEntry*> todo, m.Select(entries, summary));
  MEWM_RETURN_IF_ERROR(m.Emit(
      fanout, RunStarted{m.spec.name, m.out, m.spec.seed, int(todo.size()), summary.skipped}));
  MEWM_RETURN_IF_ERROR(m.PlanAll(todo, fanout, summary));
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
    if (e.is_directory() && !IsTempName(name)) dirs.push_back(e.path());
  }
  std::sort(dirs.begin(), dirs.end());
  json list = json::array();
  std::ostringstream csv;
  csv << "patient_id,status,plan,risk_mean,risk_std,median_months,simulations,memo_hits,error\n";
  std::int64_t simulations = 0, memo_hits = 0, evaluations = 0;
  int finished = 0, failed = 0;
  for (const fs::path& dir : dirs) {
    MEWM_TRY(ResultRow row, ReadResultRow(dir / "result.json"));
    if (row.finished) {
      ++finished;
      simulations += row.simulations;
      memo_hits += row.memo_hits;
      evaluations += row.evaluations;
    } else {
      ++failed;
    }
    csv << row.csv;
    list.push_back(std::move(row.item));
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
      WriteFileAtomic((fs::path(output_dir) / "summary.json").string(), JsonFileText(summary)));
  return WriteFileAtomic((fs::path(output_dir) / "summary.csv").string(), csv.str());
}

namespace {

/// A shard of a merge, checked in full.
struct ShardContents {
  fs::path dir;
  json run;
  std::string scenario_text;
  int index = -1, count = -1;
  std::vector<std::pair<std::string, fs::path>> patients;  // id -> patient folder
};

Expected<ShardContents> ReadShard(const std::string& shard) {
  ShardContents s;
  s.dir = shard;
  std::error_code ec;
  if (!fs::is_directory(s.dir, ec)) {
    return MakeError(fs::exists(s.dir, ec) ? ErrorCode::kInvalidArgument : ErrorCode::kNotFound,
                     "shard '" + shard + "' is not a folder");
  }
  const fs::path run_path = s.dir / "run.json";
  MEWM_TRY(s.scenario_text, ReadFile((s.dir / "scenario.toml").string()));
  MEWM_TRY(const std::string run_text, ReadFile(run_path.string()));
  try {
    s.run = json::parse(run_text);
    if (!s.run.is_object() || !s.run.contains("run_id") || !s.run["run_id"].is_string() ||
        !s.run.contains("shard") || !s.run["shard"].is_string()) {
      return MakeError(ErrorCode::kCorruptData, "'" + run_path.string() +
                                                    "' is not the run.json of a mewm run (no "
                                                    "string run_id and shard)");
    }
  } catch (const std::exception& e) {
    return MakeError(ErrorCode::kCorruptData, "'" + run_path.string() + "': " + e.what());
  }
  const std::string shard_text = s.run["shard"].get<std::string>();
  char tail = 0;
  if (std::sscanf(shard_text.c_str(), "%d/%d%c", &s.index, &s.count, &tail) != 2 || s.count < 1 ||
      s.index < 0 || s.index >= s.count) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "'" + run_path.string() + "' says shard '" + shard_text +
                         "'; expected i/N with 0 <= i < N (a merged folder is not a shard)");
  }
  const fs::path patients = s.dir / "patients";
  if (!fs::exists(patients, ec)) {
    return MakeError(ErrorCode::kNotFound,
                     "shard '" + shard + "' has no patients folder ('" + patients.string() + "')");
  }
  if (fs::is_symlink(patients, ec) || !fs::is_directory(patients, ec)) {
    return MakeError(ErrorCode::kCorruptData,
                     "'" + patients.string() + "' is not a folder; expected the shard's patients");
  }
  for (const auto& e : fs::directory_iterator(patients, ec)) {
    const std::string id = e.path().filename().string();
    if (IsTempName(id)) continue;  // an interrupted patient, planned again on resume
    if (e.is_symlink() || !e.is_directory()) {
      return MakeError(ErrorCode::kCorruptData,
                       "'" + e.path().string() + "' is not a patient folder of a mewm run");
    }
    // Its files are copied into the merge: a link there would copy whatever it leads to.
    for (const auto& file : fs::directory_iterator(e.path(), ec)) {
      if (file.is_symlink() || !file.is_regular_file()) {
        return MakeError(ErrorCode::kCorruptData,
                         "'" + file.path().string() + "' is not a file of a mewm run");
      }
    }
    MEWM_TRY(const ResultRow row, ReadResultRow(e.path() / "result.json"));
    if (row.patient_id != id) {
      return MakeError(ErrorCode::kCorruptData, "'" + (e.path() / "result.json").string() +
                                                    "' is of patient '" + row.patient_id +
                                                    "', not of '" + id + "'");
    }
    if (row.finished && !fs::is_regular_file(e.path() / "post_chosen.vdb", ec)) {
      return MakeError(ErrorCode::kNotFound, "'" + (e.path() / "post_chosen.vdb").string() +
                                                 "' is missing; its result.json says finished");
    }
    s.patients.emplace_back(id, e.path());
  }
  if (ec)
    return MakeError(ErrorCode::kIo, "cannot list '" + patients.string() + "': " + ec.message());
  return s;
}

/// Refuses shard `s` unless it is of the same split and run (scenario, search) as `first`.
Status CheckSameRun(const ShardContents& s, const ShardContents& first, const std::string& dir) {
  const std::string run_file = (s.dir / "run.json").string();
  const std::string first_file = (first.dir / "run.json").string();
  if (s.count != first.count) {
    return MakeError(ErrorCode::kMismatch,
                     "'" + run_file + "' says shard " + s.run["shard"].get<std::string>() + ", '" +
                         first_file + "' says " + first.run["shard"].get<std::string>() +
                         "; only the shards of one split merge");
  }
  // "search" may be absent (older runs); compared as JSON, so a wrong type differs, never throws.
  const auto search = [](const json& run) {
    return run.contains("search") ? run["search"] : json("");
  };
  if (s.run["run_id"] != first.run["run_id"] || search(s.run) != search(first.run) ||
      s.scenario_text != first.scenario_text) {
    return MakeError(ErrorCode::kMismatch, "'" + dir + "' ran another scenario or search than '" +
                                               first.dir.string() + "' (run ids " +
                                               s.run["run_id"].get<std::string>() + " and " +
                                               first.run["run_id"].get<std::string>() +
                                               "); only shards of one run merge");
  }
  return {};
}

/// The shards of a merge, all read and checked, and where each patient's folder is.
struct ShardSet {
  std::vector<ShardContents> shards;
  std::map<std::string, fs::path> sources;  // patient id -> folder
};

/// Reads every shard in full and checks that together they are all shards of one run, each once,
/// with no patient twice and none of them the output folder.
Expected<ShardSet> ReadShards(const std::vector<std::string>& shard_dirs,
                              const std::string& output_dir) {
  ShardSet set;
  std::map<int, std::string> by_index;
  std::error_code ec;
  for (const std::string& dir : shard_dirs) {
    MEWM_TRY(ShardContents s, ReadShard(dir));
    const std::string run_file = (s.dir / "run.json").string();
    if (!set.shards.empty()) MEWM_RETURN_IF_ERROR(CheckSameRun(s, set.shards.front(), dir));
    if (auto [it, fresh] = by_index.emplace(s.index, dir); !fresh) {
      return MakeError(ErrorCode::kMismatch, "'" + run_file + "' is not a distinct shard i/N: '" +
                                                 it->second + "' is shard " +
                                                 s.run["shard"].get<std::string>() + " too");
    }
    if (fs::exists(output_dir, ec) && fs::equivalent(output_dir, dir, ec)) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "merge output '" + output_dir + "' is one of the shards");
    }
    for (const auto& [id, folder] : s.patients) {
      if (auto [it, fresh] = set.sources.emplace(id, folder); !fresh) {
        return MakeError(ErrorCode::kMismatch, "patient '" + id + "' is in both '" +
                                                   it->second.string() + "' and '" +
                                                   folder.string() + "'");
      }
    }
    set.shards.push_back(std::move(s));
  }
  const int count = set.shards.front().count;
  if (int(by_index.size()) != count) {
    return MakeError(ErrorCode::kInvalidArgument, "merge got " + std::to_string(by_index.size()) +
                                                      " of " + std::to_string(count) +
                                                      " shards; every shard 0.." +
                                                      std::to_string(count - 1) + " is needed");
  }
  return set;
}

/// Checks the merge output: a folder (or nothing) whose run files, if any, a mewm run wrote.
Status CheckMergeOutput(const fs::path& out, const std::string& output_dir) {
  std::error_code ec;
  if (fs::exists(out, ec) && !fs::is_directory(out, ec)) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "merge output '" + output_dir + "' exists and is not a folder");
  }
  const bool of_a_run = bool(ReadRunJson(out));
  for (const char* name : kRunFiles) {
    if (std::string(name) == "events.jsonl") continue;  // a merge writes none
    const fs::file_status status = fs::symlink_status(out / name, ec);
    if (!fs::exists(status)) continue;
    if (!of_a_run) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "'" + (out / name).string() +
                           "' was not written by a mewm run or merge (no run.json of a run "
                           "beside it); mewm does not overwrite it");
    }
    if (!fs::is_regular_file(status)) {  // a run writes files there, never folders or links
      return MakeError(ErrorCode::kInvalidArgument, "'" + (out / name).string() +
                                                        "' is not a file a mewm run wrote; "
                                                        "mewm does not replace it");
    }
  }
  return CheckPatientsFolder(out / "patients");
}

/// Writes the merged run into the temporary folder `temp`: patients' files copied from
/// `sources`, the first shard's scenario, its run.json marked merged, and a fresh summary.
Status StageMerge(const fs::path& temp, const ShardSet& set, std::size_t shard_count) {
  std::error_code ec;
  fs::remove_all(temp, ec);
  fs::create_directories(temp / "patients", ec);
  if (ec) return Error{ErrorCode::kIo, "cannot create '" + temp.string() + "': " + ec.message()};
  for (const auto& [id, source] : set.sources) {
    const fs::path target = temp / "patients" / id;
    fs::create_directory(target, ec);
    for (const char* name : kPatientFiles) {
      if (ec || !fs::exists(source / name)) continue;
      fs::copy_file(source / name, target / name, ec);
    }
    if (ec) {
      return Error{ErrorCode::kIo, "cannot copy '" + source.string() + "' to '" + target.string() +
                                       "': " + ec.message()};
    }
  }
  json run = set.shards.front().run;
  run["shard"] = "merged from " + std::to_string(shard_count) + " shards";
  Status written =
      WriteFileAtomic((temp / "scenario.toml").string(), set.shards.front().scenario_text);
  if (written) written = WriteFileAtomic((temp / "run.json").string(), JsonFileText(run));
  if (written) written = WriteSummary(temp.string());
  return written;
}

/// Moves the staged merge from `temp` into `out`, then removes `temp`. What it replaces goes aside
/// into `temp` first, so when a move fails every earlier one is undone and `out` is as it was.
Status InstallMerge(const fs::path& temp, const fs::path& out, const std::string& output_dir) {
  std::error_code ec;
  std::vector<std::pair<fs::path, fs::path>> done;  // (from, to), in order
  const auto move = [&](const fs::path& from, const fs::path& to) {
    if (!ec) fs::rename(from, to, ec);
    if (!ec) done.emplace_back(from, to);
  };
  fs::create_directory(temp / "replaced", ec);
  for (const char* name :
       {"patients", "scenario.toml", "run.json", "summary.json", "summary.csv"}) {
    std::error_code exists;
    if (fs::exists(fs::symlink_status(out / name, exists)))
      move(out / name, temp / "replaced" / name);
    move(temp / name, out / name);
  }
  if (ec) {
    const std::string failed = "cannot move the merge from '" + temp.string() + "' into '" +
                               output_dir + "': " + ec.message();
    std::error_code undo;
    for (auto it = done.rbegin(); it != done.rend() && !undo; ++it) {
      fs::rename(it->second, it->first, undo);
    }
    if (undo) {  // the replaced files stay where they are, named
      return MakeError(ErrorCode::kIo, failed + "; undoing it failed too (" + undo.message() +
                                           "): the files it replaced are in '" +
                                           (temp / "replaced").string() + "'");
    }
    fs::remove_all(temp, undo);  // the staged merge alone
    return MakeError(ErrorCode::kIo, failed + "; '" + output_dir + "' is as it was");
  }
  fs::remove_all(temp, ec);
  return {};
}

}  // namespace

Status MergeResults(const std::vector<std::string>& shard_dirs, const std::string& output_dir) {
  if (shard_dirs.empty()) {
    return MakeError(ErrorCode::kInvalidArgument, "merge needs at least one shard folder");
  }
  // 1. Every shard, in full, before anything is written.
  MEWM_TRY(const ShardSet set, ReadShards(shard_dirs, output_dir));

  // 2. The output folder: files of an earlier merge (or run) are replaced, nothing else.
  const fs::path out(output_dir);
  MEWM_RETURN_IF_ERROR(CheckMergeOutput(out, output_dir));

  // 3. Write everything into a temporary folder inside the output, then rename into place.
  std::error_code ec;
  const bool created = !fs::exists(out, ec);
  fs::create_directories(out, ec);
  if (ec) return MakeError(ErrorCode::kIo, "cannot create '" + output_dir + "': " + ec.message());
  const fs::path temp = out / (".tmp-merge-" + std::to_string(::getpid()));
  if (Status staged = StageMerge(temp, set, shard_dirs.size()); !staged) {
    std::error_code ignored;
    fs::remove_all(temp, ignored);
    if (created) fs::remove(out, ignored);  // only when empty again
    return staged;
  }
  return InstallMerge(temp, out, output_dir);
}

}  // namespace mewm::scenarios

// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The runner: executes a scenario patient by patient (policy proposal, planner search, final
// render of the chosen plan), emits typed events, and writes results atomically:
//
//   <out>/run.json, scenario.toml, events.jsonl, summary.json, summary.csv
//   <out>/patients/<id>/result.json     chosen plan, every candidate, survival curve, counters
//   <out>/patients/<id>/post_chosen.vdb  simulated post-treatment CT + viable mask of the plan
//   <out>/patients/<id>/post_chosen_ct.nii.gz, post_chosen_labels.nii.gz  its NIfTI copies
//                                        (results.nifti, default on)
//   <out>/patients/<id>/survival.png     chosen vs next-best predicted survival (results.plots)
//
// A failing patient is reported (patient_failed, summary) and the run goes on.
//
// The output folder must be new, empty, or a results folder of the same scenario (its run.json
// names it); RunOptions::force also accepts another folder. Nothing is written before the folder,
// the resume log and a manifest cohort are checked, and a run deletes only files a run wrote.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "mewm/core/expected.h"
#include "mewm/dynamics/dynamics_model.h"
#include "mewm/policy/policy_model.h"
#include "mewm/run/backends.h"
#include "mewm/run/cohort_source.h"
#include "mewm/run/events.h"
#include "mewm/run/scenario.h"
#include "mewm/survival/survival_model.h"

namespace mewm::scenarios {

/// The three models a scenario names, loaded and ready.
struct Models {
  std::unique_ptr<policy::PolicyModel> policy;
  std::unique_ptr<dynamics::DynamicsModel> dynamics;
  std::unique_ptr<survival::SurvivalModel> survival;
};
/// Creates the scenario's policy, dynamics and survival models through `backends` (errors name
/// the file).
Expected<Models> LoadModels(const ScenarioSpec& spec, const BackendRegistry& backends);

/// The scenario's patients, in cohort order. A synthetic cohort is prepared in `synthetic_dir`
/// first by the synthetic cohort source of `backends` (BackendRegistry::PrepareSyntheticCohort:
/// reused when it matches, else generated; kUnsupported without a source); `cancelled` stops that
/// generation with kCancelled.
Expected<std::vector<CohortEntry>> PrepareCohort(const ScenarioSpec& spec,
                                                 const BackendRegistry& backends,
                                                 const std::string& synthetic_dir,
                                                 const std::function<void(int, int)>& progress = {},
                                                 const std::function<bool()>& cancelled = {});

struct RunOptions {
  std::string output_dir;  ///< overrides the scenario's run.output when not empty
  bool resume = false;     ///< keep finished patients of an earlier run in the same folder
  int shard_index = 0;     ///< plan patients whose index % shard_count == shard_index
  int shard_count = 1;
  /// Also write into a non-empty folder that is not a results folder of this scenario. Files a
  /// run does not write stay; a file or folder with a name the run writes is still refused
  /// unless a mewm run wrote it.
  bool force = false;
  /// Polled between simulation batches and patients, and while a synthetic cohort is generated
  /// (then from several threads at once: it must be thread-safe).
  std::function<bool()> cancelled;
  /// Synthetic cohorts: called while the cohort is generated (done, total). The runner also
  /// emits a `progress` event ("cohort", done, total) for each step.
  std::function<void(int, int)> cohort_progress;
  /// Overrides the run id (default: derived from the scenario text, seed and search). A server
  /// gives each submission its own. With `resume`, an events.jsonl of this id is continued.
  std::string run_id;
  /// false: `sink` keeps events.jsonl itself (the streaming server's group-committed log), so
  /// the runner does not write it; it still reads it to continue the sequence on resume.
  bool write_event_log = true;
  /// Called with the wall time of each model call: "policy" (a proposal), "dynamics" (a
  /// simulation batch), "survival" (scoring a batch). From the runner's thread.
  std::function<void(const char* stage, double seconds)> stage_seconds;
  /// Called with each file a manifest cohort's rows name (key "<csv>:<line> <column>", resolved
  /// path) before the run looks at any of them. The server passes its scenario-base confinement
  /// here, as it does to ParseScenario for the scenario's own keys. Empty: no check.
  std::function<Status(const ScenarioPath&)> check_input;
  /// Creates the models and prepares synthetic cohorts; nullptr: BackendRegistry::Builtin(),
  /// which has no diffusion model and no synthetic world (manifest cohorts only).
  const BackendRegistry* backends = nullptr;
};

struct RunSummary {
  std::string run_id;
  std::string output_dir;
  int finished = 0, failed = 0, skipped = 0;
  bool cancelled = false;
};

/// The run id a scenario gets unless RunOptions::run_id says otherwise: "<name>-<8 hex>", a hash
/// of the scenario text, seed and search, so a rerun of the same file keeps its id.
std::string DefaultRunId(const ScenarioSpec& spec);

class Runner {
 public:
  /// Loads the models and the cohort list. kInvalidArgument for a bad shard; the models' errors.
  static Expected<std::unique_ptr<Runner>> Create(const ScenarioSpec& spec,
                                                  const RunOptions& options);
  ~Runner();

  /// Runs every patient of this shard. Returns an error only when the run itself cannot go on
  /// (output folder unwritable, a sink failing); patient failures are in the summary.
  Expected<RunSummary> Run(EventSink& sink);

  const std::string& run_id() const;
  const std::string& output_dir() const;

 private:
  struct Impl;
  explicit Runner(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

/// Checks, without writing anything, that a run with these options may use its output folder:
/// - the folder is new, empty, or holds a run.json of a run of the same scenario name
///   (kInvalidArgument otherwise, unless `options.force`);
/// - every entry of its patients/ is a patient folder a run wrote (kInvalidArgument naming the
///   first other one, even with `force`);
/// - with `resume`, its events.jsonl (or else run.json) belongs to this run id (kMismatch), and
///   every line of events.jsonl parses and ends with a newline (kCorruptData naming the line);
/// - a manifest cohort reads (its errors).
/// Runner::Run makes the same checks first; `mewm run --publish` calls this before queueing.
Status CheckRunFolder(const ScenarioSpec& spec, const RunOptions& options);

/// Rebuilds summary.json and summary.csv of a results folder from its patients/*/result.json.
Status WriteSummary(const std::string& output_dir);

/// Combines shard result folders into `output_dir`: copies each patient folder (a patient present
/// in two shards is an error) and writes the summary. Every shard is checked in full first: its
/// run.json (shard "i/N" with 0 <= i < N, one N and run id for all, every i once), scenario.toml,
/// patients/ (a folder) and each patients/<id>/result.json (a patient result of that id, with its
/// post_chosen.vdb when finished; its NIfTI copies and survival.png are copied when present);
/// errors name the shard's file (kInvalidArgument, kMismatch, kCorruptData, kNotFound). The merge
/// is written into `output_dir`/.tmp-merge-<pid>/ and renamed into place at the end, so a failure
/// leaves the output as it was. An earlier merge's files in `output_dir` are replaced; files a run
/// did not write are refused, never deleted.
Status MergeResults(const std::vector<std::string>& shard_dirs, const std::string& output_dir);

}  // namespace mewm::scenarios

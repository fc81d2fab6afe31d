// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Scenario files: what to run (cohort, backends, planner) in one TOML file, validated in full
// before anything runs. docs/SCENARIOS.md documents every key.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "mewm/core/expected.h"
#include "mewm/dynamics/diffusion.h"
#include "mewm/dynamics/mechanistic.h"
#include "mewm/planner/planner.h"
#include "mewm/policy/guideline.h"
#include "mewm/policy/openai.h"
#include "mewm/policy/vlm.h"
#include "mewm/tace/action_base.h"

namespace mewm::scenarios {

class BackendRegistry;

struct CohortSpec {
  enum class Source { kSynthetic, kManifest };
  Source source = Source::kSynthetic;
  // synthetic
  int n = 4;
  std::uint64_t seed = 1;
  double spacing_mm = 1.0;
  /// Where the generated cohort is kept and reused; "" = <output>/cohort. Relative to the working
  /// directory, like run.output, so runs with different outputs can share one cohort.
  std::string dir;
  // manifest
  std::string manifest;  ///< CSV path, resolved against the scenario's folder
};

/// What a run writes beside each patient's result.json.
struct ResultsSpec {
  /// post_chosen_ct.nii.gz and post_chosen_labels.nii.gz beside post_chosen.vdb, for viewers
  /// that do not read .vdb (3D Slicer, ITK-SNAP).
  bool nifti = true;
  /// survival.png: the predicted survival of the chosen and the next-best plan, with the spread
  /// of their T samples.
  bool plots = true;
};

/// A path a scenario names, with the key that names it.
struct ScenarioPath {
  std::string key;   ///< "dynamics.model"
  std::string path;  ///< as ParseScenario resolved it
};

struct ScenarioSpec {
  std::string path;  ///< the scenario file ("" when parsed from text)
  std::string text;  ///< its text, copied into the results
  // [run]
  std::string name;
  std::uint64_t seed = 0;
  std::string device = "cpu";
  std::string output;  ///< results folder, relative to the working directory unless absolute
  // [cohort]
  CohortSpec cohort;
  // [policy]
  std::string policy_backend = "guideline";
  policy::GuidelineConfig guideline;
  /// vlm: checkpoint (resolved path), top_k, device ("" = run.device), threads, inputs. The
  /// grammar's horizons and protocol come from [planner] and [actions] when the model is created.
  policy::VlmOptions vlm;
  /// openai: endpoint, model, api_key_env, top_k, images, response_format, temperature, timeouts,
  /// retries and repairs; horizons and protocol as for vlm.
  policy::OpenAiOptions openai;
  // [dynamics]
  std::string dynamics_backend = "mechanistic";
  std::string calibration;  ///< mechanistic: BiologyRegression file (resolved path)
  dynamics::MechanisticConfig mechanistic;
  /// Sample spread: true ("calibrated") draws each parameter with the calibration's residual SD;
  /// false ("fixed") uses mechanistic.sample_sigma for all.
  bool calibrated_uncertainty = true;
  /// diffusion: checkpoint (resolved path), preset, sampler. search = reference replaces the
  /// sampler with MeWM's 200-step ancestral one.
  dynamics::DiffusionBackendOptions diffusion;
  // [survival]
  std::string survival_backend = "cox";
  std::string survival_model;  ///< resolved path
  // [planner]
  PlannerSpec planner;
  // [actions]
  std::string actions_path;  ///< "" = the shipped action base
  std::string protocol = "cTACE";
  ActionBase actions = ActionBase::Default();
  // [constraints]
  std::vector<std::string> require;  ///< canonical items every plan must contain
  std::vector<std::string> forbid;   ///< canonical items no plan may contain
  // [results]
  ResultsSpec results;

  /// Every file the scenario reads, with its key, as resolved (only the keys that are set):
  /// cohort.manifest, dynamics.calibration, dynamics.model, survival.model, actions.path. A key
  /// that names an input must be listed here: the server confines exactly these paths, and
  /// ScenarioTest.EveryPathKeyIsEnumerated fails for a string key that is neither listed nor
  /// declared not to be a path.
  std::vector<ScenarioPath> InputPaths() const;
  /// Every folder the scenario names for writing, as given (only the keys that are set):
  /// run.output and, for synthetic cohorts, cohort.dir. Where a run's cohort really goes is
  /// SyntheticCohortDir.
  std::vector<ScenarioPath> OutputPaths() const;
};

/// Run names (`run.name`): 1 to 64 characters from A-Z a-z 0-9 . _ -, starting with a letter or
/// a digit, and no "..". The name becomes part of file names (the default output folder
/// results/<name>, run ids <name>-<hash>, server folders) and of event topics (run/<id>/...), so
/// anything else is refused. kInvalidArgument saying what is allowed.
Status ValidateRunName(const std::string& name);

/// What ParseScenario may do with the files a scenario names.
struct ParseOptions {
  /// Called with each input path (key, resolved path) before the file is looked at or read. An
  /// error stops the parse and is returned as it is. The server passes its confinement check
  /// here, so a path outside its scenario base is refused before anything is known or read of
  /// what lies there.
  std::function<Status(const ScenarioPath&)> check_input;
  /// The backends whose names and keys the model tables may use; nullptr: the shipped ones
  /// (BackendRegistry::Builtin(), which parses every shipped backend).
  const BackendRegistry* backends = nullptr;
};

/// The largest action base file (`actions.path`) a scenario may name, in bytes. The shipped one
/// is about 6 KB.
inline constexpr std::uint64_t kMaxActionBaseBytes = 1u << 20;
/// The largest scenario file LoadScenario reads, in bytes: a server takes requests of at most
/// 1 MiB, and the shipped scenarios are about 2 KB. A 200 MB comment took 1 GB to parse, and the
/// run copied it into its results.
inline constexpr std::uint64_t kMaxScenarioBytes = 1u << 20;

/// Parses and validates a scenario. Relative input paths (manifest, models, action base) resolve
/// against `base_dir`; each must name an existing regular file, and the action base is read
/// (a regular file of at most kMaxActionBaseBytes). Every problem found is reported at once, one
/// per line, each naming origin:line, the key and the expected form (kInvalidArgument); kParse
/// for bad TOML; the error of `options.check_input` as it is.
Expected<ScenarioSpec> ParseScenario(const std::string& text, const std::string& origin,
                                     const std::string& base_dir, const ParseOptions& options = {});
/// Reads and parses a scenario file (a regular file of at most kMaxScenarioBytes); relative paths
/// resolve against its folder.
Expected<ScenarioSpec> LoadScenario(const std::string& path,
                                    const BackendRegistry* backends = nullptr);

/// The one rule for where a run keeps its synthetic cohort, shared by `mewm run` (the Runner,
/// and the commands that prepare a scenario's cohort) and the server:
///  - without `results_root` (`mewm run`): `cohort.dir` as given (relative to the working
///    directory), or `<run_output>/cohort` when unset. A `cohort.dir` that holds the output
///    folder, or lies inside it anywhere but at `<run_output>/cohort`, is kInvalidArgument: the
///    run and the cohort would write over each other;
///  - with `results_root` (the server): cohorts live in `<results_root>/cohorts/`. Unset, it is
///    `<results_root>/cohorts/n<N>-seed<S>-<spacing>mm`, shared by every run of that cohort; a
///    relative `cohort.dir` resolves against `results_root`, and the folder must lie strictly
///    inside `<results_root>/cohorts/` once normalised and its existing symbolic links resolved
///    (kInvalidArgument naming cohort.dir and the rule otherwise).
/// Either way a folder that holds something other than a cohort mewm wrote is never replaced
/// (GenerateCohort refuses it).
Expected<std::string> SyntheticCohortDir(const ScenarioSpec& spec, const std::string& run_output,
                                         const std::string& results_root = "");

}  // namespace mewm::scenarios

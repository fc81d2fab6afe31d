// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Scenario files: what to run (cohort, backends, planner) in one TOML file, validated in full
// before anything runs. docs/SCENARIOS.md documents every key.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "mewm/core/action_base.h"
#include "mewm/core/expected.h"
#include "mewm/dynamics/diffusion.h"
#include "mewm/dynamics/mechanistic.h"
#include "mewm/policy/guideline.h"

namespace mewm::scenarios {

enum class SearchMode {
  kBeam,        ///< true beam search over distinct partial plans (default)
  kReference,   ///< MeWM's released loop: per-beam greedy argmin, batch 1, no memo
  kExhaustive,  ///< every valid plan within the horizons
};
const char* ToString(SearchMode mode);

struct PlannerSpec {
  SearchMode search = SearchMode::kBeam;
  int beams = 5;            ///< B
  int drug_horizon = 2;     ///< H_d: at most this many drugs
  int embolic_horizon = 2;  ///< H_e: embolics including Lipiodol
  int samples = 4;          ///< T: samples per candidate plan
  int max_batch = 1024;     ///< requests per DynamicsModel::Simulate call (bounds memory)
};

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
};

/// Parses and validates a scenario. Relative input paths (manifest, models, action base) resolve
/// against `base_dir`. Every problem found is reported at once, one per line, each naming
/// origin:line, the key and the expected form (kInvalidArgument); kParse for bad TOML.
Expected<ScenarioSpec> ParseScenario(const std::string& text, const std::string& origin,
                                     const std::string& base_dir);
/// Reads and parses a scenario file; relative paths resolve against its folder.
Expected<ScenarioSpec> LoadScenario(const std::string& path);

/// Backends this build knows, by family.
const std::vector<std::string>& KnownBackends(const std::string& family);

}  // namespace mewm::scenarios

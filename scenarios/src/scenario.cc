// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/scenarios/scenario.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <optional>

#include "mewm/core/config.h"
#include "mewm/core/device.h"
#include "mewm/core/file_util.h"
#include "mewm/core/text.h"

namespace mewm::scenarios {
namespace fs = std::filesystem;

const char* ToString(SearchMode mode) {
  switch (mode) {
    case SearchMode::kBeam:
      return "beam";
    case SearchMode::kReference:
      return "reference";
    case SearchMode::kExhaustive:
      return "exhaustive";
  }
  return "?";
}

const std::vector<std::string>& KnownBackends(const std::string& family) {
  static const std::map<std::string, std::vector<std::string>> backends = {
      {"policy", {"guideline"}}, {"dynamics", {"mechanistic", "diffusion"}}, {"survival", {"cox"}}};
  static const std::vector<std::string> none;
  auto it = backends.find(family);
  return it == backends.end() ? none : it->second;
}

namespace {

/// Collects every problem instead of stopping at the first.
class Problems {
 public:
  template <typename T>
  bool Take(Expected<T> value, T* out) {
    if (!value) {
      Add(value.error().message);
      return false;
    }
    *out = std::move(*value);
    return true;
  }
  void Add(const std::string& message) { messages_.push_back(message); }
  void Check(const Status& status) {
    if (!status) Add(status.error().message);
  }
  bool empty() const { return messages_.empty(); }
  Error ToError(const std::string& origin) const {
    std::string text = Join(messages_, "\n");
    for (std::size_t at = text.find('\n'); at != std::string::npos; at = text.find('\n', at + 3)) {
      text.replace(at, 1, "\n  ");
    }
    return Error{ErrorCode::kInvalidArgument, "invalid scenario " + origin + ":\n  " + text};
  }

 private:
  std::vector<std::string> messages_;
};

std::string Resolve(const std::string& base_dir, const std::string& path) {
  if (path.empty() || fs::path(path).is_absolute()) return path;
  return (fs::path(base_dir) / path).lexically_normal().string();
}

/// Reads input path keys: the caller's check comes first, before the file is looked at.
struct PathReader {
  const std::string& base_dir;
  const ParseOptions& options;
  Problems& problems;
  Status refused;  ///< the first error of options.check_input: parsing stops with it

  /// A path key whose value must name an existing regular file; an optional one may be absent
  /// (out stays ""). False when the key is absent, refused or names no such file.
  bool Read(const ConfigTable& table, const std::string& key, std::string* out,
            bool optional = false) {
    std::string value;
    if (!refused) return false;
    if (!problems.Take(
            table.GetString(key, optional ? std::optional<std::string>("") : std::nullopt),
            &value) ||
        (optional && !table.Has(key))) {
      return false;
    }
    const std::string name = table.path() + "." + key;
    if (value.empty()) {
      problems.Add(table.WhereKey(key) + ": " + name + " must name a file (got \"\")");
      return false;
    }
    *out = Resolve(base_dir, value);
    if (options.check_input) {
      refused = options.check_input(ScenarioPath{name, *out});
      if (!refused) return false;
    }
    std::error_code ec;
    const auto status = fs::status(*out, ec);  // stat(): never blocks, not even on a FIFO
    if (!fs::exists(status)) {
      problems.Add(table.WhereKey(key) + ": " + name + " names '" + *out +
                   "', which does not exist");
      return false;
    }
    if (!fs::is_regular_file(status)) {
      problems.Add(table.WhereKey(key) + ": " + name + " names '" + *out +
                   "', which is not a regular file");
      return false;
    }
    return true;
  }
};

/// Reads a scenario's tables into `s`, one method per table, collecting every problem.
class ScenarioParser {
 public:
  ScenarioParser(ScenarioSpec& spec, Problems& problems, PathReader& paths)
      : s(spec), problems(problems), paths(paths) {}

  void ReadRun(const ConfigTable& run);
  void ReadCohort(const ConfigTable& cohort);
  void ReadPolicy(const ConfigTable& pol);
  void ReadDynamics(const ConfigTable& dyn);
  void ReadSurvival(const ConfigTable& surv);
  void ReadPlanner(const ConfigTable& plan);
  /// False when the action base could not be read (the constraints are then not checked).
  bool ReadActions(const ConfigTable& act);
  void ReadConstraints(const ConfigTable& con, bool actions_ok);

 private:
  void Int(const ConfigTable& t, const std::string& key, std::int64_t fallback, std::int64_t lo,
           std::int64_t hi, int* out) {
    std::int64_t v = fallback;
    if (problems.Take(t.GetInt(key, fallback, lo, hi), &v)) *out = int(v);
  }

  ScenarioSpec& s;
  Problems& problems;
  PathReader& paths;
};

void ScenarioParser::ReadRun(const ConfigTable& run) {
  if (problems.Take(run.GetString("name"), &s.name)) {
    if (Status named = ValidateRunName(s.name); !named) {
      problems.Add(run.WhereKey("name") + ": " + named.error().message);
      s.name.clear();  // keeps the invalid name out of the default run.output below
    }
  }
  std::int64_t seed = 0;
  if (problems.Take(run.GetInt("seed", 0, 0), &seed)) s.seed = std::uint64_t(seed);
  if (problems.Take(run.GetString("device", std::string("cpu")), &s.device)) {
    if (auto d = ParseDevice(s.device); !d) {
      problems.Add(run.WhereKey("device") + ": run.device: " + d.error().message);
    }
  }
  problems.Take(run.GetString("output", "results/" + (s.name.empty() ? "run" : s.name)), &s.output);
  problems.Check(run.RejectUnknownKeys());
}

void ScenarioParser::ReadCohort(const ConfigTable& cohort) {
  std::string source;
  if (problems.Take(cohort.GetEnum("source", {"synthetic", "manifest"}), &source)) {
    if (source == "synthetic") {
      s.cohort.source = CohortSpec::Source::kSynthetic;
      Int(cohort, "n", 4, 1, 100000, &s.cohort.n);
      std::int64_t cohort_seed = 1;
      if (problems.Take(cohort.GetInt("seed", 1, 0), &cohort_seed)) {
        s.cohort.seed = std::uint64_t(cohort_seed);
      }
      problems.Take(cohort.GetDouble("spacing_mm", 1.0, 0.5, 4.0), &s.cohort.spacing_mm);
      problems.Take(cohort.GetString("dir", std::string()), &s.cohort.dir);
    } else {
      s.cohort.source = CohortSpec::Source::kManifest;
      paths.Read(cohort, "manifest", &s.cohort.manifest);
    }
  }
  problems.Check(cohort.RejectUnknownKeys());
}

void ScenarioParser::ReadPolicy(const ConfigTable& pol) {
  problems.Take(pol.GetEnum("backend", KnownBackends("policy"), std::string("guideline")),
                &s.policy_backend);
  Int(pol, "max_drugs", s.guideline.max_drugs, 2, 64, &s.guideline.max_drugs);
  Int(pol, "max_embolics", s.guideline.max_embolics, 1, 64, &s.guideline.max_embolics);
  problems.Check(pol.RejectUnknownKeys());
}

void ScenarioParser::ReadDynamics(const ConfigTable& dyn) {
  problems.Take(dyn.GetEnum("backend", KnownBackends("dynamics")), &s.dynamics_backend);
  if (s.dynamics_backend == "diffusion") {
    // The learned backend: a checkpoint, its preset and the DDIM sampler.
    paths.Read(dyn, "model", &s.diffusion.model_path);
    problems.Take(dyn.GetEnum("config", {"cpu", "mewm"}, std::string("cpu")), &s.diffusion.config);
    dynamics::SamplerConfig& sampler = s.diffusion.sampler;
    std::int64_t steps = sampler.steps;
    if (problems.Take(dyn.GetInt("steps", sampler.steps, 1, 1000), &steps)) {
      sampler.steps = int(steps);
    }
    problems.Take(dyn.GetDouble("eta", sampler.eta, 0.0, 1.0), &sampler.eta);
    problems.Take(dyn.GetDouble("guidance", sampler.guidance, 0.0, 20.0), &sampler.guidance);
    problems.Take(dyn.GetDouble("blend_margin_mm", s.diffusion.blend_margin_mm, 0.0, 50.0),
                  &s.diffusion.blend_margin_mm);
    problems.Check(dyn.RejectUnknownKeys());
  } else {
    paths.Read(dyn, "calibration", &s.calibration);
    dynamics::MechanisticConfig& m = s.mechanistic;
    std::string uncertainty;
    if (problems.Take(
            dyn.GetEnum("uncertainty", {"calibrated", "fixed"}, std::string("calibrated")),
            &uncertainty)) {
      s.calibrated_uncertainty = uncertainty == "calibrated";
    }
    problems.Take(dyn.GetDouble("sample_sigma", m.sample_sigma, 0.0, 2.0), &m.sample_sigma);
    problems.Take(dyn.GetDouble("grid_mm", m.grid_mm, 0.5, 8.0), &m.grid_mm);
    problems.Take(dyn.GetDouble("follow_up_days", m.follow_up_days, 1.0, 365.0), &m.follow_up_days);
    problems.Check(dyn.RejectUnknownKeys());
  }
}

void ScenarioParser::ReadSurvival(const ConfigTable& surv) {
  problems.Take(surv.GetEnum("backend", KnownBackends("survival")), &s.survival_backend);
  paths.Read(surv, "model", &s.survival_model);
  problems.Check(surv.RejectUnknownKeys());
}

void ScenarioParser::ReadPlanner(const ConfigTable& plan) {
  std::string search;
  if (problems.Take(
          plan.GetEnum("search", {"beam", "reference", "exhaustive"}, std::string("beam")),
          &search)) {
    s.planner.search = search == "beam"        ? SearchMode::kBeam
                       : search == "reference" ? SearchMode::kReference
                                               : SearchMode::kExhaustive;
  }
  Int(plan, "beams", 5, 1, 64, &s.planner.beams);
  Int(plan, "drug_horizon", 2, 0, 4, &s.planner.drug_horizon);
  Int(plan, "embolic_horizon", 2, 1, 5, &s.planner.embolic_horizon);
  Int(plan, "samples", 4, 1, 64, &s.planner.samples);
  Int(plan, "max_batch", 1024, 1, 1 << 20, &s.planner.max_batch);
  problems.Check(plan.RejectUnknownKeys());
}

bool ScenarioParser::ReadActions(const ConfigTable& act) {
  bool actions_ok = true;
  if (paths.Read(act, "path", &s.actions_path, /*optional=*/true)) {
    // Bounded and regular only: a scenario may come from a client of the server.
    std::string actions_text;
    actions_ok =
        problems.Take(ReadRegularFile(s.actions_path, kMaxActionBaseBytes), &actions_text) &&
        problems.Take(ActionBase::FromToml(actions_text, s.actions_path), &s.actions);
  } else if (act.Has("path")) {
    actions_ok = false;
  }
  problems.Take(act.GetString("protocol", std::string("cTACE")), &s.protocol);
  problems.Check(act.RejectUnknownKeys());
  if (actions_ok) {
    if (auto mandatory = s.actions.MandatoryItems(s.protocol); !mandatory) {
      problems.Add(act.WhereKey("protocol") + ": actions.protocol: " + mandatory.error().message);
      actions_ok = false;
    }
  }
  return actions_ok;
}

void ScenarioParser::ReadConstraints(const ConfigTable& con, bool actions_ok) {
  std::vector<std::string> require, forbid;
  problems.Take(con.GetStringList("require", std::vector<std::string>{}), &require);
  problems.Take(con.GetStringList("forbid", std::vector<std::string>{}), &forbid);
  problems.Check(con.RejectUnknownKeys());
  if (actions_ok) {
    const auto canonical = [&](const std::vector<std::string>& names, const std::string& key,
                               std::vector<std::string>* out) {
      for (const std::string& name : names) {
        auto item = s.actions.Find(name);
        if (!item) {
          problems.Add(con.WhereKey(key) + ": constraints." + key + ": " + item.error().message);
        } else {
          out->push_back(item->name);
        }
      }
    };
    canonical(require, "require", &s.require);
    canonical(forbid, "forbid", &s.forbid);
    for (const std::string& item : s.require) {
      if (std::find(s.forbid.begin(), s.forbid.end(), item) != s.forbid.end()) {
        problems.Add(con.Where() + ": constraints: '" + item + "' is both required and forbidden");
      }
    }
    // The required items plus the protocol's mandatory ones must form a valid plan.
    std::vector<std::string> mandatory;
    problems.Take(s.actions.MandatoryItems(s.protocol), &mandatory);
    for (const std::string& item : mandatory) {
      if (std::find(s.forbid.begin(), s.forbid.end(), item) != s.forbid.end()) {
        problems.Add(con.WhereKey("forbid") + ": constraints.forbid: '" + item +
                     "' is mandatory in protocol " + s.protocol);
      }
    }
    std::vector<std::string> base = mandatory;
    base.insert(base.end(), s.require.begin(), s.require.end());
    Plan required;
    if (problems.Take(s.actions.MakePlan(base), &required)) {
      for (const RuleViolation& v : s.actions.Violations(required, s.protocol)) {
        problems.Add(con.WhereKey("require") + ": constraints.require breaks rule '" + v.rule +
                     "': " + v.reason);
      }
      int drugs = 0, embolics = 0;
      for (const std::string& item : required.items()) {
        auto found = s.actions.Find(item);
        if (found) (found->kind == ItemKind::kDrug ? drugs : embolics) += 1;
      }
      if (drugs > s.planner.drug_horizon || embolics > s.planner.embolic_horizon) {
        problems.Add(
            con.WhereKey("require") + ": the mandatory and required items (" + required.ToString() +
            ") do not fit planner.drug_horizon = " + std::to_string(s.planner.drug_horizon) +
            " and planner.embolic_horizon = " + std::to_string(s.planner.embolic_horizon));
      }
    }
  }
}

}  // namespace

Status ValidateRunName(const std::string& name) {
  constexpr std::size_t kMaxLength = 64;
  const auto allowed = [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
  };
  const bool ok = !name.empty() && name.size() <= kMaxLength && allowed(name[0]) &&
                  name[0] != '.' && name[0] != '_' && name[0] != '-' &&
                  std::all_of(name.begin(), name.end(), allowed) &&
                  name.find("..") == std::string::npos;
  if (ok) return {};
  std::string shown = name.size() > kMaxLength ? name.substr(0, kMaxLength) + "..." : name;
  for (char& c : shown) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';  // keep messages one line
  }
  return MakeError(
      ErrorCode::kInvalidArgument,
      "run.name must be 1 to 64 characters from A-Z a-z 0-9 . _ -, starting with a "
      "letter or a digit, without '..' (got \"" +
          shown + "\"" +
          (name.size() > kMaxLength ? ", " + std::to_string(name.size()) + " characters"
                                    : std::string()) +
          ")");
}

std::vector<ScenarioPath> ScenarioSpec::InputPaths() const {
  std::vector<ScenarioPath> paths;
  const auto add = [&](const char* key, const std::string& path) {
    if (!path.empty()) paths.push_back({key, path});
  };
  add("cohort.manifest", cohort.manifest);
  add("dynamics.calibration", calibration);
  add("dynamics.model", diffusion.model_path);
  add("survival.model", survival_model);
  add("actions.path", actions_path);
  return paths;
}

std::vector<ScenarioPath> ScenarioSpec::OutputPaths() const {
  std::vector<ScenarioPath> paths;
  if (!output.empty()) paths.push_back({"run.output", output});
  if (!cohort.dir.empty()) paths.push_back({"cohort.dir", cohort.dir});
  return paths;
}

Expected<std::string> SyntheticCohortDir(const ScenarioSpec& spec, const std::string& run_output,
                                         const std::string& results_root) {
  if (results_root.empty()) {
    return spec.cohort.dir.empty() ? (fs::path(run_output) / "cohort").string() : spec.cohort.dir;
  }
  const fs::path cohorts = fs::path(results_root) / "cohorts";
  if (spec.cohort.dir.empty()) {
    // Runs of one cohort share its generated patients.
    char name[96];
    std::snprintf(name, sizeof(name), "n%d-seed%llu-%.3gmm", spec.cohort.n,
                  static_cast<unsigned long long>(spec.cohort.seed), spec.cohort.spacing_mm);
    return (cohorts / name).string();
  }
  const fs::path dir = fs::path(spec.cohort.dir).is_absolute()
                           ? fs::path(spec.cohort.dir)
                           : fs::path(results_root) / spec.cohort.dir;
  const std::string resolved = ResolvedPath(dir.string());
  if (!IsPathInside(resolved, cohorts.string()) || resolved == ResolvedPath(cohorts.string())) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "cohort.dir = \"" + spec.cohort.dir + "\" must name a folder inside " +
                         ResolvedPath(cohorts.string()) +
                         " (synthetic cohorts live in <results root>/cohorts/)");
  }
  return resolved;
}

Expected<ScenarioSpec> ParseScenario(const std::string& text, const std::string& origin,
                                     const std::string& base_dir, const ParseOptions& options) {
  MEWM_TRY(const ConfigDocument doc, ConfigDocument::Parse(text, origin));
  const ConfigTable root = doc.Root();
  ScenarioSpec s;
  s.text = text;
  Problems problems;
  PathReader paths{base_dir, options, problems, {}};
  // A table that is missing or not a table is a problem; its keys are then read from an empty
  // stand-in that no key of the text can take the place of (`__missing__ = 1`, found by the
  // dispatch fuzzer, crashed the server when the stand-in was looked up by name).
  const auto table = [&](const std::string& key, bool optional) -> ConfigTable {
    auto t = root.GetTable(key, optional);
    if (!t) {
      problems.Add(t.error().message);
      return root.MissingTable(key);
    }
    return *t;
  };
  ScenarioParser parse(s, problems, paths);
  parse.ReadRun(table("run", false));
  parse.ReadCohort(table("cohort", false));
  parse.ReadPolicy(table("policy", true));
  parse.ReadDynamics(table("dynamics", false));
  parse.ReadSurvival(table("survival", false));
  parse.ReadPlanner(table("planner", true));
  const bool actions_ok = parse.ReadActions(table("actions", true));
  parse.ReadConstraints(table("constraints", true), actions_ok);
  // Unknown top-level tables.
  problems.Check(root.RejectUnknownKeys());
  if (!paths.refused) return paths.refused.error();
  if (!problems.empty()) return problems.ToError(origin);
  return s;
}

Expected<ScenarioSpec> LoadScenario(const std::string& path) {
  MEWM_TRY(const std::string text, ReadFile(path));
  const fs::path p(path);
  MEWM_TRY(ScenarioSpec spec,
           ParseScenario(text, path, p.has_parent_path() ? p.parent_path().string() : "."));
  spec.path = path;
  return spec;
}

}  // namespace mewm::scenarios

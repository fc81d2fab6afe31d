// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/run/scenario.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <optional>

#include "mewm/core/config.h"
#include "mewm/core/device.h"
#include "mewm/core/file_util.h"
#include "mewm/core/text.h"
#include "mewm/run/backends.h"

namespace mewm::scenarios {
namespace fs = std::filesystem;

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
  /// Every problem, one per indented line; past kMaxLines lines, how many more there are. Built
  /// in one pass: a submitted scenario of 90,000 unknown keys took 15 s when each line break was
  /// spliced into the text, and the server answered nothing else meanwhile.
  Error ToError(const std::string& origin) const {
    constexpr std::size_t kMaxLines = 100;
    std::string text = "invalid scenario " + origin + ":";
    std::size_t lines = 0;
    for (const std::string& message : messages_) {
      for (std::size_t begin = 0; begin <= message.size();) {
        const std::size_t end = std::min(message.find('\n', begin), message.size());
        if (++lines <= kMaxLines) text += "\n  " + message.substr(begin, end - begin);
        begin = end + 1;
      }
    }
    if (lines > kMaxLines) {
      text += "\n  ... and " + std::to_string(lines - kMaxLines) + " more";
    }
    return Error{ErrorCode::kInvalidArgument, std::move(text)};
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
  ScenarioParser(ScenarioSpec& spec, Problems& problems, PathReader& paths,
                 const BackendRegistry& backends)
      : s(spec), problems(problems), paths(paths), backends(backends) {}

  void ReadRun(const ConfigTable& run);
  void ReadCohort(const ConfigTable& cohort);
  /// A model table ([policy], [dynamics], [survival]): its `backend` (one of the registry's
  /// names), then the keys that backend accepts, read by the registry's entry.
  void ReadBackend(BackendFamily family, const ConfigTable& table, std::string* backend,
                   const std::optional<std::string>& fallback);
  void ReadPlanner(const ConfigTable& plan);
  /// False when the action base could not be read (the constraints are then not checked).
  bool ReadActions(const ConfigTable& act);
  void ReadConstraints(const ConfigTable& con, bool actions_ok);
  void ReadResults(const ConfigTable& res);

 private:
  void Int(const ConfigTable& t, const std::string& key, std::int64_t fallback, std::int64_t lo,
           std::int64_t hi, int* out) {
    std::int64_t v = fallback;
    if (problems.Take(t.GetInt(key, fallback, lo, hi), &v)) *out = int(v);
  }

  ScenarioSpec& s;
  Problems& problems;
  PathReader& paths;
  const BackendRegistry& backends;
};

/// A backend's view of the parser: its table, the problem list and the path reader.
class TableReader : public BackendTableReader {
 public:
  TableReader(const ConfigTable& table, Problems& problems, PathReader& paths)
      : table_(table), problems_(problems), paths_(paths) {}
  const ConfigTable& table() const override { return table_; }
  void Problem(const std::string& message) override { problems_.Add(message); }
  bool Path(const std::string& key, std::string* out) override {
    return paths_.Read(table_, key, out);
  }

 private:
  const ConfigTable& table_;
  Problems& problems_;
  PathReader& paths_;
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

void ScenarioParser::ReadBackend(BackendFamily family, const ConfigTable& table,
                                 std::string* backend, const std::optional<std::string>& fallback) {
  // A bad name is a problem; the table's other keys are then read as the default backend's.
  problems.Take(table.GetEnum("backend", backends.Names(family), fallback), backend);
  TableReader reader(table, problems, paths);
  backends.Read(family, *backend, reader, s);
  problems.Check(table.RejectUnknownKeys());
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
  std::string proposals;
  if (problems.Take(plan.GetEnum("proposals", {"search", "score"}, std::string("search")),
                    &proposals)) {
    s.planner.proposals = proposals == "search" ? ProposalMode::kSearch : ProposalMode::kScore;
  }
  problems.Take(plan.GetBool("control_arm", true), &s.planner.control_arm);
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

void ScenarioParser::ReadResults(const ConfigTable& res) {
  problems.Take(res.GetBool("nifti", true), &s.results.nifti);
  problems.Take(res.GetBool("plots", true), &s.results.plots);
  problems.Check(res.RejectUnknownKeys());
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
  add("policy.checkpoint", vlm.checkpoint);
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
    const std::string own = (fs::path(run_output) / "cohort").string();
    if (spec.cohort.dir.empty()) return own;
    // A cohort folder that holds the results, or sits among them anywhere but where the run puts
    // its own cohort, would have the run and the cohort write over each other (a run refused
    // itself after writing there, or planned into its patients/).
    const bool holds_results = IsPathInside(run_output, spec.cohort.dir);
    const bool among_results = IsPathInside(spec.cohort.dir, run_output) &&
                               ResolvedPath(spec.cohort.dir) != ResolvedPath(own);
    if (holds_results || among_results) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "cohort.dir = \"" + spec.cohort.dir + "\" and the output folder '" +
                           run_output + "' overlap; give the cohort a folder of its own outside " +
                           "the results (or leave cohort.dir out: the run then keeps its cohort " +
                           "in <output>/cohort)");
    }
    return spec.cohort.dir;
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
  const BackendRegistry builtin = options.backends ? BackendRegistry() : BackendRegistry::Builtin();
  ScenarioParser parse(s, problems, paths, options.backends ? *options.backends : builtin);
  parse.ReadRun(table("run", false));
  parse.ReadCohort(table("cohort", false));
  parse.ReadBackend(BackendFamily::kPolicy, table("policy", true), &s.policy_backend,
                    std::string("guideline"));
  parse.ReadBackend(BackendFamily::kDynamics, table("dynamics", false), &s.dynamics_backend,
                    std::nullopt);
  parse.ReadBackend(BackendFamily::kSurvival, table("survival", false), &s.survival_backend,
                    std::nullopt);
  parse.ReadPlanner(table("planner", true));
  const bool actions_ok = parse.ReadActions(table("actions", true));
  parse.ReadConstraints(table("constraints", true), actions_ok);
  parse.ReadResults(table("results", true));
  // Unknown top-level tables.
  problems.Check(root.RejectUnknownKeys());
  if (!paths.refused) return paths.refused.error();
  if (!problems.empty()) return problems.ToError(origin);
  return s;
}

Expected<ScenarioSpec> LoadScenario(const std::string& path, const BackendRegistry* backends) {
  MEWM_TRY(const std::string text, ReadRegularFile(path, kMaxScenarioBytes));
  const fs::path p(path);
  ParseOptions options;
  options.backends = backends;
  MEWM_TRY(
      ScenarioSpec spec,
      ParseScenario(text, path, p.has_parent_path() ? p.parent_path().string() : ".", options));
  spec.path = path;
  return spec;
}

}  // namespace mewm::scenarios

// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// mewm: the one command-line tool. Thin: parses flags and calls library APIs.
#include <openvdb/openvdb.h>

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <type_traits>

#include "commands.h"
#include "mewm/core/file_util.h"
#include "mewm/core/log.h"
#include "mewm/core/text.h"
#include "mewm/core/version.h"
#include "mewm/dynamics/diffusion_backend.h"
#include "mewm/policy/vlm_backend.h"
#include "mewm/world/cohort.h"

namespace mewm::cli {

int Fail(const Error& error) {
  // Messages quote what others wrote (a server's reply, a file's text): never raw control bytes.
  std::cerr << "mewm: error: " << EscapeControl(error.message) << " [" << ErrorCodeName(error.code)
            << "]\n";
  return 1;
}

Status RefuseOutputInInputs(const std::string& flag, const std::string& out,
                            const std::vector<std::string>& inputs) {
  for (const std::string& input : inputs) {
    if (out.empty() || input.empty() || !IsPathInside(out, input)) continue;
    return MakeError(ErrorCode::kInvalidArgument,
                     flag + " '" + out + "' is " + (IsPathInside(input, out) ? "" : "inside ") +
                         "the input '" + input +
                         "', which this command reads and does not replace; write it elsewhere");
  }
  return {};
}

void AddForceFlag(CLI::App* sub, bool* force) {
  sub->add_flag("--force", *force, "Replace output files that exist");
}

Status CheckOutput(const std::string& flag, const std::string& out, bool force,
                   const std::vector<std::string>& inputs) {
  if (out.empty()) return {};
  MEWM_RETURN_IF_ERROR(RefuseOutputInInputs(flag, out, inputs));
  std::error_code ec;
  if (!force && std::filesystem::exists(std::filesystem::symlink_status(out, ec))) {
    return MakeError(ErrorCode::kInvalidArgument,
                     flag + " '" + out +
                         "' exists; choose another name, or pass --force to "
                         "replace it");
  }
  return CheckWritable(out);
}

Status CheckOutputs(const std::vector<std::pair<std::string, std::string>>& outputs, bool force,
                    const std::vector<std::string>& inputs) {
  for (std::size_t i = 0; i < outputs.size(); ++i) {
    const auto& [flag, out] = outputs[i];
    for (std::size_t j = 0; j < i; ++j) {
      const auto& [other_flag, other] = outputs[j];
      if (!out.empty() && !other.empty() && IsPathInside(out, other) && IsPathInside(other, out)) {
        return MakeError(
            ErrorCode::kInvalidArgument,
            other_flag + " and " + flag + " name the same file '" + out + "'; give each its own");
      }
    }
    MEWM_RETURN_IF_ERROR(CheckOutput(flag, out, force, inputs));
  }
  return {};
}

}  // namespace mewm::cli

namespace {

/// Exit statuses every command shares (README, docs/SCENARIOS.md).
constexpr int kExitUsage = 2;      ///< the command line is wrong: unknown command, bad flag
constexpr int kExitInternal = 70;  ///< a bug (sysexits' EX_SOFTWARE): please report it

/// "" when every argument is valid UTF-8, else a message naming the first that is not (bytes
/// escaped). Paths go into JSON (results, events, model provenance), which holds UTF-8 only: a
/// name with a byte such as 0xff reached nlohmann's encoder and exited 70, after a run had
/// already created its folder.
std::string NonUtf8Argument(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    try {
      (void)nlohmann::json(std::string(argv[i])).dump();
    } catch (const nlohmann::json::type_error&) {
      std::string shown;
      for (const char c : std::string(argv[i])) {
        const auto u = static_cast<unsigned char>(c);
        if (u >= 0x20 && u < 0x7f) {
          shown += c;
        } else {
          char hex[8];
          std::snprintf(hex, sizeof hex, "\\x%02x", u);
          shown += hex;
        }
      }
      return "argument " + std::to_string(i) + " '" + shown +
             "' is not valid UTF-8; mewm writes paths into JSON, which holds UTF-8 only: rename "
             "the file or folder";
    }
  }
  return "";
}

/// Checks the command words of argv against the command tree: each word that follows a command
/// with subcommands must name one of them. Returns "" when they do, else the message naming the
/// unknown command and listing the commands at that level. Words after a command without
/// subcommands are its arguments; options are skipped, with the value of the one top-level option
/// that takes one.
std::string UnknownCommand(CLI::App& app, int argc, char** argv) {
  CLI::App* level = &app;
  std::string path = "mewm";
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--log-level") {
      ++i;
      continue;
    }
    if (arg.empty() || arg[0] == '-') continue;
    const auto subs = level->get_subcommands([](CLI::App*) { return true; });
    if (subs.empty()) break;
    CLI::App* next = nullptr;
    std::string names;
    for (CLI::App* sub : subs) {
      if (sub->get_name() == arg) next = sub;
      names += "\n  " + sub->get_name();
    }
    if (next == nullptr) {
      return "unknown command '" + (path == "mewm" ? arg : path.substr(5) + " " + arg) +
             "'. The commands " + (path == "mewm" ? "are" : "of '" + path + "' are") + ":" + names +
             "\nRun '" + path + " --help' for what each one does.";
    }
    level = next;
    path += " " + arg;
  }
  return "";
}

/// One worked example per command, shown at the end of its --help.
const std::map<std::string, std::string>& Examples() {
  static const std::map<std::string, std::string> examples = {
      {"run", "mewm run scenarios/tace_demo/scenario.toml --out out/demo"},
      {"merge", "mewm merge --out results/all results/shard0 results/shard1"},
      {"serve", "mewm serve --results-root /srv/mewm --scenario-base scenarios"},
      {"submit", "mewm submit scenarios/tace_demo/scenario.toml --wait"},
      {"watch", "mewm watch --run tace_demo-1a2b3c4d --json"},
      {"status", "mewm status tace_demo-1a2b3c4d"},
      {"cancel", "mewm cancel tace_demo-1a2b3c4d"},
      {"import dicom",
       "mewm import dicom ct_folder/ --out patient.nii.gz   # --list shows the series"},
      {"keygen", "mewm keygen keys/server   # writes keys/server.key (0600) and keys/server.pub"},
      {"train survival",
       "mewm train survival --cohort cohorts/train --out models/cox_survival.json"},
      {"train mechanistic",
       "mewm train mechanistic --cohort cohorts/train --out models/mechanistic_calibration.json"},
      {"train dynamics",
       "mewm train dynamics --cohort cohorts/train6 --out dyn.pt --state-dir dyn_state"},
      {"train drug-average",
       "mewm train drug-average --out drugs.pt drugs_seed1.pt drugs_seed2.pt drugs_seed3.pt"},
      {"train policy",
       "mewm train policy --cohort cohorts/train --out models/policy_vlm.pt --seed 1"},
      {"eval plans", "mewm eval plans out/demo --json-out out/demo/eval_plans.json"},
      {"eval policy",
       "mewm eval policy --cohort cohorts/test --checkpoint models/policy_vlm.pt --ablations"},
      {"eval survival",
       "mewm eval survival --model models/cox_survival.json --cohort cohorts/test "
       "--train-cohort cohorts/train"},
      {"eval dynamics",
       "mewm eval dynamics --cohort cohorts/test8 --model models/dynamics_diffusion.pt --json"},
      {"inspect", "mewm inspect out/demo/patients/P0001/post_chosen.vdb --json"},
      {"convert", "mewm convert ct.nii.gz ct.vdb --kind ct --patient-id P1"},
      {"render",
       "mewm render pre.vdb --plane axial --at tumor --overlay tumor --out pre_axial.png"},
      {"cohort generate", "mewm cohort generate --n 20 --seed 7 --out cohorts/c7"},
      {"cohort stats", "mewm cohort stats cohorts/c7"},
      {"bench core", "mewm bench core --repeats 5 --json-out bench_core.json"},
      {"bench world", "mewm bench world --patients 4 --json-out bench_world.json"},
      {"bench planner",
       "mewm bench planner scenarios/tace_cohort_eval/scenario.toml --patients 10"},
      {"bench stream", "mewm bench stream --json-out bench_stream.json"},
      {"turing export",
       "mewm turing export --cohort cohorts/heldout --dynamics-backend mechanistic --n 40 "
       "--out study --key secret/key.json"},
      {"turing audit", "mewm turing audit study --key secret/key.json"},
      {"turing serve", "mewm turing serve study --port 8017"},
      {"turing score", "mewm turing score study --key secret/key.json --plot accuracy.png"},
      {"turing simulate-readers", "mewm turing simulate-readers study --key secret/key.json"},
      {"bench dynamics", "mewm bench dynamics scenarios/tace_cohort_eval_diffusion/scenario.toml"},
  };
  return examples;
}

/// Adds the example of each (nested) command to its help; `path` is "eval dynamics" etc.
void AddExamples(CLI::App& app, const std::string& path) {
  for (CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) {
    const std::string name = path.empty() ? sub->get_name() : path + " " + sub->get_name();
    if (auto it = Examples().find(name); it != Examples().end()) {
      sub->footer("Example:\n  " + it->second);
    }
    AddExamples(*sub, name);
  }
}

/// Every command of the CLI: its name, its one-line help, and the action it runs when parsed.
std::map<CLI::App*, mewm::cli::Action> AddCommands(
    CLI::App& app, const mewm::scenarios::BackendRegistry& backends) {
  std::map<CLI::App*, mewm::cli::Action> actions;
  const auto add = [&](const char* name, const char* help, auto registrar) {
    CLI::App* sub = app.add_subcommand(name, help);
    if constexpr (std::is_invocable_v<decltype(registrar), CLI::App&,
                                      const mewm::scenarios::BackendRegistry&>) {
      actions[sub] = registrar(*sub, backends);
    } else {
      actions[sub] = registrar(*sub);
    }
  };
  add("run", "Plan every patient of a scenario; results on disk, progress on the terminal",
      mewm::cli::RegisterRun);
  add("merge", "Combine the results of sharded runs (mewm run --shard i/N)",
      mewm::cli::RegisterMerge);
  add("serve", "Serve scenario runs over ZeroMQ: a control socket and a live event stream",
      mewm::cli::RegisterServe);
  add("submit", "Submit a scenario to a server; prints the run id", mewm::cli::RegisterSubmit);
  add("watch", "Follow runs on a server (or mewm run --publish) live, history first",
      mewm::cli::RegisterWatch);
  add("status", "A server's health and runs, or one run's status", mewm::cli::RegisterStatus);
  add("cancel", "Cancel a queued or running run on a server", mewm::cli::RegisterCancel);
  add("keygen", "Make a CURVE key pair for an encrypted server or client",
      mewm::cli::RegisterKeygen);
  add("train", "Fit the survival model or the mechanistic calibration on a training cohort",
      mewm::cli::RegisterTrain);
  add("eval", "Evaluate plan selection of a run, or a survival model, against the truth",
      mewm::cli::RegisterEval);
  add("inspect", "Show geometry, grids, value ranges and metadata of a .vdb, NIfTI or checkpoint",
      mewm::cli::RegisterInspect);
  add("convert", "Convert between NIfTI (.nii, .nii.gz) and .vdb, keeping geometry and values",
      mewm::cli::RegisterConvert);
  add("import",
      "Import a DICOM CT series or a DICOM-SEG mask as .vdb or NIfTI (mewm import dicom DIR --out "
      "FILE; mewm import dicom-seg SEG --ct DIR --out FILE)",
      mewm::cli::RegisterImport);
  add("render", "Render one slice of a volume to PNG, optionally with a label overlay",
      mewm::cli::RegisterRender);
  add("cohort", "Generate a synthetic cohort, or print its world-validity figures",
      mewm::cli::RegisterCohort);
  add("bench", "Measure core operations and the synthetic world", mewm::cli::RegisterBench);
  add("turing", "Turing-test reader study: export blinded cases, audit, serve the page, score",
      mewm::cli::RegisterTuring);
  return actions;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"mewm: a medical world model for TACE treatment planning"};
  app.set_version_flag("--version", std::string("mewm ") + mewm::Version());
  app.require_subcommand(1);
  app.footer(
      "Exit status: 0 success; 1 error (the message names the file and the problem); 2 usage "
      "error; 3 some patients failed (run, watch, submit --wait); 4 run cancelled (watch, "
      "submit --wait); 70 internal error (a bug); 130/143 interrupted by SIGINT/SIGTERM.\n"
      "Example: mewm run scenarios/tace_demo/scenario.toml --out out/demo");
  std::string log_level = "warn";
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error or off")
      ->capture_default_str();
  bool verbose = false;
  app.add_flag("-v,--verbose", verbose,
               "Debug logging, with the full text of library errors (libtorch backtraces)");

  // The one backend registry: every command that parses a scenario, creates a model or prepares
  // a synthetic cohort gets it. The torch backends (diffusion, vlm) and the synthetic world plug
  // in here.
  const mewm::scenarios::BackendRegistry backends = [] {
    auto r = mewm::scenarios::BackendRegistry::Builtin(mewm::dynamics::DiffusionFactoryFunction(),
                                                       mewm::policy::VlmFactoryFunction());
    r.SetSyntheticCohorts(mewm::scenarios::SyntheticWorldCohorts());
    return r;
  }();
  const std::map<CLI::App*, mewm::cli::Action> actions = AddCommands(app, backends);

  AddExamples(app, "");
  // An unknown command word is named, with the list of commands, rather than CLI11's "The
  // following arguments were not expected" or "A subcommand is required".
  if (const std::string unknown = UnknownCommand(app, argc, argv); !unknown.empty()) {
    std::cerr << "mewm: error: " << unknown << "\n";
    return kExitUsage;
  }
  if (const std::string bad = NonUtf8Argument(argc, argv); !bad.empty()) {
    std::cerr << "mewm: error: " << bad << "\n";
    return kExitUsage;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version exit 0; every other parse error is a usage error (2), whatever
    // CLI11's own code for it.
    const int code = app.exit(e);
    return code == 0 ? 0 : kExitUsage;
  }
  if (verbose) log_level = "debug";
  if (auto configured = mewm::ConfigureLogging(log_level); !configured) {
    mewm::cli::Fail(configured.error());
    return kExitUsage;
  }
  openvdb::initialize();
  for (auto& [sub, action] : actions) {
    if (sub->parsed()) {
      try {
        return action();
      } catch (const std::exception& e) {
        // Library code returns errors as values; reaching here is a bug worth reporting loudly.
        std::cerr << "mewm: internal error: " << mewm::ExceptionCause(e)
                  << (verbose ? "" : " (run with --verbose for details)") << "\n";
        return kExitInternal;
      }
    }
  }
  return kExitUsage;
}

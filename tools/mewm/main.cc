// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// mewm: the one command-line tool. Thin: parses flags and calls library APIs.
#include <openvdb/openvdb.h>

#include <iostream>
#include <map>

#include "commands.h"
#include "mewm/core/log.h"
#include "mewm/core/version.h"
#include "mewm/dynamics/diffusion.h"

namespace mewm::cli {

int Fail(const Error& error) {
  std::cerr << "mewm: error: " << error.message << " [" << ErrorCodeName(error.code) << "]\n";
  return 1;
}

}  // namespace mewm::cli

int main(int argc, char** argv) {
  CLI::App app{"mewm: a medical world model for TACE treatment planning"};
  app.set_version_flag("--version", std::string("mewm ") + mewm::Version());
  app.require_subcommand(1);
  std::string log_level = "warn";
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error or off")
      ->capture_default_str();

  std::map<CLI::App*, mewm::cli::Action> actions;
  const auto add = [&](const char* name, const char* help, auto registrar) {
    CLI::App* sub = app.add_subcommand(name, help);
    actions[sub] = registrar(*sub);
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
  add("render", "Render one slice of a volume to PNG, optionally with a label overlay",
      mewm::cli::RegisterRender);
  add("cohort", "Generate a synthetic cohort, or print its world-validity figures",
      mewm::cli::RegisterCohort);
  add("bench", "Measure core operations and the synthetic world", mewm::cli::RegisterBench);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  if (auto configured = mewm::ConfigureLogging(log_level); !configured) {
    return mewm::cli::Fail(configured.error());
  }
  openvdb::initialize();
  mewm::dynamics::EnableDiffusionBackend();
  for (auto& [sub, action] : actions) {
    if (sub->parsed()) {
      try {
        return action();
      } catch (const std::exception& e) {
        // Library code returns errors as values; reaching here is a bug worth reporting loudly.
        std::cerr << "mewm: internal error: " << e.what() << "\n";
        return 2;
      }
    }
  }
  return 1;
}

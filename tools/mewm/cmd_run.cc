// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// `mewm run SCENARIO` (the embedded runner, with a terminal display) and `mewm merge`.
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <iostream>

#include "commands.h"
#include "mewm/core/text.h"
#include "mewm/run/runner.h"
#include "mewm/streaming/admission.h"
#include "mewm/streaming/server.h"
#include "progress.h"
#include "terminal_sink.h"

namespace mewm::cli {
namespace {

std::atomic<bool> g_stop{false};
std::atomic<int> g_signal{0};

extern "C" void OnSignal(int signal) {
  g_signal.store(signal);
  g_stop.store(true);
  std::signal(SIGINT, SIG_DFL);  // a second Ctrl-C kills at once
  std::signal(SIGTERM, SIG_DFL);
}

/// Writes every event as a JSON line on stdout.
class StdoutJsonSink final : public scenarios::EventSink {
 public:
  Status Emit(const scenarios::Event& event) override {
    std::cout << scenarios::EventToJson(event) << "\n" << std::flush;
    return {};
  }
};

}  // namespace

Action RegisterRun(CLI::App& app, const BackendRegistry& backends) {
  struct Options {
    std::string scenario, out, shard, search, publish, control;
    bool resume = false, force = false, quiet = false, json = false;
  };
  auto o = std::make_shared<Options>();
  app.add_option("SCENARIO", o->scenario, "Scenario file (TOML; see docs/SCENARIOS.md)")
      ->required();
  app.add_option("--out", o->out, "Results folder (default: the scenario's run.output)");
  app.add_flag("--resume", o->resume, "Keep patients finished by an earlier run in this folder");
  app.add_flag("--force", o->force,
               "Also write into a non-empty folder that is not a results folder of this "
               "scenario (files mewm did not write are never deleted)");
  app.add_option("--shard", o->shard, "Plan only patients i, i+N, i+2N, ... (i/N, 0-based)");
  app.add_option("--search", o->search, "Override planner.search")
      ->check(CLI::IsMember({"beam", "reference", "exhaustive"}));
  app.add_flag("--quiet", o->quiet, "No progress display");
  app.add_flag("--json", o->json, "Print every event as a JSON line on stdout");
  app.add_option("--publish", o->publish,
                 "Also publish every event on this ZeroMQ PUB endpoint (e.g. tcp://127.0.0.1:5556)"
                 " for `mewm watch`");
  app.add_option("--control", o->control,
                 "With --publish: answer status and snapshot requests here (e.g. "
                 "tcp://127.0.0.1:5555), so watchers that join late get the history");
  return [o, &backends]() -> int {
    if (o->control.empty() != o->publish.empty()) {
      // Watchers read the history over the control socket: the two go together.
      return Fail(Error{ErrorCode::kInvalidArgument, "--publish and --control go together"});
    }
    auto spec = scenarios::LoadScenario(o->scenario, &backends);
    if (!spec) return Fail(spec.error());
    if (!o->search.empty()) {
      spec->planner.search = o->search == "beam"        ? scenarios::SearchMode::kBeam
                             : o->search == "reference" ? scenarios::SearchMode::kReference
                                                        : scenarios::SearchMode::kExhaustive;
    }
    scenarios::RunOptions options;
    options.backends = &backends;
    options.output_dir = o->out;
    options.resume = o->resume;
    options.force = o->force;
    if (!o->shard.empty()) {
      // Digits only, at most 9 of them: sscanf's %d wrapped 4294967297 to 1 (0/4294967297 ran
      // as 0/1) and is undefined past INT_MAX.
      const auto number = [](const std::string& text, int* value) {
        if (text.empty() || text.size() > 9 ||
            text.find_first_not_of("0123456789") != std::string::npos) {
          return false;
        }
        *value = std::stoi(text);
        return true;
      };
      const std::size_t slash = o->shard.find('/');
      int i = -1, n = -1;
      if (slash == std::string::npos || !number(o->shard.substr(0, slash), &i) ||
          !number(o->shard.substr(slash + 1), &n)) {
        return Fail(Error{ErrorCode::kInvalidArgument,
                          "--shard must look like i/N with 0 <= i < N < 10^9 (e.g. 0/4), got '" +
                              EscapeControl(o->shard) + "'"});
      }
      options.shard_index = i;
      options.shard_count = n;
    }
    options.cancelled = [] { return g_stop.load(); };
    // `mewm run` has no admission limits (the operator's own machine), but a scenario that would
    // take days or fill a disk says so before it starts, with `mewm serve`'s estimate.
    const streaming::CostEstimate cost = streaming::EstimateCost(*spec);
    if (cost.seconds > 24 * 3600.0 || cost.disk_bytes > (std::uint64_t(100) << 30)) {
      std::fprintf(stderr,
                   "mewm: warning: this run is estimated at %.3g h and %.3g GB on a 2-core "
                   "machine (%d patients, %llu simulations each); Ctrl-C stops it\n",
                   cost.seconds / 3600.0, double(cost.disk_bytes) / 1e9, cost.patients,
                   static_cast<unsigned long long>(cost.simulations));
    }
    auto bar = std::make_shared<ProgressBar>("cohort", spec->cohort.n, o->quiet || o->json);
    options.cohort_progress = [bar](int done, int) { bar->Update(done); };
    TerminalSink terminal(o->quiet || o->json);
    StdoutJsonSink stdout_json;
    scenarios::FanoutSink sink;
    sink.Add(&terminal);
    if (o->json) sink.Add(&stdout_json);
    Expected<scenarios::RunSummary> summary = MakeError(ErrorCode::kInternal, "not run");
    if (o->publish.empty()) {
      auto runner = scenarios::Runner::Create(*spec, options);
      if (!runner) return Fail(runner.error());
      std::signal(SIGINT, OnSignal);
      std::signal(SIGTERM, OnSignal);
      summary = (*runner)->Run(sink);
    } else {
      // The same run inside a one-run server, so `mewm watch` works as with `mewm serve`.
      // Its folder is checked first: a refused run writes nothing, not even run_failed.
      if (auto checked = scenarios::CheckRunFolder(*spec, options); !checked) {
        return Fail(checked.error());
      }
      streaming::ServerOptions server_options;
      server_options.event_endpoint = o->publish;
      server_options.control_endpoint = o->control;
      server_options.exit_when_idle = true;
      server_options.recover_runs = false;  // this run only
      server_options.backends = &backends;
      auto server = streaming::Server::Create(server_options);
      if (!server) return Fail(server.error());
      if (auto queued = (*server)->SubmitLocal(*spec, options, &sink); !queued) {
        return Fail(queued.error());
      }
      std::signal(SIGINT, OnSignal);
      std::signal(SIGTERM, OnSignal);
      if (auto served = (*server)->Serve(); !served) return Fail(served.error());
      summary = (*server)->last_summary();
    }
    bar->Finish();
    if (!summary) return Fail(summary.error());
    if (!o->json) {
      std::cout << "results: " << summary->output_dir << " (" << summary->finished << " planned, "
                << summary->failed << " failed, " << summary->skipped << " skipped)\n";
    }
    // The shell convention: 128 + the signal (130 for Ctrl-C, 143 for SIGTERM).
    if (summary->cancelled) return 128 + (g_signal.load() != 0 ? g_signal.load() : SIGINT);
    return summary->failed > 0 ? 3 : 0;
  };
}

Action RegisterMerge(CLI::App& app) {
  struct Options {
    std::string out;
    std::vector<std::string> shards;
  };
  auto o = std::make_shared<Options>();
  app.add_option("--out", o->out, "Merged results folder")->required();
  app.add_option("SHARDS", o->shards, "Shard results folders (from mewm run --shard i/N)")
      ->required();
  return [o]() -> int {
    if (auto merged = scenarios::MergeResults(o->shards, o->out); !merged) {
      return Fail(merged.error());
    }
    std::cout << "merged " << o->shards.size() << " shards into " << o->out << "\n";
    return 0;
  };
}

}  // namespace mewm::cli

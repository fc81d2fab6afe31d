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
#include "mewm/scenarios/runner.h"
#include "progress.h"

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

std::string PlanText(const std::vector<std::string>& items) {
  return items.empty() ? "none" : Join(items, "+");
}

/// Shows a run on the terminal: an in-place status line on a TTY, plain lines otherwise.
class TerminalSink final : public scenarios::EventSink {
 public:
  explicit TerminalSink(bool quiet) : quiet_(quiet), tty_(::isatty(STDERR_FILENO) != 0) {}

  Status Emit(const scenarios::Event& event) override {
    if (quiet_) return {};
    std::visit([&](const auto& body) { Show(body); }, event.body);
    return {};
  }

 private:
  using Clock = std::chrono::steady_clock;

  void Show(const scenarios::RunStarted& e) {
    start_ = Clock::now();
    total_ = e.patients;
    std::fprintf(stderr, "run %s: %d patients to plan (%d skipped), results in %s\n",
                 e.scenario.c_str(), e.patients, e.skipped, e.output_dir.c_str());
  }
  void Show(const scenarios::PatientStarted& e) {
    index_ = e.index;
    patient_ = e.patient_id;
    candidates_ = 0;
    best_.clear();
    Redraw();
  }
  void Show(const scenarios::ProposalMade&) {}
  void Show(const scenarios::CandidateEvaluated&) {
    ++candidates_;
    Redraw();
  }
  void Show(const scenarios::BeamUpdated& e) {
    if (!e.beams.empty()) {
      char text[160];
      std::snprintf(text, sizeof(text), "%s %.3f", PlanText(e.beams.front().plan).c_str(),
                    e.beams.front().risk_mean);
      best_ = text;
    }
    Redraw();
  }
  void Show(const scenarios::PlanDecided& e) {
    ClearLine();
    std::fprintf(stderr, "%-8s %-48s risk %.3f +- %.3f  median OS %s\n", e.patient_id.c_str(),
                 PlanText(e.best.plan).c_str(), e.best.risk_mean, e.best.risk_std,
                 e.median_months < 0
                     ? "> follow-up"
                     : (std::to_string(int(e.median_months + 0.5)) + " mo").c_str());
  }
  void Show(const scenarios::PatientFinished&) { ++done_; }
  void Show(const scenarios::PatientFailed& e) {
    ++done_;
    ClearLine();
    std::fprintf(stderr, "%-8s FAILED: %s\n", e.patient_id.c_str(), e.error.c_str());
  }
  void Show(const scenarios::RunFinished& e) {
    ClearLine();
    std::fprintf(stderr, "finished %d patients, %d failed, in %.1f s\n", e.finished, e.failed,
                 e.seconds);
  }
  void Show(const scenarios::RunFailed& e) {
    ClearLine();
    std::fprintf(stderr, "run failed: %s\n", e.error.c_str());
  }
  void Show(const scenarios::RunCancelled& e) {
    ClearLine();
    std::fprintf(stderr, "cancelled; %d patients finished and kept\n", e.finished);
  }

  void Redraw() {
    if (!tty_) return;
    const double elapsed = std::chrono::duration<double>(Clock::now() - start_).count();
    char eta[32] = "?";
    if (done_ > 0) {
      std::snprintf(eta, sizeof(eta), "%.0fs", elapsed / done_ * (total_ - done_));
    }
    std::fprintf(stderr, "\r[%d/%d, eta %s] %s: %d candidates, best %s\x1b[K", done_, total_, eta,
                 patient_.c_str(), candidates_, best_.empty() ? "-" : best_.c_str());
    std::fflush(stderr);
  }
  void ClearLine() {
    if (tty_) std::fprintf(stderr, "\r\x1b[K");
  }

  bool quiet_, tty_;
  Clock::time_point start_ = Clock::now();
  int total_ = 0, done_ = 0, index_ = 0, candidates_ = 0;
  std::string patient_, best_;
};

/// Writes every event as a JSON line on stdout.
class StdoutJsonSink final : public scenarios::EventSink {
 public:
  Status Emit(const scenarios::Event& event) override {
    std::cout << scenarios::EventToJson(event) << "\n" << std::flush;
    return {};
  }
};

}  // namespace

Action RegisterRun(CLI::App& app) {
  struct Options {
    std::string scenario, out, shard, search;
    bool resume = false, quiet = false, json = false;
  };
  auto o = std::make_shared<Options>();
  app.add_option("SCENARIO", o->scenario, "Scenario file (TOML; see docs/SCENARIOS.md)")
      ->required();
  app.add_option("--out", o->out, "Results folder (default: the scenario's run.output)");
  app.add_flag("--resume", o->resume, "Keep patients finished by an earlier run in this folder");
  app.add_option("--shard", o->shard, "Plan only patients i, i+N, i+2N, ... (i/N, 0-based)");
  app.add_option("--search", o->search, "Override planner.search")
      ->check(CLI::IsMember({"beam", "reference", "exhaustive"}));
  app.add_flag("--quiet", o->quiet, "No progress display");
  app.add_flag("--json", o->json, "Print every event as a JSON line on stdout");
  return [o]() -> int {
    auto spec = scenarios::LoadScenario(o->scenario);
    if (!spec) return Fail(spec.error());
    if (!o->search.empty()) {
      spec->planner.search = o->search == "beam"        ? scenarios::SearchMode::kBeam
                             : o->search == "reference" ? scenarios::SearchMode::kReference
                                                        : scenarios::SearchMode::kExhaustive;
    }
    scenarios::RunOptions options;
    options.output_dir = o->out;
    options.resume = o->resume;
    if (!o->shard.empty()) {
      int i = -1, n = -1;
      char tail = 0;
      if (std::sscanf(o->shard.c_str(), "%d/%d%c", &i, &n, &tail) != 2) {
        return Fail(Error{ErrorCode::kInvalidArgument,
                          "--shard must look like i/N (e.g. 0/4), got '" + o->shard + "'"});
      }
      options.shard_index = i;
      options.shard_count = n;
    }
    options.cancelled = [] { return g_stop.load(); };
    auto bar = std::make_shared<ProgressBar>("cohort", spec->cohort.n, o->quiet || o->json);
    options.cohort_progress = [bar](int done, int) { bar->Update(done); };
    auto runner = scenarios::Runner::Create(*spec, options);
    if (!runner) return Fail(runner.error());
    std::signal(SIGINT, OnSignal);
    std::signal(SIGTERM, OnSignal);
    TerminalSink terminal(o->quiet || o->json);
    StdoutJsonSink stdout_json;
    scenarios::FanoutSink sink;
    sink.Add(&terminal);
    if (o->json) sink.Add(&stdout_json);
    auto summary = (*runner)->Run(sink);
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

// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "terminal_sink.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "mewm/core/text.h"

namespace mewm::cli {

std::string PlanText(const std::vector<std::string>& items) {
  return items.empty() ? "none" : EscapeControl(Join(items, "+"));
}

TerminalSink::TerminalSink(bool quiet) : quiet_(quiet), tty_(::isatty(STDERR_FILENO) != 0) {}

Status TerminalSink::Emit(const scenarios::Event& event) {
  if (quiet_) return {};
  std::visit([&](const auto& body) { Show(body); }, event.body);
  return {};
}

void TerminalSink::Show(const scenarios::RunAccepted& e) {
  std::fprintf(stderr, "run %s accepted (queue position %d), results in %s\n",
               EscapeControl(e.scenario).c_str(), e.queue_position,
               EscapeControl(e.output_dir).c_str());
}

void TerminalSink::Show(const scenarios::Progress& e) {
  if (!tty_) return;  // the embedded runner shows its own bar; a watcher's line is enough
  std::fprintf(stderr, "\r%s %d/%d\x1b[K", EscapeControl(e.stage).c_str(), e.done, e.total);
  std::fflush(stderr);
}

void TerminalSink::Show(const scenarios::RunStarted& e) {
  ClearLine();
  start_ = Clock::now();
  total_ = e.patients;
  std::fprintf(stderr, "run %s: %d patients to plan (%d skipped), results in %s\n",
               EscapeControl(e.scenario).c_str(), e.patients, e.skipped,
               EscapeControl(e.output_dir).c_str());
}

void TerminalSink::Show(const scenarios::PatientStarted& e) {
  index_ = e.index;
  patient_ = EscapeControl(e.patient_id);
  candidates_ = 0;
  step_ = 0;
  stage_ = "proposal";
  best_.clear();
  rationale_.clear();
  Redraw();
}

void TerminalSink::Show(const scenarios::ProposalMade& e) {
  rationale_ = EscapeControl(e.rationale);
}

void TerminalSink::Show(const scenarios::CandidateEvaluated& e) {
  ++candidates_;
  stage_ = EscapeControl(e.stage);
  step_ = e.step;
  Redraw();
}

void TerminalSink::Show(const scenarios::BeamUpdated& e) {
  if (!e.beams.empty()) {
    char text[160];
    std::snprintf(text, sizeof(text), "%s %.3f", PlanText(e.beams.front().plan).c_str(),
                  e.beams.front().risk_mean);
    best_ = text;
  }
  Redraw();
}

void TerminalSink::Show(const scenarios::PlanDecided& e) {
  ClearLine();
  // The median comes from a server too: printed with %g past any real survival (1e300 made
  // lround overflow), never converted to an integer.
  char median[32] = "> follow-up";
  if (!(e.median_months < 0)) {
    std::snprintf(median, sizeof(median), e.median_months < 1e4 ? "%.0f mo" : "%.3g mo",
                  e.median_months);
  }
  std::fprintf(stderr, "%-8s %-48s risk %.3f +- %.3f  median OS %s\n",
               EscapeControl(e.patient_id).c_str(), PlanText(e.best.plan).c_str(), e.best.risk_mean,
               e.best.risk_std, median);
  if (!rationale_.empty()) std::fprintf(stderr, "%-8s proposal: %s\n", "", rationale_.c_str());
}

void TerminalSink::Show(const scenarios::PatientFinished&) { ++done_; }

void TerminalSink::Show(const scenarios::PatientFailed& e) {
  ++done_;
  ClearLine();
  std::fprintf(stderr, "%-8s FAILED: %s\n", EscapeControl(e.patient_id).c_str(),
               EscapeControl(e.error).c_str());
}

void TerminalSink::Show(const scenarios::RunFinished& e) {
  ClearLine();
  std::fprintf(stderr, "finished %d patients, %d failed, in %.1f s\n", e.finished, e.failed,
               e.seconds);
}

void TerminalSink::Show(const scenarios::RunFailed& e) {
  ClearLine();
  std::fprintf(stderr, "run failed: %s\n", EscapeControl(e.error).c_str());
}

void TerminalSink::Show(const scenarios::RunCancelled& e) {
  ClearLine();
  std::fprintf(stderr, "cancelled; %d patients finished and kept\n", e.finished);
}

void TerminalSink::Redraw() {
  if (!tty_) return;
  const double elapsed = std::chrono::duration<double>(Clock::now() - start_).count();
  char eta[32] = "?";
  if (done_ > 0) std::snprintf(eta, sizeof(eta), "%.0fs", elapsed / done_ * (total_ - done_));
  constexpr int kWidth = 16;
  const int filled = total_ > 0 ? std::min(kWidth, done_ * kWidth / total_) : 0;
  const std::string bar = std::string(filled, '#') + std::string(kWidth - filled, '.');
  std::fprintf(stderr, "\r[%s] %d/%d, eta %s | %s %s %d: %d candidates, best %s\x1b[K", bar.c_str(),
               done_, total_, eta, patient_.c_str(), stage_.c_str(), step_, candidates_,
               best_.empty() ? "-" : best_.c_str());
  std::fflush(stderr);
}

void TerminalSink::ClearLine() {
  if (tty_) std::fprintf(stderr, "\r\x1b[K");
}

}  // namespace mewm::cli

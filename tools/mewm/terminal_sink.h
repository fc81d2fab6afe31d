// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The terminal display of a run's events, shared by `mewm run` and `mewm watch`: on a TTY an
// in-place line with a bar of patients done, the ETA, and the current patient's search stage and
// step, candidates and best plan so far; plain lines otherwise; one line per decided plan.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "mewm/run/events.h"

namespace mewm::cli {

/// "Lipiodol+Epirubicin", or "none" for an empty plan.
std::string PlanText(const std::vector<std::string>& items);

class TerminalSink final : public scenarios::EventSink {
 public:
  explicit TerminalSink(bool quiet);
  Status Emit(const scenarios::Event& event) override;

 private:
  using Clock = std::chrono::steady_clock;
  void Show(const scenarios::RunAccepted& e);
  void Show(const scenarios::Progress& e);
  void Show(const scenarios::RunStarted& e);
  void Show(const scenarios::PatientStarted& e);
  void Show(const scenarios::ProposalMade& e);
  void Show(const scenarios::CandidateEvaluated& e);
  void Show(const scenarios::BeamUpdated& e);
  void Show(const scenarios::PlanDecided& e);
  void Show(const scenarios::PatientFinished& e);
  void Show(const scenarios::PatientFailed& e);
  void Show(const scenarios::RunFinished& e);
  void Show(const scenarios::RunFailed& e);
  void Show(const scenarios::RunCancelled& e);
  void Redraw();
  void ClearLine();

  bool quiet_, tty_;
  Clock::time_point start_ = Clock::now();
  int total_ = 0, done_ = 0, index_ = 0, candidates_ = 0, step_ = 0;
  std::string patient_, best_, stage_;
  std::string rationale_;  ///< the current patient's proposal, shown under its decision
};

}  // namespace mewm::cli

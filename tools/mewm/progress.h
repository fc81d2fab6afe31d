// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// A terminal progress bar: redrawn in place with \r on a TTY, plain lines (every 10%) otherwise.
#pragma once

#include <chrono>
#include <string>

namespace mewm::cli {

class ProgressBar {
 public:
  ProgressBar(std::string label, int total, bool quiet = false);
  /// Reports `done` of `total` items finished.
  void Update(int done);
  /// Ends the bar's line.
  void Finish();

 private:
  std::string label_;
  int total_;
  bool quiet_;
  bool tty_;
  int last_decile_ = -1;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace mewm::cli

// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "progress.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "mewm/core/file_util.h"

namespace mewm::cli {
namespace {

std::string Duration(double seconds) {
  char buffer[32];
  const int s = int(std::lround(seconds));
  if (s >= 3600) {
    std::snprintf(buffer, sizeof(buffer), "%dh%02dm", s / 3600, (s / 60) % 60);
  } else {
    std::snprintf(buffer, sizeof(buffer), "%dm%02ds", s / 60, s % 60);
  }
  return buffer;
}

}  // namespace

ProgressBar::ProgressBar(std::string label, int total, bool quiet)
    : label_(std::move(label)),
      total_(total),
      quiet_(quiet),
      tty_(::isatty(STDERR_FILENO) != 0),
      start_(std::chrono::steady_clock::now()) {}

void ProgressBar::Update(int done) {
  if (quiet_ || total_ <= 0) return;
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double fraction = double(done) / double(total_);
  const std::string eta = done > 0 ? Duration(elapsed * (1.0 - fraction) / fraction) : "?";
  if (tty_) {
    constexpr int kWidth = 30;
    const int filled = int(fraction * kWidth);
    std::fprintf(stderr, "\r%s [%s%s] %d/%d  %3.0f%%  elapsed %s  eta %s\x1b[K", label_.c_str(),
                 std::string(std::size_t(filled), '#').c_str(),
                 std::string(std::size_t(kWidth - filled), '.').c_str(), done, total_,
                 100.0 * fraction, Duration(elapsed).c_str(), eta.c_str());
    std::fflush(stderr);
  } else {
    const int decile = int(fraction * 10.0);
    if (decile != last_decile_) {
      last_decile_ = decile;
      std::fprintf(stderr, "%s: %d/%d (%.0f%%), elapsed %s, eta %s\n", label_.c_str(), done, total_,
                   100.0 * fraction, Duration(elapsed).c_str(), eta.c_str());
    }
  }
}

void ProgressBar::Finish() {
  if (!quiet_ && tty_) std::fprintf(stderr, "\n");
}

std::pair<std::string, std::string> CohortProvenance(const std::string& dir) {
  std::string seed, data = dir;
  if (auto manifest = ReadFile(dir + "/manifest.json"); manifest) {
    try {
      const nlohmann::json m = nlohmann::json::parse(*manifest);
      // The seed is kept with the truth (truth/truth.json "generation"), which training reads.
      if (auto truth = ReadFile(dir + "/truth/truth.json"); truth) {
        try {
          seed = nlohmann::json::parse(*truth).at("generation").at("seed").get<std::string>();
        } catch (const std::exception&) {
          // No seed to record; the cohort reader reports a broken truth.
        }
      }
      const int plans = m.value("plans_per_patient", 0);
      data = "synthetic cohort " + dir + " (seed " + seed + ", " +
             std::to_string(m.at("n").get<int>()) + " patients, " +
             (plans > 0 ? std::to_string(plans) + " counterfactual plans each, " : "") +
             "world version " + m.at("world_version").get<std::string>() + ")";
    } catch (const std::exception&) {
      // Not a synthetic cohort manifest: the cohort reader reports the problem.
    }
  }
  return {seed, data};
}

std::function<void(int, int)> PatientProgress(const std::string& label, bool quiet) {
  auto bar = std::make_shared<std::unique_ptr<ProgressBar>>();
  return [bar, label, quiet](int done, int total) {
    if (!*bar) *bar = std::make_unique<ProgressBar>(label, total, quiet);
    (*bar)->Update(done);
    if (done == total) {
      (*bar)->Finish();
      bar->reset();
    }
  };
}

}  // namespace mewm::cli

// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Latency histograms per pipeline stage and the server's counters, rendered in the Prometheus
// text format (served on the HTTP port, mewm/streaming/http_server.h).
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "mewm/core/expected.h"
#include "mewm/streaming/protocol.h"

namespace mewm::streaming {

/// A lock-free latency histogram with fixed buckets from 10 us to 100 s.
class LatencyHistogram {
 public:
  static constexpr std::array<double, 15> kBounds = {1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2,
                                                     0.1,  0.3,  1.0,  3.0,  10.0, 30.0, 100.0};
  void Observe(double seconds);
  std::uint64_t count() const { return count_.load(std::memory_order_relaxed); }
  double sum() const { return double(sum_ns_.load(std::memory_order_relaxed)) * 1e-9; }
  /// Cumulative count of observations <= kBounds[i].
  std::uint64_t cumulative(std::size_t i) const;

 private:
  std::array<std::atomic<std::uint64_t>, kBounds.size()> buckets_{};
  std::atomic<std::uint64_t> count_{0};
  std::atomic<std::uint64_t> sum_ns_{0};
};

/// The stages a run's latency is reported for.
struct StageMetrics {
  static constexpr std::array<const char*, 4> kStages = {"policy", "dynamics", "survival",
                                                         "publish"};
  std::array<LatencyHistogram, kStages.size()> histograms;
  /// Observes `seconds` for a stage by name; unknown names are ignored.
  void Observe(const char* stage, double seconds);
  LatencyHistogram& publish() { return histograms[3]; }
  std::vector<StageStats> Stats() const;
};

/// One sample of a labelled metric.
struct Sample {
  std::vector<std::pair<std::string, std::string>> labels;
  double value = 0.0;
};
/// A metric family beyond the health snapshot's: name, type (counter or gauge), help, samples.
struct MetricFamily {
  std::string name, type, help;
  std::vector<Sample> samples;
};

/// Prometheus text exposition of a health snapshot, the stage histograms, and more families.
std::string RenderPrometheus(const Health& health, const StageMetrics& stages,
                             const std::vector<MetricFamily>& more = {});

/// The build's version and git hash (from CMake at configure time; "unknown" outside a git
/// checkout), for mewm_build_info.
const char* BuildVersion();
const char* BuildGitHash();

}  // namespace mewm::streaming

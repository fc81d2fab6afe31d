// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Latency histograms per pipeline stage and the server's counters, rendered in the Prometheus
// text format and served over HTTP (a small poll(2) endpoint, bounded in connections and time)
// when asked for.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
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

/// Prometheus text exposition of a health snapshot plus the stage histograms.
std::string RenderPrometheus(const Health& health, const StageMetrics& stages);

/// Serves GET /metrics on a background thread.
class MetricsServer {
 public:
  /// port 0 picks a free port. kIo when it cannot bind.
  static Expected<std::unique_ptr<MetricsServer>> Start(const std::string& address, int port,
                                                        std::function<std::string()> render);
  ~MetricsServer();
  int port() const;

 private:
  struct Impl;
  explicit MetricsServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace mewm::streaming

// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "metrics.h"

#include <httplib.h>

#include <cstring>
#include <sstream>
#include <thread>

namespace mewm::streaming {

void LatencyHistogram::Observe(double seconds) {
  for (std::size_t i = 0; i < kBounds.size(); ++i) {
    if (seconds <= kBounds[i]) {
      buckets_[i].fetch_add(1, std::memory_order_relaxed);
      break;
    }
  }
  count_.fetch_add(1, std::memory_order_relaxed);
  sum_ns_.fetch_add(std::uint64_t(seconds * 1e9), std::memory_order_relaxed);
}

std::uint64_t LatencyHistogram::cumulative(std::size_t i) const {
  std::uint64_t total = 0;
  for (std::size_t k = 0; k <= i; ++k) total += buckets_[k].load(std::memory_order_relaxed);
  return total;
}

void StageMetrics::Observe(const char* stage, double seconds) {
  for (std::size_t i = 0; i < kStages.size(); ++i) {
    if (std::strcmp(stage, kStages[i]) == 0) histograms[i].Observe(seconds);
  }
}

std::vector<StageStats> StageMetrics::Stats() const {
  std::vector<StageStats> out;
  for (std::size_t i = 0; i < kStages.size(); ++i) {
    out.push_back({kStages[i], histograms[i].count(), histograms[i].sum()});
  }
  return out;
}

std::string RenderPrometheus(const Health& health, const StageMetrics& stages) {
  std::ostringstream out;
  const auto metric = [&](const char* name, const char* type, const char* help, auto value) {
    out << "# HELP " << name << ' ' << help << "\n# TYPE " << name << ' ' << type << '\n'
        << name << ' ' << value << '\n';
  };
  metric("mewm_uptime_seconds", "gauge", "Seconds since the server started.",
         health.uptime_seconds);
  metric("mewm_queue_depth", "gauge", "Runs waiting in the queue.", health.queue_depth);
  metric("mewm_queue_capacity", "gauge", "Capacity of the run queue.", health.queue_capacity);
  metric("mewm_active_runs", "gauge", "Runs executing now.", health.active_run.empty() ? 0 : 1);
  metric("mewm_events_published_total", "counter", "Events sent on the PUB socket.",
         health.events_published);
  metric("mewm_events_dropped_total", "counter",
         "Events not sent because a subscriber was at its high-water mark.", health.events_dropped);
  metric("mewm_bad_requests_total", "counter",
         "Malformed, oversized or wrong-version control requests.", health.bad_requests);
  metric("mewm_rejected_submits_total", "counter", "Submissions rejected (queue full, invalid).",
         health.rejected_submits);
  metric("mewm_auth_failures_total", "counter", "CURVE clients refused by the allowlist.",
         health.auth_failures);
  out << "# HELP mewm_stage_seconds Latency of one call of each pipeline stage.\n"
      << "# TYPE mewm_stage_seconds histogram\n";
  for (std::size_t s = 0; s < StageMetrics::kStages.size(); ++s) {
    const LatencyHistogram& h = stages.histograms[s];
    const std::string label = std::string("stage=\"") + StageMetrics::kStages[s] + "\"";
    for (std::size_t i = 0; i < LatencyHistogram::kBounds.size(); ++i) {
      out << "mewm_stage_seconds_bucket{" << label << ",le=\"" << LatencyHistogram::kBounds[i]
          << "\"} " << h.cumulative(i) << '\n';
    }
    out << "mewm_stage_seconds_bucket{" << label << ",le=\"+Inf\"} " << h.count() << '\n'
        << "mewm_stage_seconds_sum{" << label << "} " << h.sum() << '\n'
        << "mewm_stage_seconds_count{" << label << "} " << h.count() << '\n';
  }
  return out.str();
}

struct MetricsServer::Impl {
  httplib::Server http;
  std::thread thread;
  int port = -1;
};

MetricsServer::MetricsServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

MetricsServer::~MetricsServer() {
  impl_->http.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

int MetricsServer::port() const { return impl_->port; }

Expected<std::unique_ptr<MetricsServer>> MetricsServer::Start(const std::string& address, int port,
                                                              std::function<std::string()> render) {
  auto impl = std::make_unique<Impl>();
  impl->http.Get("/metrics", [render](const httplib::Request&, httplib::Response& response) {
    response.set_content(render(), "text/plain; version=0.0.4");
  });
  impl->port = port == 0 ? impl->http.bind_to_any_port(address)
                         : (impl->http.bind_to_port(address, port) ? port : -1);
  if (impl->port < 0) {
    return MakeError(ErrorCode::kIo, "cannot serve metrics on " + address + ":" +
                                         std::to_string(port) + " (port in use?)");
  }
  Impl* raw = impl.get();
  impl->thread = std::thread([raw] { raw->http.listen_after_bind(); });
  return std::unique_ptr<MetricsServer>(new MetricsServer(std::move(impl)));
}

}  // namespace mewm::streaming

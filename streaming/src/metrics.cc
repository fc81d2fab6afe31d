// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "metrics.h"

#include <charconv>
#include <cmath>
#include <cstring>
#include <sstream>

#include "mewm/core/version.h"

namespace mewm::streaming {
namespace {

/// A sample value in the Prometheus text format, exactly: the shortest decimal that reads back as
/// the same double (std::to_chars), NaN and +Inf/-Inf as the format spells them.
std::string Number(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  char text[64];
  const auto result = std::to_chars(text, text + sizeof(text), value);
  return std::string(text, result.ptr);
}
std::string Number(std::uint64_t value) { return std::to_string(value); }
std::string Number(int value) { return std::to_string(value); }

}  // namespace

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

/// A label value with \\, " and newline escaped as the text format asks.
static std::string LabelValue(const std::string& value) {
  std::string out;
  for (char c : value) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

std::string RenderPrometheus(const Health& health, const StageMetrics& stages,
                             const std::vector<MetricFamily>& more) {
  std::ostringstream out;
  const auto metric = [&](const char* name, const char* type, const char* help, auto value) {
    out << "# HELP " << name << ' ' << help << "\n# TYPE " << name << ' ' << type << '\n'
        << name << ' ' << Number(value) << '\n';
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
      out << "mewm_stage_seconds_bucket{" << label << ",le=\""
          << Number(LatencyHistogram::kBounds[i]) << "\"} " << h.cumulative(i) << '\n';
    }
    out << "mewm_stage_seconds_bucket{" << label << ",le=\"+Inf\"} " << h.count() << '\n'
        << "mewm_stage_seconds_sum{" << label << "} " << Number(h.sum()) << '\n'
        << "mewm_stage_seconds_count{" << label << "} " << h.count() << '\n';
  }
  for (const MetricFamily& family : more) {
    out << "# HELP " << family.name << ' ' << family.help << "\n# TYPE " << family.name << ' '
        << family.type << '\n';
    for (const Sample& sample : family.samples) {
      out << family.name;
      for (std::size_t i = 0; i < sample.labels.size(); ++i) {
        out << (i == 0 ? "{" : ",") << sample.labels[i].first << "=\""
            << LabelValue(sample.labels[i].second) << '"';
      }
      out << (sample.labels.empty() ? " " : "} ") << Number(sample.value) << '\n';
    }
  }
  return out.str();
}

const char* BuildVersion() { return Version(); }
const char* BuildGitHash() { return MEWM_BUILD_GIT_HASH; }

}  // namespace mewm::streaming

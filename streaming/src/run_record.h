// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The server's record of one run. What was submitted is fixed when the record is made (const
// members); flags any thread may set are atomics; what changes as the run goes (its status and
// the index of its events.jsonl) is a RunProgress behind the run's own lock, reachable only
// through `progress.Lock()` or `progress.With(...)`.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "mewm/core/expected.h"
#include "mewm/core/mutex_guarded.h"
#include "mewm/run/events.h"
#include "mewm/run/runner.h"
#include "mewm/run/scenario.h"
#include "mewm/streaming/protocol.h"

namespace mewm::streaming {

/// The steady clock in nanoseconds (heartbeats and publish times compare these).
inline std::int64_t SteadyNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

/// Where each published event's line starts in a run's events.jsonl: the run's history at 8 bytes
/// per event in memory. Snapshots and event streams read pages of the file by these offsets.
struct LogIndex {
  std::uint64_t first_seq = 1;         ///< seq of the line at offsets[0]
  std::vector<std::uint64_t> offsets;  ///< start of each line
  std::uint64_t size = 0;              ///< end of the last published line
  bool indexed = false;  ///< the lines already in the file (a resumed run's) are indexed
  std::uint64_t last_seq() const { return first_seq + offsets.size() - 1; }
};

/// What changes while a run runs (RunRecord::progress).
struct RunProgress {
  RunState state = RunState::kQueued;
  int total = 0, done = 0, failed = 0;
  std::string error;
  LogIndex log;
  Status log_error;  ///< the first failure to write the log (RunRecord::log_failed is then set)

  /// Updates the status for a published (or recovered) event.
  void Apply(const scenarios::Event& event);
};

/// What a run is, fixed before its record is shared.
struct RunSetup {
  std::string id, trace_id;
  std::string out;  ///< the run's folder; its log is <out>/events.jsonl
  scenarios::ScenarioSpec spec;
  scenarios::RunOptions options;
  scenarios::EventSink* extra = nullptr;  ///< SubmitLocal's display sink, or nullptr
};

/// One run the server knows: submitted, recovered from disk, or local.
struct RunRecord {
  explicit RunRecord(RunSetup setup, RunProgress initial = {});
  RunRecord(const RunRecord&) = delete;
  RunRecord& operator=(const RunRecord&) = delete;

  const std::string id, trace_id, out;
  const scenarios::ScenarioSpec spec;
  const scenarios::RunOptions options;
  scenarios::EventSink* const extra;

  std::atomic<bool> cancel{false};             ///< the runner stops between simulation batches
  std::atomic<std::int64_t> last_event_ns{0};  ///< SteadyNs() of the last published event
  /// The last seq sent on the PUB socket (after its line is in the log): what heartbeats
  /// announce, so a watcher never sees a seq named before the event itself could reach it.
  std::atomic<std::uint64_t> published_seq{0};
  std::atomic<std::uint64_t> queued_seq{0};  ///< last seq handed to the event log
  std::atomic<bool> log_failed{false};       ///< then progress's log_error says why (sticky)

  MutexGuarded<RunProgress> progress;

  std::string log_path() const;
  RunStatus GetStatus() const;
};

/// <out>/events.jsonl
std::string EventLogPath(const std::string& out);

/// Indexes an existing events.jsonl into `index`: the start offsets of its complete lines and
/// its first seq (nothing when the file does not exist). With `each`, every line is parsed and
/// handed over too (recovery), in the same read. kIo or the parse error of a bad line.
Status IndexLog(const std::string& path, LogIndex& index,
                const std::function<void(const scenarios::Event&)>& each = {});

}  // namespace mewm::streaming

// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The durable event log: every run's events.jsonl, written by one thread (mewm-log) that owns
// the open files. A run's thread prepares each event (its JSON line, its envelope, its volume
// frame) and queues it (Enqueue); the log thread appends everything waiting for a run in one
// write (group commit), indexes the new lines (the run's LogIndex, under the run's lock) and only
// then publishes those events, in order. So every published event is on disk, a burst of events
// costs one write, and the run never waits on the PUB socket.
//
// The history is read back from the file by the index: snapshot pages (ReadHistory) and
// Server-Sent Event streams (OpenEventStream).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "event_publisher.h"
#include "metrics.h"
#include "mewm/core/batch_queue.h"
#include "mewm/streaming/http_server.h"
#include "run_record.h"

namespace mewm::streaming {

class EventLog {
 public:
  /// `written` is called by the log thread after each batch is written and published (the HTTP
  /// port's event streams read the new lines); it may be empty.
  EventLog(EventPublisher& publisher, StageMetrics& stages, bool publish_volumes,
           std::function<void()> written);
  ~EventLog();
  EventLog(const EventLog&) = delete;
  EventLog& operator=(const EventLog&) = delete;

  /// Starts the log thread.
  void Start();
  /// Writes and publishes what is queued, then ends the thread (idempotent).
  void Stop();

  /// Queues a run's event for the log and the PUB socket, waiting while the queue is full (a disk
  /// slower than the run holds the run back). Returns the run's first log error, if any, and
  /// kInternal for an event of another run.
  Status Enqueue(const std::shared_ptr<RunRecord>& run, const scenarios::Event& event);
  /// An event the server itself makes for a run (accepted, cancelled while queued, failed):
  /// the run's next seq, logged and published before this returns.
  Status Append(const std::shared_ptr<RunRecord>& run, scenarios::EventBody body);
  /// Waits until everything queued so far is written and published.
  void Flush();
  /// Closes the run's file once what is queued for it is written (nothing more will come; a
  /// terminal event closes it already).
  void Close(const std::shared_ptr<RunRecord>& run);

 private:
  /// An event on its way to the log and the PUB socket, or a request to close a run's file.
  struct Item {
    std::shared_ptr<RunRecord> run;
    /// The event, kept only when it changes the run's status (not the frequent candidate and
    /// beam events): applied once the event is published.
    std::optional<scenarios::Event> status_event;
    bool terminal = false;
    bool close = false;  ///< no event: close the run's file
    std::uint64_t seq = 0;
    std::string line;     ///< its events.jsonl line (no newline)
    std::string encoded;  ///< its envelope
    std::string topic;
    std::string volume;  ///< the .vdb frame, or empty
    std::chrono::steady_clock::time_point made;
  };
  class Files;  // the open events.jsonl files: the log thread's own (a local of Loop)

  void Loop();
  void WriteThenPublish(Files& files, std::deque<Item>& batch, std::size_t begin, std::size_t end);

  EventPublisher& publisher_;
  StageMetrics& stages_;
  const bool publish_volumes_;
  const std::function<void()> written_;
  static constexpr std::size_t kMaxQueuedEvents = 8192;
  BatchQueue<Item> queue_{kMaxQueuedEvents};
  std::thread thread_;
};

/// A page of a run's history: whole events.jsonl lines, each ending in '\n'.
struct HistoryPage {
  std::uint64_t first_seq = 0;  ///< seq of the page's first line
  std::uint64_t lines = 0;
  std::string text;
  bool more = false;   ///< lines after the page are in the log now
  bool ended = false;  ///< the run has ended and nothing follows the page
};
/// The run's published events after seq `after`: at least one line when there is one, then as
/// many as fit `max_lines` and `max_bytes`. kIo when the file is shorter than its index.
Expected<HistoryPage> ReadHistory(const RunRecord& run, std::uint64_t after,
                                  std::uint64_t max_lines, std::uint64_t max_bytes);

/// The run's events as Server-Sent Events from its log (`id: <seq>`, `data: <the line>`), from
/// the event after `after` until the run's terminal event.
std::unique_ptr<StreamSource> OpenEventStream(std::shared_ptr<RunRecord> run, std::uint64_t after);

}  // namespace mewm::streaming

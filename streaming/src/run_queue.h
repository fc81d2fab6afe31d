// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The runs the server knows and the bounded queue they wait in, run one at a time by the worker
// thread (mewm-run) through a RunFunction. Admission (accepting, capacity, a client's repeated
// request), cancel, recovery of earlier runs from their logs, and the views the control handler,
// heartbeats, health and the HTTP port read. All of it is one RunTable behind one lock
// (`table_.Lock()`), with a condition variable on that lock for the worker.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "event_log.h"
#include "metrics.h"
#include "mewm/core/mutex_guarded.h"
#include "mewm/streaming/server.h"
#include "run_record.h"

namespace mewm::streaming {

/// What health and readiness report about the queue, read under one lock.
struct QueueView {
  bool accepting = true;
  int depth = 0, capacity = 0;
  std::string active_run;  ///< "" when nothing runs
  std::vector<std::string> models_loaded;
};

/// What Cancel did.
struct CancelOutcome {
  enum class Kind {
    kUnknownRun,
    kDequeued,      ///< it was waiting: removed, and its run_cancelled is logged
    kFlagged,       ///< it runs: it stops between simulation batches
    kAlreadyEnded,  ///< nothing to cancel
    kLogFailed,     ///< dequeued, but run_cancelled could not be logged (`error`)
  };
  Kind kind = Kind::kUnknownRun;
  RunStatus status;
  std::string error;
};

/// How many folders below the results root a submitted run.output may go: Recover looks for runs'
/// logs (<run.output>/<run id>/events.jsonl) no deeper, and a run it cannot find after a restart
/// would never be listed, nor ended if it was cut off.
constexpr int kMaxRunOutputDepth = 6;

class RunQueue {
 public:
  RunQueue(EventLog& log, StageMetrics& stages, RunFunction run, int capacity);
  ~RunQueue();
  RunQueue(const RunQueue&) = delete;
  RunQueue& operator=(const RunQueue&) = delete;

  /// Lists the runs an earlier server process left under `results_root`, from their logs, so
  /// their status and history stay available. A run whose log has no terminal event was cut off
  /// by that process's end: it gets run_failed (the event log must be running).
  void Recover(const std::string& results_root);
  /// Starts the worker thread.
  void Start();

  // --- admission (submits; the control handler checks the scenario in between) ---
  /// kCancelled when shutting down; else the run an earlier submit with this client request id
  /// made (its queue position, 0 once it left the queue), or nullopt.
  Expected<std::optional<Submitted>> Admit(const std::string& client_request_id) const;
  /// A new run id made from `name` and the queue position it would get; the error message when
  /// the queue is full.
  Expected<std::pair<std::string, int>> ReserveId(const std::string& name);
  /// Queues a run whose run_accepted is logged.
  void Push(std::shared_ptr<RunRecord> run, const std::string& client_request_id);
  /// Queues a local run (SubmitLocal): kCancelled when shutting down, kInvalidArgument when its
  /// id is known.
  Expected<std::string> PushLocal(std::shared_ptr<RunRecord> run);

  CancelOutcome Cancel(const std::string& id);

  // --- views ---
  std::shared_ptr<RunRecord> Find(const std::string& id) const;
  /// Every known run's status, in the order they became known.
  std::vector<RunStatus> Statuses() const;
  QueueView View() const;
  /// Nothing queued and nothing running.
  bool Idle() const;
  /// The active run, the queue depth and up to 16 runs with an event in the last minute.
  Heartbeat MakeHeartbeat() const;
  /// The last finished run's summary; kNotFound before one finished.
  Expected<scenarios::RunSummary> last_summary() const;

  // --- shutdown ---
  /// Stops accepting and lets the worker end once the queue is empty: queued runs are removed
  /// and cancelled (logged), the active one flagged unless `finish_active`. Returns how many runs
  /// were cancelled.
  int Close(bool finish_active);
  /// Waits for the worker to end (after Close).
  void Join();
  /// Flags every queued and active run cancelled and waits for the worker (idempotent).
  void Stop();

 private:
  struct RunTable {
    std::map<std::string, std::shared_ptr<RunRecord>> runs;
    std::vector<std::shared_ptr<RunRecord>> run_order;
    std::deque<std::shared_ptr<RunRecord>> queue;
    std::shared_ptr<RunRecord> active;
    std::map<std::string, std::string> by_client_request;
    std::vector<std::string> models_loaded;
    bool accepting = true, worker_stop = false;
    std::optional<Expected<scenarios::RunSummary>> last_summary;
    std::mt19937_64 id_rng{std::random_device{}()};
  };

  void WorkerLoop();
  void Execute(const std::shared_ptr<RunRecord>& run);

  EventLog& log_;
  StageMetrics& stages_;
  const RunFunction run_fn_;
  const int capacity_;
  MutexGuarded<RunTable> table_;
  std::condition_variable table_changed_;  ///< the queue or worker_stop changed, or a run ended
  std::thread worker_;
};

}  // namespace mewm::streaming

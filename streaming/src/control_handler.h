// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The control requests (docs/PROTOCOL.md): submit, cancel, status, snapshot, list and health,
// each decoded request answered with one reply. Submits pass path confinement (every input under
// the scenario base, every output under the results root, cohorts only in <root>/cohorts/),
// admission limits and the queue's admission; snapshots are pages of the event log. Answers are
// counted by kind and reply code (mewm_requests_total).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <zmq.hpp>

#include "event_log.h"
#include "mewm/core/mutex_guarded.h"
#include "mewm/streaming/server.h"
#include "run_queue.h"

namespace mewm::streaming {

class ControlHandler {
 public:
  /// `health` makes the health reply (the server composes it from all its parts).
  ControlHandler(const ServerOptions& options, RunQueue& runs, EventLog& log,
                 std::function<Health()> health);

  /// Answers one encoded request (any bytes: undecodable ones get an error reply) and counts it.
  Reply Handle(std::string_view bytes);
  /// Answers every request waiting on the control ROUTER socket, without blocking.
  void ServeSocket(zmq::socket_t& socket);

  using RequestCounts = std::map<std::pair<std::string, std::string>, std::uint64_t>;
  /// Requests answered, by kind and reply code ("ok" or the error's name).
  RequestCounts request_counts() const { return *counts_.Lock(); }
  std::uint64_t bad_requests() const { return bad_requests_.load(std::memory_order_relaxed); }
  std::uint64_t rejected_submits() const { return rejected_.load(std::memory_order_relaxed); }

 private:
  Reply Dispatch(std::string_view bytes, const char** kind);
  Reply HandleSubmit(const Request& request, const SubmitRequest& submit);
  Reply HandleCancel(const Request& request, const std::string& id);
  Reply HandleSnapshot(const Request& request, const SnapshotRequest& snapshot);

  const ServerOptions& options_;
  RunQueue& runs_;
  EventLog& log_;
  const std::function<Health()> health_;
  MutexGuarded<RequestCounts> counts_;
  std::atomic<std::uint64_t> bad_requests_{0}, rejected_{0};
};

}  // namespace mewm::streaming

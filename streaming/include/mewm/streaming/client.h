// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The client library behind `mewm submit/watch/status/cancel`.
//
// Requests go over a DEALER socket with a timeout; a request that times out closes and reopens
// the socket (the Lazy Pirate pattern), so a lost reply cannot wedge the next one.
//
// Watch() follows runs with the Clone pattern: it subscribes first, then asks for a snapshot of
// the history, and drops live events it already has (seq <= last delivered). A jump in seq is a
// gap: Watch() fetches the missing events from the server's history and goes on; when the server
// cannot supply them, Watch() fails with an error that names the run and the missing range.
// Any traffic (events, heartbeats) counts as a sign of life; after `liveness_ms` of silence the
// subscription is reopened and the history re-read from the last delivered event.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "mewm/core/expected.h"
#include "mewm/streaming/protocol.h"

namespace mewm::streaming {

struct ClientOptions {
  std::string control_endpoint = "tcp://127.0.0.1:5555";
  std::string event_endpoint = "tcp://127.0.0.1:5556";
  int request_timeout_ms = 5000;
  int liveness_ms = 5000;  ///< silence after which Watch() reconnects
  int receive_hwm = 100000;
  /// CURVE: the server's public key, and this client's key pair (z85). Empty = plain TCP.
  std::string server_public_key;
  std::string public_key, secret_key;
};

struct WatchOptions {
  /// One run ("" = every run: runs queued or running when Watch starts, and any that follow).
  std::string run_id;
  /// With a run id: return after its run_finished / run_failed / run_cancelled.
  bool until_end = true;
  /// Polled about every 50 ms; true stops Watch() with success.
  std::function<bool()> stop;
};

struct WatchStats {
  std::uint64_t delivered = 0;     ///< events handed to the callback
  std::uint64_t from_history = 0;  ///< of those, taken from snapshots
  std::uint64_t duplicates = 0;    ///< live events dropped because the history had them
  std::uint64_t gaps = 0;          ///< seq jumps seen (and healed) on the live stream
  std::uint64_t reconnects = 0;    ///< subscriptions reopened after `liveness_ms` of silence
  std::uint64_t heartbeats = 0;
  std::uint64_t unknown = 0;  ///< events of a kind newer than this build, skipped
};

class Client {
 public:
  static Expected<std::unique_ptr<Client>> Connect(const ClientOptions& options);
  ~Client();

  /// Sends one request and waits for its reply (kIo on timeout). Error replies come back as
  /// replies; the typed calls below turn them into errors.
  Expected<Reply> Call(const Request& request);
  /// Sends raw bytes as a request (tests of malformed input); the reply as received.
  Expected<Reply> CallRaw(const std::string& bytes);

  Expected<Submitted> Submit(const SubmitRequest& submit);
  Expected<RunStatus> Cancel(const std::string& run_id);
  Expected<RunStatus> GetStatus(const std::string& run_id);
  Expected<std::vector<RunStatus>> ListRuns();
  Expected<Health> GetHealth();
  Expected<SnapshotReply> Snapshot(const std::string& run_id, std::uint64_t after_seq,
                                   std::uint32_t max_events = 0);

  /// Delivers a run's events in seq order, each exactly once, history first. `on_event` returns
  /// false to stop. `on_server` sees heartbeats and `server closing`. Following one run, a server
  /// closing before the run ended is kCancelled; following every run, it ends Watch() normally,
  /// and a server that is not up yet is waited for. A volume frame whose size or
  /// SHA-256 does not match its envelope is an error (kCorruptData).
  Status Watch(const WatchOptions& options,
               const std::function<bool(const RunEvent&, const std::string& volume)>& on_event,
               const std::function<void(const ServerEvent&)>& on_server = {});
  /// The counts of the running or last Watch(), copied under their lock: safe to call from
  /// another thread while Watch() runs.
  WatchStats stats() const;

 private:
  struct Impl;
  explicit Client(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

/// "queue_full: the run queue is full ..." as an Error (kInvalidArgument for a bad scenario or
/// path, kNotFound for an unknown run, kUnsupported otherwise...).
Error ToError(const ErrorReply& reply);

}  // namespace mewm::streaming

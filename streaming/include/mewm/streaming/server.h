// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The streaming server behind `mewm serve` (docs/DESIGN.md "Streaming", docs/PROTOCOL.md):
//
//   control ROUTER   submit / cancel / status / snapshot / list / health  (Request -> Reply)
//   event PUB        [topic, Envelope, (.vdb frame)]  topics run/<id>/<type> and server/<type>
//
// Submitted scenarios wait in a bounded queue and run one at a time through a RunFunction (the
// real scenarios::Runner by default). A log thread appends every event to the run's events.jsonl
// (a burst in one write) before it publishes it; the log is the history, read page by page from
// disk when a client that joins late asks for a snapshot (the zguide Clone pattern). Memory per
// event is one 8-byte offset. A subscriber at its high-water mark never blocks a
// run or the other subscribers: it misses the event, the server counts the drop, and the client
// heals the gap from a snapshot.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "mewm/core/expected.h"
#include "mewm/run/runner.h"
#include "mewm/streaming/protocol.h"

namespace mewm::streaming {

struct ServerOptions {
  /// "" = no control socket (the embedded `mewm run --publish` without --control).
  std::string control_endpoint = "tcp://127.0.0.1:5555";
  std::string event_endpoint = "tcp://127.0.0.1:5556";
  /// Every submitted run writes under this folder; scenario paths cannot leave it. Synthetic
  /// cohorts live in <results_root>/cohorts/ (scenarios::SyntheticCohortDir), runs elsewhere.
  std::string results_root = "results/server";
  /// Relative model, manifest and action-base paths in submitted scenarios resolve here, and
  /// every input path must stay inside it (checked before the file is looked at).
  std::string scenario_base = ".";
  int queue_capacity = 8;    ///< queued runs, not counting the one running
  int send_hwm = 10000;      ///< PUB high-water mark per subscriber (messages; 0 = none)
  int heartbeat_ms = 1000;   ///< a heartbeat after this long without any event
  int snapshot_page = 2000;  ///< events per snapshot reply, at most
  int linger_ms = 1000;      ///< how long closing sockets may flush
  /// Requests above this size get a `too_large` error reply.
  std::size_t max_request_bytes = 1u << 20;
  /// ZMQ_MAXMSGSIZE: a peer sending more than this is disconnected (no reply is possible).
  std::size_t hard_max_message_bytes = 64u << 20;
  /// On shutdown: false cancels the active run, true lets it finish. Queued runs are cancelled.
  bool finish_on_shutdown = false;
  /// Send the chosen plan's .vdb as a frame with plan_decided.
  bool publish_volumes = true;
  /// CURVE: the server's secret key (z85, 40 characters, in a file written by `mewm keygen`) and
  /// the allowlist of client public keys (one z85 key per line, # comments). Both or neither.
  std::string curve_secret_file;
  std::string curve_allowlist_file;
  /// The HTTP port (docs/PROTOCOL.md "HTTP"): Prometheus /metrics, /v2/health/live|ready, run
  /// status (/v1/runs) and Server-Sent Event streams (/v1/runs/<id>/events). -1 = off, 0 = any
  /// free port, else the port (on metrics_address, 127.0.0.1 by default).
  int metrics_port = -1;
  std::string metrics_address = "127.0.0.1";
  /// A file holding the bearer token every HTTP request must carry (Authorization: Bearer ...);
  /// "" = none (then a non-loopback metrics_address logs a warning).
  std::string http_token_file;
  /// CORS on the HTTP port's /v1/ and /v2/ (docs/PROTOCOL.md "HTTP"): the origins whose browser
  /// pages may read them ("https://host[:port]" each, or "*"); empty = no CORS headers.
  std::vector<std::string> http_cors_origins;
  /// The `openai` policy in submitted scenarios: the endpoints they may name (exactly, as
  /// written), and the environment variables they may take a key from ("" always allowed: no
  /// key). Empty endpoints: the backend is refused. Otherwise any peer could have the server send
  /// any of its environment variables, as a bearer token, to any URL.
  std::vector<std::string> policy_endpoints, policy_key_envs;
  int max_event_streams = 32;  ///< open SSE streams; more get 503
  /// Open SSE streams from one client address; more from it get 429 (HttpLimits).
  int max_event_streams_per_peer = 8;
  int stream_stall_ms = 30000;      ///< an SSE client that takes nothing this long is dropped
  int stream_keepalive_ms = 15000;  ///< an SSE comment after this long without an event
  /// Serve() returns once the queue is empty and nothing runs (the embedded runner's mode).
  bool exit_when_idle = false;
  /// List the runs found under results_root (their events.jsonl) as known runs, with status and
  /// history; one an earlier process left unfinished is ended with run_failed.
  bool recover_runs = true;
  /// Submits whose estimated cost is over a limit are refused with `over_limit` (health reports
  /// them). SubmitLocal is not limited.
  AdmissionLimits limits;
  /// The backends submitted scenarios may name, and that create their models; nullptr:
  /// scenarios::BackendRegistry::Builtin() (it parses every shipped backend, but has no diffusion
  /// model). The registry must outlive the server.
  const scenarios::BackendRegistry* backends = nullptr;
};

/// Runs one scenario, emitting every event to `sink`. The server keeps events.jsonl itself
/// (`options.write_event_log` is false): it appends each event there before publishing it. The
/// function must continue the sequence of an existing events.jsonl when `options.resume` is set
/// and poll `options.cancelled` between simulation batches. The default is scenarios::Runner.
using RunFunction = std::function<Expected<scenarios::RunSummary>(
    const scenarios::ScenarioSpec&, const scenarios::RunOptions&, scenarios::EventSink&)>;
Expected<scenarios::RunSummary> RunWithRunner(const scenarios::ScenarioSpec& spec,
                                              const scenarios::RunOptions& options,
                                              scenarios::EventSink& sink);

class Server {
 public:
  /// Binds the sockets (so endpoints with port 0 or * are known at once), loads the CURVE keys
  /// (an unreadable key or allowlist is an error: it fails closed) and opens the HTTP port.
  static Expected<std::unique_ptr<Server>> Create(const ServerOptions& options,
                                                  RunFunction run = RunWithRunner);
  ~Server();

  /// Serves until Stop() (or, with exit_when_idle, until idle), then shuts down: no new
  /// submissions, queued runs cancelled, the active run cancelled or finished, `server closing`
  /// published, sockets closed with bounded linger.
  Status Serve();
  /// Asks Serve() to shut down. Async-signal-safe.
  void Stop();

  /// Queues an already-validated scenario with the caller's run options (output folder, resume,
  /// shard) and an extra sink that sees every event from the run's thread (the display). No
  /// path confinement: this is the local `mewm run --publish`. Returns the run id.
  Expected<std::string> SubmitLocal(const scenarios::ScenarioSpec& spec,
                                    const scenarios::RunOptions& options,
                                    scenarios::EventSink* extra_sink = nullptr);

  /// The bound endpoints (with the real port when asked for 0 or *).
  const std::string& control_endpoint() const;
  const std::string& event_endpoint() const;
  /// The metrics port, or -1.
  int metrics_port() const;
  /// The CURVE public key clients must trust ("" without CURVE).
  const std::string& public_key() const;

  Health health() const;
  /// Answers one encoded control request exactly as the control socket would, without a socket:
  /// the socket-free entry point of the request dispatch, for the dispatch fuzzer and tests.
  std::string HandleRequestForTest(std::string_view request);
  /// Summary of the last finished run (for the embedded runner's exit code).
  Expected<scenarios::RunSummary> last_summary() const;

 private:
  struct Impl;
  explicit Server(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

/// A CURVE key pair in z85 (40 characters each).
struct CurveKeyPair {
  std::string public_key, secret_key;
};
Expected<CurveKeyPair> GenerateCurveKeyPair();
/// Writes "<base>.key" (secret) and "<base>.pub". The secret key file is created with mode 0600
/// from the start (O_CREAT | O_EXCL), never readable by others even for a moment; kInvalidArgument
/// when either file exists and `overwrite` is false, kIo when it cannot be created. With
/// `overwrite`, existing files are replaced atomically (a 0600 temporary file renamed).
Status WriteCurveKeyPair(const CurveKeyPair& keys, const std::string& base, bool overwrite = false);
/// Reads a z85 key (the first non-comment line) from a file: 40 characters or kCorruptData.
Expected<std::string> ReadCurveKey(const std::string& path);

}  // namespace mewm::streaming

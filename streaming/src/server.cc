// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The server as a facade over its parts (docs/ARCHITECTURE.md, "The streaming server"): it owns
// them, wires them together, and runs the control loop on the thread that calls Serve().
//
//   CurveAuth        CURVE keys and the ZAP handler thread          curve_auth.h
//   EventPublisher   the PUB socket under its lock                  event_publisher.h
//   EventLog         the log thread: events.jsonl, then publish     event_log.h
//   RunQueue         the runs, the queue, the worker thread         run_queue.h
//   ControlHandler   control requests -> replies                    control_handler.h
//   HttpRoutes       what the HTTP port serves                      http_routes.h
#include "mewm/streaming/server.h"

#include <chrono>
#include <map>
#include <thread>
#include <vector>
#include <zmq.hpp>

#include "control_handler.h"
#include "curve_auth.h"
#include "event_log.h"
#include "event_publisher.h"
#include "http_routes.h"
#include "metrics.h"
#include "mewm/core/log.h"
#include "mewm/streaming/http_server.h"
#include "run_queue.h"
#include "zmq_util.h"

namespace mewm::streaming {
namespace {

using Clock = std::chrono::steady_clock;

/// Whether an address names this machine only (127.0.0.0/8, ::1, localhost).
bool IsLoopback(const std::string& address) {
  return address == "localhost" || address == "::1" || address.rfind("127.", 0) == 0;
}

std::string BoundEndpoint(zmq::socket_t& socket) { return socket.get(zmq::sockopt::last_endpoint); }

Status CheckOptions(const ServerOptions& options) {
  if (options.limits.max_patients < 0 || options.limits.max_beam_samples < 0 ||
      !(options.limits.max_seconds >= 0.0)) {
    return MakeError(ErrorCode::kInvalidArgument, "admission limits must be >= 0 (0 = none)");
  }
  if (options.queue_capacity < 1 || options.send_hwm < 0 || options.heartbeat_ms < 1 ||
      options.snapshot_page < 1 || options.max_event_streams < 1 ||
      options.max_event_streams_per_peer < 1 || options.stream_stall_ms < 1 ||
      options.stream_keepalive_ms < 1) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "queue capacity, heartbeat, snapshot page and the event-stream limits must "
                     "be >= 1, the high-water mark >= 0");
  }
  return {};
}

/// The HTTP port's limits and token (a token file is read here: unreadable is an error).
Expected<HttpLimits> HttpLimitsOf(const ServerOptions& options) {
  HttpLimits limits;
  if (!options.http_token_file.empty()) {
    MEWM_TRY(limits.token, ReadTokenFile(options.http_token_file));
  } else if (!IsLoopback(options.metrics_address)) {
    LogWarn("the HTTP port listens on " + options.metrics_address +
            " without a bearer token (--http-token-file): anyone who reaches it can read every "
            "run's events");
  }
  for (const std::string& origin : options.http_cors_origins) {
    MEWM_RETURN_IF_ERROR(CheckCorsOrigin(origin));
  }
  limits.cors_origins = options.http_cors_origins;
  limits.max_streams = std::size_t(options.max_event_streams);
  limits.max_streams_per_peer = std::size_t(options.max_event_streams_per_peer);
  limits.stall_timeout = std::chrono::milliseconds(options.stream_stall_ms);
  limits.keepalive = std::chrono::milliseconds(options.stream_keepalive_ms);
  return limits;
}

MetricFamily Counter(const char* name, const char* help, double value) {
  return {name, "counter", help, {{{}, value}}};
}

MetricFamily RunsByState(const std::vector<RunStatus>& statuses) {
  std::map<std::string, int> by_state;
  for (RunState state : {RunState::kQueued, RunState::kRunning, RunState::kFinished,
                         RunState::kFailed, RunState::kCancelled}) {
    by_state[ToString(state)] = 0;
  }
  for (const RunStatus& status : statuses) ++by_state[ToString(status.state)];
  MetricFamily runs{"mewm_runs", "gauge", "Runs the server knows, by state.", {}};
  for (const auto& [state, n] : by_state) runs.samples.push_back({{{"state", state}}, double(n)});
  return runs;
}

/// The HTTP port's own families.
void AddHttpMetrics(const HttpCounters& http, std::vector<MetricFamily>* more) {
  MetricFamily requests{"mewm_http_requests_total",
                        "counter",
                        "HTTP requests answered, by route and status code.",
                        {}};
  for (const auto& [key, n] : http.Requests()) {
    requests.samples.push_back(
        {{{"route", key.first}, {"code", std::to_string(key.second)}}, double(n)});
  }
  more->push_back(std::move(requests));
  more->push_back({"mewm_sse_streams",
                   "gauge",
                   "Event streams (SSE) open now.",
                   {{{}, double(http.streams_open.load())}}});
  more->push_back(Counter("mewm_sse_events_sent_total", "Events written to event streams (SSE).",
                          double(http.sse_events.load())));
  more->push_back(Counter("mewm_sse_bytes_sent_total", "Bytes sent on event streams (SSE).",
                          double(http.sse_bytes.load())));
  more->push_back(
      Counter("mewm_sse_dropped_total",
              "Event streams closed because the client took nothing for the stall timeout.",
              double(http.streams_dropped.load())));
  more->push_back(Counter("mewm_sse_rejected_total",
                          "Event streams refused at the stream limit (503) or the "
                          "per-address limit (429).",
                          double(http.streams_rejected.load())));
  more->push_back(Counter("mewm_http_auth_failures_total",
                          "HTTP requests refused (401) for a missing or wrong "
                          "bearer token.",
                          double(http.auth_failures.load())));
}

}  // namespace

Expected<scenarios::RunSummary> RunWithRunner(const scenarios::ScenarioSpec& spec,
                                              const scenarios::RunOptions& options,
                                              scenarios::EventSink& sink) {
  MEWM_TRY(auto runner, scenarios::Runner::Create(spec, options));
  return runner->Run(sink);
}

struct Server::Impl {
  // Declared in the order they are built; ~Impl stops the threads in the order that lets each
  // part finish what the others hand it, then members are destroyed (the context last).
  const ServerOptions options;
  const Clock::time_point started = Clock::now();
  zmq::context_t context{1};
  std::unique_ptr<CurveAuth> curve;
  zmq::socket_t control_socket;  ///< used only by the thread in Serve()
  std::string control_ep, event_ep;
  std::unique_ptr<EventPublisher> publisher;
  StageMetrics stages;
  std::unique_ptr<EventLog> log;
  std::unique_ptr<RunQueue> runs;
  std::unique_ptr<ControlHandler> control;
  HttpCounters http_counters;
  std::unique_ptr<HttpRoutes> routes;
  std::unique_ptr<HttpServer> http;
  std::atomic<bool> stop{false};
  std::atomic<bool> serving{false};  ///< Serve() answers requests (recovery and start-up are done)

  explicit Impl(const ServerOptions& o) : options(o) {}

  ~Impl() {
    if (runs) runs->Stop();  // the active run is cancelled; its events still reach the log
    if (log) log->Stop();
    http.reset();
    control_socket.close();
    if (publisher) publisher->Close();
    if (curve) curve->Stop();
  }

  /// Binds the PUB and (with an endpoint) the ROUTER socket, CURVE-secured when configured.
  Status OpenSockets() {
    try {
      zmq::socket_t events(context, zmq::socket_type::pub);
      if (!options.control_endpoint.empty()) {
        control_socket = zmq::socket_t(context, zmq::socket_type::router);
        curve->Secure(control_socket);
      }
      curve->Secure(events);
      events.set(zmq::sockopt::sndhwm, options.send_hwm);
      events.set(zmq::sockopt::xpub_nodrop, 1);  // EAGAIN at the HWM: drops are counted
      // What a subscriber sends the PUB socket is subscriptions: topics of under 100 bytes. A
      // peer that subscribes with more is disconnected (64 MiB were accepted, and the topic trie
      // held about 31 times the bytes sent).
      constexpr std::int64_t kMaxSubscriptionBytes = 4096;
      events.set(zmq::sockopt::maxmsgsize, kMaxSubscriptionBytes);
      events.set(zmq::sockopt::linger, options.linger_ms);
      events.bind(options.event_endpoint);
      event_ep = BoundEndpoint(events);
      publisher = std::make_unique<EventPublisher>(std::move(events));
      if (control_socket) {
        control_socket.set(zmq::sockopt::maxmsgsize, std::int64_t(options.hard_max_message_bytes));
        control_socket.set(zmq::sockopt::linger, options.linger_ms);
        control_socket.bind(options.control_endpoint);
        control_ep = BoundEndpoint(control_socket);
      }
    } catch (const zmq::error_t& e) {
      return MakeError(ErrorCode::kIo, std::string("cannot open the server sockets (") +
                                           options.control_endpoint + ", " +
                                           options.event_endpoint + "): " + e.what());
    }
    return {};
  }

  Health MakeHealth() const {
    Health h;
    h.uptime_seconds = std::chrono::duration<double>(Clock::now() - started).count();
    const QueueView queue = runs->View();
    h.queue_capacity = queue.capacity;
    h.queue_depth = queue.depth;
    h.active_run = queue.active_run;
    h.models_loaded = queue.models_loaded;
    h.events_published = publisher->published();
    h.events_dropped = publisher->dropped();
    h.bad_requests = control->bad_requests();
    h.rejected_submits = control->rejected_submits();
    h.auth_failures = curve->failures();
    h.stages = stages.Stats();
    h.limits = options.limits;
    return h;
  }

  /// /metrics: health, the stage histograms, and the families beyond Health's.
  std::string RenderMetrics() const {
    std::vector<MetricFamily> more;
    more.push_back({"mewm_build_info",
                    "gauge",
                    "The build: version and git hash (1).",
                    {{{{"version", BuildVersion()}, {"git_hash", BuildGitHash()}}, 1.0}}});
    more.push_back(RunsByState(runs->Statuses()));
    MetricFamily requests{
        "mewm_requests_total", "counter", "Control requests answered, by kind and reply code.", {}};
    for (const auto& [key, n] : control->request_counts()) {
      requests.samples.push_back({{{"kind", key.first}, {"code", key.second}}, double(n)});
    }
    more.push_back(std::move(requests));
    more.push_back(Counter("mewm_bytes_published_total",
                           "Bytes sent on the PUB socket (every frame).",
                           double(publisher->bytes_published())));
    AddHttpMetrics(http_counters, &more);
    return RenderPrometheus(MakeHealth(), stages, more);
  }

  /// Everything but the sockets and the HTTP port, wired together.
  void MakeParts(RunFunction run) {
    log = std::make_unique<EventLog>(*publisher, stages, options.publish_volumes, [this] {
      if (http) http->Notify();  // event streams read the new lines
    });
    runs = std::make_unique<RunQueue>(*log, stages, std::move(run), options.queue_capacity);
    control =
        std::make_unique<ControlHandler>(options, *runs, *log, [this] { return MakeHealth(); });
    routes = std::make_unique<HttpRoutes>(*runs, serving, [this] { return RenderMetrics(); });
  }

  /// One turn of Serve(): answers control requests (or waits briefly) and sends a heartbeat when
  /// nothing was published for heartbeat_ms.
  void ServeOnce() {
    if (control_socket) {
      if (WaitReadable(control_socket, std::chrono::milliseconds(50))) {
        control->ServeSocket(control_socket);
      }
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    const auto heartbeat_ns = std::int64_t(options.heartbeat_ms) * 1000000;
    if (SteadyNs() - publisher->last_publish_ns() >= heartbeat_ns) {
      publisher->SendServerEvent(runs->MakeHeartbeat());
    }
  }
};

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Server::~Server() = default;

Expected<std::unique_ptr<Server>> Server::Create(const ServerOptions& options, RunFunction run) {
  MEWM_RETURN_IF_ERROR(CheckOptions(options));
  auto impl = std::make_unique<Impl>(options);
  // The ZAP handler is bound before any socket, so no connection is accepted without it.
  MEWM_TRY(impl->curve, CurveAuth::Start(impl->context, options.curve_secret_file,
                                         options.curve_allowlist_file));
  MEWM_RETURN_IF_ERROR(impl->OpenSockets());
  impl->MakeParts(std::move(run));
  if (options.metrics_port >= 0) {
    MEWM_TRY(HttpLimits limits, HttpLimitsOf(options));
    const HttpRoutes* routes = impl->routes.get();
    MEWM_TRY(impl->http, HttpServer::Start(
                             options.metrics_address, options.metrics_port, std::move(limits),
                             [routes](const HttpRequest& r) { return routes->Handle(r); },
                             &impl->http_counters));
  }
  impl->log->Start();
  if (options.recover_runs) impl->runs->Recover(options.results_root);
  impl->runs->Start();
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

Status Server::Serve() {
  Impl& m = *impl_;
  bool shutting_down = false;
  int cancelled_runs = 0;
  m.serving = true;
  for (;;) {
    const bool idle_exit = m.options.exit_when_idle && m.runs->Idle();
    if ((m.stop.load() || idle_exit) && !shutting_down) {
      shutting_down = true;
      cancelled_runs = m.runs->Close(m.options.finish_on_shutdown);
    }
    if (shutting_down && m.runs->Idle()) break;
    m.ServeOnce();  // status and snapshots stay answered while a run drains
  }
  m.serving = false;
  m.runs->Join();
  m.log->Flush();
  m.publisher->SendServerEvent(ServerClosing{m.stop.load() ? "shutdown" : "idle", cancelled_runs});
  return {};
}

void Server::Stop() { impl_->stop.store(true); }

Expected<std::string> Server::SubmitLocal(const scenarios::ScenarioSpec& spec,
                                          const scenarios::RunOptions& options,
                                          scenarios::EventSink* extra_sink) {
  RunSetup setup;
  setup.id = options.run_id.empty() ? scenarios::DefaultRunId(spec) : options.run_id;
  setup.trace_id = setup.id;
  setup.out = options.output_dir.empty() ? spec.output : options.output_dir;
  setup.spec = spec;
  setup.options = options;
  setup.extra = extra_sink;
  auto run = std::make_shared<RunRecord>(std::move(setup));
  if (options.resume) {
    // Events the server itself adds (a failure to start) continue the earlier sequence.
    if (auto earlier = scenarios::ReadEvents(run->log_path()); earlier && !earlier->empty()) {
      run->queued_seq.store(earlier->back().seq);
    }
  }
  return impl_->runs->PushLocal(std::move(run));
}

const std::string& Server::control_endpoint() const { return impl_->control_ep; }
const std::string& Server::event_endpoint() const { return impl_->event_ep; }
int Server::metrics_port() const { return impl_->http ? impl_->http->port() : -1; }
const std::string& Server::public_key() const { return impl_->curve->public_key(); }
Health Server::health() const { return impl_->MakeHealth(); }
std::string Server::HandleRequestForTest(std::string_view request) {
  return EncodeReply(impl_->control->Handle(request));
}
Expected<scenarios::RunSummary> Server::last_summary() const { return impl_->runs->last_summary(); }

}  // namespace mewm::streaming

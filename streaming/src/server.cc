// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/streaming/server.h"

#include <fcntl.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <thread>
#include <zmq.hpp>
#include <zmq_addon.hpp>

#include "http_server.h"
#include "metrics.h"
#include "mewm/core/batch_queue.h"
#include "mewm/core/file_util.h"
#include "mewm/core/log.h"
#include "mewm/core/mutex_guarded.h"
#include "mewm/core/seed.h"
#include "mewm/streaming/admission.h"
#include "zmq_util.h"

namespace mewm::streaming {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using scenarios::Event;

std::int64_t SteadyNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
      .count();
}
double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

/// One submitted run: its spec, its live status, and the index of its durable event log.
struct RunRecord {
  std::string id, trace_id, out;
  scenarios::ScenarioSpec spec;
  scenarios::RunOptions options;
  scenarios::EventSink* extra = nullptr;
  std::atomic<bool> cancel{false};
  std::atomic<std::int64_t> last_event_ns{0};  ///< steady clock, for heartbeats

  mutable std::mutex mutex;
  RunState state = RunState::kQueued;
  int total = 0, done = 0, failed = 0;
  std::string error;
  // events.jsonl is the history: the byte offset of each published event's line (8 bytes per
  // event in memory), so snapshots read pages of it from disk.
  std::uint64_t first_seq = 1;  ///< seq of the line at offsets[0]
  std::vector<std::uint64_t> offsets;
  std::uint64_t log_size = 0;                ///< end of the last published line
  std::atomic<std::uint64_t> queued_seq{0};  ///< last seq handed to the log thread
  std::atomic<bool> log_failed{false};       ///< then log_error says why (sticky)
  Status log_error;
  bool indexed = false;  ///< lines already in the file (a resumed run) are indexed
  int fd = -1;           ///< open while events are being written

  std::string log_path() const { return (fs::path(out) / "events.jsonl").string(); }
  std::uint64_t last_seq() const { return first_seq + offsets.size() - 1; }

  RunStatus GetStatus() const {
    std::lock_guard<std::mutex> lock(mutex);
    return {id, spec.name, state, last_seq(), total, done, failed, out, error, trace_id};
  }

  /// Updates the status for a published event (the caller holds `mutex`).
  void Apply(const Event& event) {
    std::visit(
        [&](const auto& body) {
          using T = std::decay_t<decltype(body)>;
          if constexpr (std::is_same_v<T, scenarios::RunStarted>) total = body.patients;
          if constexpr (std::is_same_v<T, scenarios::PatientFinished>) ++done;
          if constexpr (std::is_same_v<T, scenarios::PatientFailed>) ++failed;
          if constexpr (std::is_same_v<T, scenarios::RunFinished>) state = RunState::kFinished;
          if constexpr (std::is_same_v<T, scenarios::RunCancelled>) state = RunState::kCancelled;
          if constexpr (std::is_same_v<T, scenarios::RunFailed>) {
            state = RunState::kFailed;
            error = body.error;
          }
        },
        event.body);
  }
};

/// An event on its way to the log and the PUB socket.
struct LogItem {
  std::shared_ptr<RunRecord> run;
  /// The event, kept only when it changes the run's status (not the frequent candidate and beam
  /// events): the log thread applies it once the event is published.
  std::optional<Event> status_event;
  bool terminal = false;
  std::uint64_t seq = 0;
  std::string line;     ///< its events.jsonl line (no newline)
  std::string encoded;  ///< its envelope
  std::string topic;
  std::string volume;  ///< the .vdb frame, or empty
  Clock::time_point made;
};

/// Indexes an existing events.jsonl: the line start offsets of its complete lines and its first
/// seq. With `each`, every line is parsed and handed over too (recovery), in the same read.
Status IndexLog(RunRecord& run, const std::function<void(const Event&)>& each = {}) {
  std::error_code ec;
  if (!fs::exists(run.log_path(), ec)) return {};
  MEWM_TRY(const std::string text, ReadFile(run.log_path()));
  std::uint64_t start = 0;
  for (std::size_t end = text.find('\n'); end != std::string::npos;
       start = end + 1, end = text.find('\n', start)) {
    if (run.offsets.empty() || each) {
      MEWM_TRY(const Event event, scenarios::EventFromJson(text.substr(start, end - start)));
      if (run.offsets.empty()) run.first_seq = event.seq;
      if (each) each(event);
    }
    run.offsets.push_back(start);
  }
  run.log_size = start;
  return {};
}

/// Appends lines to the run's events.jsonl in one write (group commit).
Status WriteLines(RunRecord& run, const std::string& text) {
  if (run.fd < 0) {
    run.fd = ::open(run.log_path().c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (run.fd < 0) {
      return MakeError(ErrorCode::kIo,
                       "cannot open '" + run.log_path() + "': " + std::strerror(errno));
    }
  }
  for (std::size_t written = 0; written < text.size();) {
    const ssize_t n = ::write(run.fd, text.data() + written, text.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      return MakeError(ErrorCode::kIo,
                       "cannot write '" + run.log_path() + "': " + std::strerror(errno));
    }
    written += std::size_t(n);
  }
  return {};
}

/// Resolves a scenario path inside `root` (the results root or the scenario base, named by
/// `root_name`); kInvalidArgument when it would leave it. Inside means inside once normalised and
/// the symbolic links of its existing parts resolved (IsPathInside). The message is the same
/// whatever lies at the path, so a refusal tells nothing about files outside the root.
Expected<fs::path> Confine(const fs::path& root, const char* root_name, const std::string& path,
                           const std::string& key) {
  const fs::path p(path);
  for (const auto& part : p) {
    if (part == "..") {
      return MakeError(ErrorCode::kInvalidArgument,
                       key + " = \"" + path + "\" may not contain '..'");
    }
  }
  const fs::path inside = p.is_absolute() ? p.lexically_normal() : (root / p).lexically_normal();
  if (!IsPathInside(inside.string(), root.string())) {
    return MakeError(ErrorCode::kInvalidArgument, key + " = \"" + path +
                                                      "\" is outside the server's " + root_name +
                                                      " " + ResolvedPath(root.string()));
  }
  return inside;
}

/// The check every input file passes, the scenario's keys and a manifest's rows alike: inside
/// the scenario base `base` (Confine), or Confine's error.
std::function<Status(const scenarios::ScenarioPath&)> InputConfinement(fs::path base) {
  return [base = std::move(base)](const scenarios::ScenarioPath& input) -> Status {
    auto inside = Confine(base, "scenario base",
                          fs::absolute(input.path).lexically_normal().string(), input.key);
    if (!inside) return inside.error();
    return {};
  };
}

/// The z85 keys of a key file or an allowlist: one per line; blank lines and `#` comments are
/// skipped; any other line must be exactly one 40-character z85 key (kCorruptData naming it).
Expected<std::vector<std::string>> ReadKeyLines(const std::string& path) {
  MEWM_TRY(const std::string text, ReadFile(path));
  std::vector<std::string> keys;
  std::size_t start = 0;
  for (int number = 1; start < text.size(); ++number) {
    std::size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(start, end - start);
    start = end + 1;
    const auto first = line.find_first_not_of(" \t\r");
    if (first == std::string::npos || line[first] == '#') continue;
    line = line.substr(first, line.find_last_not_of(" \t\r") + 1 - first);
    std::uint8_t binary[32];
    if (line.size() != 40 || zmq_z85_decode(binary, line.c_str()) == nullptr) {
      return MakeError(ErrorCode::kCorruptData,
                       path + ":" + std::to_string(number) + ": not a 40-character z85 key");
    }
    keys.push_back(std::move(line));
  }
  return keys;
}

/// The allowlist's public keys, as the 32 raw bytes the ZAP handler sees.
Expected<std::set<std::string>> ReadAllowlist(const std::string& path) {
  MEWM_TRY(const std::vector<std::string> lines, ReadKeyLines(path));
  std::set<std::string> keys;
  for (const std::string& key : lines) {
    std::uint8_t binary[32];
    zmq_z85_decode(binary, key.c_str());
    keys.insert(std::string(reinterpret_cast<char*>(binary), 32));
  }
  return keys;
}

/// Whether an address names this machine only (127.0.0.0/8, ::1, localhost).
bool IsLoopback(const std::string& address) {
  return address == "localhost" || address == "::1" || address.rfind("127.", 0) == 0;
}

std::string BoundEndpoint(zmq::socket_t& socket) { return socket.get(zmq::sockopt::last_endpoint); }

/// `size` bytes of a file from `offset`.
Expected<std::string> ReadRange(const std::string& path, std::uint64_t offset, std::uint64_t size) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return MakeError(ErrorCode::kIo, "cannot open '" + path + "': " + std::strerror(errno));
  std::string bytes(size, '\0');
  std::uint64_t got = 0;
  while (got < size) {
    const ssize_t n = ::pread(fd, bytes.data() + got, size - got, off_t(offset + got));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += std::uint64_t(n);
  }
  ::close(fd);
  if (got != size) return MakeError(ErrorCode::kIo, "'" + path + "' is shorter than its index");
  return bytes;
}

/// A run's events as Server-Sent Events, read from its durable log (the same index and file as
/// the snapshots of the ZeroMQ late join): `id: <seq>` and `data: <the events.jsonl line>`, from
/// the event after `after`, until the run's terminal event.
class RunEventStream final : public StreamSource {
 public:
  RunEventStream(std::shared_ptr<RunRecord> run, std::uint64_t after)
      : run_(std::move(run)), after_(after) {}

  bool Pull(std::string* out, std::size_t budget, std::uint64_t* events) override {
    std::uint64_t from = 0, to = 0, first = 0, lines = 0;
    bool ended = false;
    {
      std::lock_guard<std::mutex> lock(run_->mutex);
      const std::uint64_t count = run_->offsets.size();
      const std::uint64_t begin = after_ < run_->first_seq ? 0 : after_ + 1 - run_->first_seq;
      std::uint64_t end = begin;
      if (begin < count) {
        from = run_->offsets[begin];
        end = begin + 1;  // at least one line, then as many as fit the budget
        while (end < count && run_->offsets[end] - from < budget) ++end;
        to = end < count ? run_->offsets[end] : run_->log_size;
        first = run_->first_seq + begin;
        lines = end - begin;
      }
      ended = IsEnded(run_->state) && end >= count;
    }
    if (lines == 0) return !ended;
    auto page = ReadRange(run_->log_path(), from, to - from);
    if (!page) {
      LogWarn("event stream of " + run_->id + ": " + page.error().message);
      return false;  // the client reconnects with Last-Event-ID
    }
    std::uint64_t seq = first;
    for (std::size_t start = 0, end = page->find('\n'); end != std::string::npos;
         start = end + 1, end = page->find('\n', start), ++seq) {
      *out += "id: " + std::to_string(seq) + "\ndata: ";
      out->append(*page, start, end - start);
      *out += "\n\n";
      ++*events;
      after_ = seq;
    }
    return !ended;
  }

 private:
  std::shared_ptr<RunRecord> run_;
  std::uint64_t after_;
};

nlohmann::json StatusJson(const RunStatus& s) {
  return {{"run_id", s.run_id},
          {"scenario", s.scenario},
          {"state", ToString(s.state)},
          {"last_seq", s.last_seq},
          {"patients_total", s.patients_total},
          {"patients_done", s.patients_done},
          {"patients_failed", s.patients_failed},
          {"output_dir", s.output_dir},
          {"error", s.error},
          {"trace_id", s.trace_id}};
}

std::string ErrorJson(const std::string& message) {
  return nlohmann::json{{"error", message}}.dump();
}

/// The seq a client resumes after: Last-Event-ID (the header EventSource sends on reconnect), else
/// the `last_event_id` query parameter, else 0 (from the first event). nullopt when malformed.
std::optional<std::uint64_t> ResumeAfter(const HttpRequest& request) {
  std::string raw;
  if (const std::string* header = request.Header("last-event-id")) {
    raw = *header;
  } else if (auto query = request.Query("last_event_id")) {
    raw = *query;
  }
  if (raw.empty()) return 0;
  std::uint64_t value = 0;
  const auto [end, ec] = std::from_chars(raw.data(), raw.data() + raw.size(), value);
  if (ec != std::errc() || end != raw.data() + raw.size() || raw[0] == '+' || raw[0] == '-') {
    return std::nullopt;
  }
  return value;
}

}  // namespace

Expected<scenarios::RunSummary> RunWithRunner(const scenarios::ScenarioSpec& spec,
                                              const scenarios::RunOptions& options,
                                              scenarios::EventSink& sink) {
  MEWM_TRY(auto runner, scenarios::Runner::Create(spec, options));
  return runner->Run(sink);
}

struct Server::Impl {
  ServerOptions options;
  RunFunction run_fn;
  zmq::context_t context{1};
  zmq::socket_t control, zap;
  std::string control_ep, event_ep, public_key;
  std::set<std::string> allowlist;
  std::thread zap_thread, worker;
  std::atomic<bool> zap_stop{false};
  std::unique_ptr<HttpServer> http;
  HttpCounters http_counters;
  StageMetrics stages;
  const Clock::time_point started = Clock::now();

  std::atomic<bool> stop{false};
  std::atomic<bool> serving{false};  ///< Serve() answers requests (recovery and start-up are done)
  std::atomic<std::uint64_t> published{0}, dropped{0}, bad_requests{0}, rejected{0},
      auth_failures{0}, bytes_published{0};
  /// Control requests answered, by kind and reply code ("ok" or the error's name).
  MutexGuarded<std::map<std::pair<std::string, std::string>, std::uint64_t>> requests;
  std::atomic<std::int64_t> last_publish_ns{SteadyNs()};
  /// The event PUB socket and the server's own event sequence: one sender at a time.
  struct Publisher {
    zmq::socket_t socket;
    std::uint64_t server_seq = 0;
  };
  MutexGuarded<Publisher> pub;

  static constexpr std::size_t kMaxQueuedEvents = 8192;
  /// Events on their way to the log thread (LogLoop), which writes each batch then publishes it.
  BatchQueue<LogItem> log_queue{kMaxQueuedEvents};
  std::thread log_thread;

  /// The runs the server knows and its queue: reachable only under their lock (`table.Lock()`).
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
  MutexGuarded<RunTable> table;
  std::condition_variable runs_cv;  ///< the queue or worker_stop changed, or a run ended

  ~Impl() {
    {
      auto t = table.Lock();
      t->worker_stop = true;
      for (auto& run : t->queue) run->cancel = true;
      if (t->active) t->active->cancel = true;
    }
    runs_cv.notify_all();
    if (worker.joinable()) worker.join();
    log_queue.Stop();
    if (log_thread.joinable()) log_thread.join();
    http.reset();
    control.close();
    pub.Lock()->socket.close();
    zap_stop = true;
    if (zap_thread.joinable()) zap_thread.join();
  }

  // --- publishing ---------------------------------------------------------------------------

  /// Sends [topic, envelope, (volume)] without blocking; counts a drop when a subscriber is full.
  void Publish(const std::string& topic, const std::string& envelope, std::string* volume) {
    PublishLocked(*pub.Lock(), topic, envelope, volume);
  }

  /// Publish() for a caller that holds the publisher (the log thread sends a batch under one
  /// lock).
  void PublishLocked(Publisher& publisher, const std::string& topic, const std::string& envelope,
                     std::string* volume) {
    zmq::socket_t& events = publisher.socket;
    const std::size_t volume_bytes = volume ? volume->size() : 0;
    const auto more = zmq::send_flags::sndmore | zmq::send_flags::dontwait;
    if (!events.send(zmq::buffer(topic), more)) {
      // A subscriber is at its high-water mark (XPUB_NODROP refuses the send to tell us). Count
      // it, then send in lossy mode: the full subscriber misses this event (and heals the gap
      // from a snapshot later); everyone else gets it now.
      dropped.fetch_add(1, std::memory_order_relaxed);
      events.set(zmq::sockopt::xpub_nodrop, 0);
      const bool sent = bool(events.send(zmq::buffer(topic), more));
      events.set(zmq::sockopt::xpub_nodrop, 1);
      if (!sent) return;
    }
    // Only the first frame can meet the high-water mark; the rest of the message follows it.
    if (volume == nullptr) {
      (void)events.send(zmq::buffer(envelope), zmq::send_flags::dontwait);
    } else {
      (void)events.send(zmq::buffer(envelope), more);
      auto* owned = new std::string(std::move(*volume));  // zero-copy: zmq frees it when sent
      zmq::message_t frame(
          owned->data(), owned->size(),
          [](void*, void* hint) { delete static_cast<std::string*>(hint); }, owned);
      (void)events.send(frame, zmq::send_flags::dontwait);
    }
    published.fetch_add(1, std::memory_order_relaxed);
    bytes_published.fetch_add(topic.size() + envelope.size() + (volume ? volume_bytes : 0),
                              std::memory_order_relaxed);
    last_publish_ns.store(SteadyNs(), std::memory_order_relaxed);
  }

  void PublishServer(std::variant<Heartbeat, ServerClosing> body) {
    ServerEvent event;
    event.seq = ++pub.Lock()->server_seq;
    event.timestamp_ns = scenarios::NowNs();
    event.body = std::move(body);
    const Envelope envelope(std::move(event));
    Publish(TopicOf(envelope), EncodeEnvelope(envelope), nullptr);
  }

  // --- the event log ---------------------------------------------------------------------------
  //
  // A run's thread prepares each event (its JSON line, its envelope, its volume frame) and hands
  // it to the log thread, which appends everything waiting for a run in one write (group commit)
  // and only then publishes those events, in order. So every published event is on disk, a
  // burst of events costs one write, and the run never waits on the PUB socket.

  /// Queues a run's event for the log and the PUB socket; the run's first log error, if any.
  Status Enqueue(const std::shared_ptr<RunRecord>& run, const Event& event) {
    if (event.run_id != run->id) {
      return MakeError(ErrorCode::kInternal,
                       "runner emitted run id " + event.run_id + " for run " + run->id);
    }
    if (run->log_failed.load()) {
      std::lock_guard<std::mutex> lock(run->mutex);
      return run->log_error.error();
    }
    run->queued_seq.store(event.seq);
    LogItem item;
    item.run = run;
    item.made = Clock::now();
    item.seq = event.seq;
    item.terminal = scenarios::IsTerminal(event.body);
    if (item.terminal || std::holds_alternative<scenarios::RunStarted>(event.body) ||
        std::holds_alternative<scenarios::PatientFinished>(event.body) ||
        std::holds_alternative<scenarios::PatientFailed>(event.body)) {
      item.status_event = event;
    }
    item.line = scenarios::EventToJson(event);
    RunEvent wire{event, run->trace_id, std::nullopt};
    if (const auto* decided = std::get_if<scenarios::PlanDecided>(&event.body);
        decided && options.publish_volumes && !decided->volume_path.empty()) {
      if (auto bytes = ReadFile(decided->volume_path)) {
        item.volume = std::move(*bytes);
        wire.volume = VolumeRef{item.volume.size(), Sha256(item.volume), decided->volume_path};
      } else {
        LogWarn("not publishing volume: " + bytes.error().message);
      }
    }
    item.encoded = EncodeEnvelope(wire);
    item.topic = RunTopicPrefix(run->id) + scenarios::EventTypeName(event.body);
    // A disk slower than the run holds the run back (bounded memory), not the subscribers.
    log_queue.Push(std::move(item));
    return {};
  }

  /// Waits until everything queued so far is written and published.
  void Flush() { log_queue.Flush(); }

  void LogLoop() {
    for (;;) {
      std::deque<LogItem> batch = log_queue.TakeAll();
      if (batch.empty()) return;  // stopped, and everything is written
      for (std::size_t begin = 0; begin < batch.size();) {
        std::size_t end = begin + 1;
        while (end < batch.size() && batch[end].run == batch[begin].run) ++end;
        WriteThenPublish(batch, begin, end);
        begin = end;
      }
      if (http) http->Notify();  // event streams read the new lines
      log_queue.Done(batch.size());
    }
  }

  /// One run's consecutive events: one write, then each published.
  void WriteThenPublish(std::deque<LogItem>& batch, std::size_t begin, std::size_t end) {
    RunRecord& run = *batch[begin].run;
    std::string text;
    for (std::size_t i = begin; i < end; ++i) {
      text += batch[i].line;
      text += '\n';
    }
    if (run.log_failed.load()) return;  // the run already lost its log: publish nothing more
    Status written;
    {
      std::lock_guard<std::mutex> lock(run.mutex);
      if (!run.indexed) {
        run.first_seq = batch[begin].seq;
        written = IndexLog(run);  // a resumed run's earlier lines are its history too
        run.indexed = true;
      }
    }
    // Only this thread writes a run's log, so the write itself holds no lock (a run's thread
    // queueing its next event, or a snapshot, never waits on the disk).
    if (written) written = WriteLines(run, text);
    if (!written) {
      LogWarn("run " + run.id + ": " + written.error().message);
      std::lock_guard<std::mutex> lock(run.mutex);
      run.log_error = written;
      run.log_failed = true;
      return;
    }
    {
      std::lock_guard<std::mutex> lock(run.mutex);
      for (std::size_t i = begin; i < end; ++i) {
        run.offsets.push_back(run.log_size);
        run.log_size += batch[i].line.size() + 1;
        if (batch[i].status_event) run.Apply(*batch[i].status_event);
      }
      if (batch[end - 1].terminal && run.fd >= 0) {
        ::close(run.fd);  // nothing follows a terminal event
        run.fd = -1;
      }
    }
    run.last_event_ns.store(SteadyNs(), std::memory_order_relaxed);
    auto publisher = pub.Lock();
    for (std::size_t i = begin; i < end; ++i) {
      LogItem& item = batch[i];
      PublishLocked(*publisher, item.topic, item.encoded,
                    item.volume.empty() ? nullptr : &item.volume);
      stages.publish().Observe(Since(item.made));  // made -> on disk -> sent
    }
  }

  /// An event the server itself makes for a run (accepted, cancelled while queued, failed to
  /// start): logged and published before this returns.
  Status Append(const std::shared_ptr<RunRecord>& run, scenarios::EventBody body) {
    const std::uint64_t seq = run->queued_seq.load() + 1;
    MEWM_RETURN_IF_ERROR(Enqueue(run, Event{run->id, seq, scenarios::NowNs(), std::move(body)}));
    Flush();
    std::lock_guard<std::mutex> lock(run->mutex);
    return run->log_error;
  }

  // --- runs -----------------------------------------------------------------------------------

  class RunSink final : public scenarios::EventSink {
   public:
    RunSink(Impl& server, std::shared_ptr<RunRecord> run) : server_(server), run_(std::move(run)) {}
    Status Emit(const Event& event) override {
      MEWM_RETURN_IF_ERROR(server_.Enqueue(run_, event));
      return run_->extra ? run_->extra->Emit(event) : Status{};
    }

   private:
    Impl& server_;
    std::shared_ptr<RunRecord> run_;
  };

  void WorkerLoop() {
    for (;;) {
      std::shared_ptr<RunRecord> run;
      {
        auto t = table.Lock();
        runs_cv.wait(t.lock(), [&] { return t->worker_stop || !t->queue.empty(); });
        if (t->queue.empty()) return;
        run = t->queue.front();
        t->queue.pop_front();
        t->active = run;
        t->models_loaded = {
            "policy:" + run->spec.policy_backend,
            "dynamics:" + run->spec.dynamics_backend +
                (run->spec.calibration.empty() ? "" : " " + run->spec.calibration) +
                (run->spec.diffusion.model_path.empty() ? ""
                                                        : " " + run->spec.diffusion.model_path),
            "survival:" + run->spec.survival_backend +
                (run->spec.survival_model.empty() ? "" : " " + run->spec.survival_model)};
      }
      {
        std::lock_guard<std::mutex> lock(run->mutex);
        run->state = RunState::kRunning;
      }
      Execute(run);
      table.Lock()->active.reset();
      runs_cv.notify_all();
    }
  }

  void Execute(const std::shared_ptr<RunRecord>& run) {
    scenarios::RunOptions options = run->options;
    options.output_dir = run->out;
    options.run_id = run->id;
    options.write_event_log = false;  // the log thread keeps events.jsonl
    options.cancelled = [run, user = run->options.cancelled] {
      return run->cancel.load() || (user && user());
    };
    options.stage_seconds = [this](const char* stage, double seconds) {
      stages.Observe(stage, seconds);
    };
    RunSink sink(*this, run);
    auto summary = run_fn(run->spec, options, sink);
    Flush();
    if (!summary) {
      LogWarn("run " + run->id + " failed: " + summary.error().message);
      bool ended;
      {
        std::lock_guard<std::mutex> lock(run->mutex);
        ended = IsEnded(run->state);
      }
      if (!ended) {
        if (auto appended = Append(run, scenarios::RunFailed{summary.error().message}); !appended) {
          std::lock_guard<std::mutex> lock(run->mutex);
          run->state = RunState::kFailed;
          run->error = summary.error().message;
        }
      }
    }
    {
      std::lock_guard<std::mutex> lock(run->mutex);
      if (run->fd >= 0) ::close(run->fd);
      run->fd = -1;
    }
    table.Lock()->last_summary = std::move(summary);
  }

  /// Lists the runs an earlier server process left under the results root, from their logs, so
  /// their status and history stay available. A run whose log has no terminal event was cut off
  /// by that process's end: it gets run_failed, so its watchers stop.
  void RecoverRuns() {
    std::error_code ec;
    const fs::path root = fs::absolute(options.results_root);
    if (!fs::is_directory(root, ec)) return;
    std::vector<std::pair<std::int64_t, std::shared_ptr<RunRecord>>> found;
    for (auto it = fs::recursive_directory_iterator(root, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (it.depth() > 6) it.disable_recursion_pending();
      if (it->path().filename() != "events.jsonl") continue;
      auto run = std::make_shared<RunRecord>();
      run->out = it->path().parent_path().string();
      Event first, last;
      const Status indexed = IndexLog(*run, [&](const Event& e) {
        if (run->offsets.empty()) first = e;
        last = e;
        if (const auto* a = std::get_if<scenarios::RunAccepted>(&e.body))
          run->spec.name = a->scenario;
        if (const auto* st = std::get_if<scenarios::RunStarted>(&e.body))
          run->spec.name = st->scenario;
        run->Apply(e);
      });
      if (!indexed || run->offsets.empty()) {
        LogWarn("not recovering " + it->path().string() + ": " +
                (indexed ? std::string("empty log") : indexed.error().message));
        continue;
      }
      run->id = first.run_id;
      run->trace_id = run->id;
      run->indexed = true;
      run->queued_seq.store(last.seq);
      if (!IsEnded(run->state)) run->state = RunState::kRunning;  // until run_failed below
      found.emplace_back(first.timestamp_ns, std::move(run));
    }
    std::sort(found.begin(), found.end(),
              [](const auto& a, const auto& b) { return a.first < b.first; });
    std::vector<std::shared_ptr<RunRecord>> cut_off;
    {
      auto t = table.Lock();
      for (auto& [time, run] : found) {
        if (t->runs.count(run->id)) {
          LogWarn("not recovering a second run " + run->id + " in " + run->out);
          continue;
        }
        t->runs[run->id] = run;
        t->run_order.push_back(run);
        if (!IsEnded(run->state)) cut_off.push_back(run);
      }
    }
    for (const auto& run : cut_off) {  // logged outside the lock: Append waits for the log
      (void)Append(run, scenarios::RunFailed{"interrupted: the server stopped before the run "
                                             "ended (restarted server)"});
    }
  }

  static std::string NewRunId(RunTable& t, const std::string& name) {
    for (;;) {
      char hex[17];
      std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(t.id_rng()));
      std::string id = name + "-" + std::string(hex).substr(0, 8);
      if (!t.runs.count(id)) return id;
    }
  }

  // --- control --------------------------------------------------------------------------------

  static Reply Fail(const std::string& request_id, ReplyError code, std::string message) {
    return Reply{request_id, ErrorReply{code, std::move(message)}};
  }

  std::shared_ptr<RunRecord> Find(const std::string& id) {
    auto t = table.Lock();
    auto it = t->runs.find(id);
    return it == t->runs.end() ? nullptr : it->second;
  }

  Reply HandleSubmit(const Request& request, const SubmitRequest& submit) {
    const auto reject = [&](ReplyError code, std::string message) {
      rejected.fetch_add(1, std::memory_order_relaxed);
      return Fail(request.request_id, code, std::move(message));
    };
    {
      auto t = table.Lock();
      if (!t->accepting) return reject(ReplyError::kShuttingDown, "the server is shutting down");
      if (!submit.client_request_id.empty()) {
        if (auto it = t->by_client_request.find(submit.client_request_id);
            it != t->by_client_request.end()) {
          int position = 0;  // 0 also when it already left the queue
          for (std::size_t i = 0; i < t->queue.size(); ++i) {
            if (t->queue[i]->id == it->second) position = int(i);
          }
          return Reply{request.request_id, Submitted{it->second, position, true}};
        }
      }
    }
    // Input files (models, manifest, action base) must lie under the scenario base. They are
    // checked as the parser meets them, before it looks at or reads them.
    const fs::path base = fs::absolute(options.scenario_base).lexically_normal();
    fs::path folder = base;
    if (!submit.scenario_path.empty()) {
      auto file = Confine(base, "scenario base", submit.scenario_path, "scenario path");
      if (!file) return reject(ReplyError::kForbiddenPath, file.error().message);
      folder = file->parent_path();
    }
    const auto confine_input = InputConfinement(base);
    bool forbidden = false;
    scenarios::ParseOptions parse;
    parse.backends = options.backends;
    parse.check_input = [&](const scenarios::ScenarioPath& input) {
      Status inside = confine_input(input);
      forbidden = forbidden || !inside;
      return inside;
    };
    const std::string origin =
        submit.scenario_path.empty() ? "submitted scenario" : submit.scenario_path;
    auto spec = scenarios::ParseScenario(submit.scenario_toml, origin, folder.string(), parse);
    if (!spec) {
      return reject(forbidden ? ReplyError::kForbiddenPath : ReplyError::kInvalidScenario,
                    spec.error().message);
    }
    if (auto admitted = CheckAdmission(EstimateCost(*spec), options.limits); !admitted) {
      return reject(ReplyError::kOverLimit, admitted.error().message);
    }
    for (const scenarios::ScenarioPath& input : spec->InputPaths()) {  // every one, once more
      if (Status inside = confine_input(input); !inside) {
        return reject(ReplyError::kForbiddenPath, inside.error().message);
      }
    }
    // Outputs: everything under the results root, cohorts only in <root>/cohorts/ (the rule of
    // scenarios::SyntheticCohortDir) and runs anywhere else.
    const fs::path root = fs::absolute(options.results_root).lexically_normal();
    const fs::path cohorts = root / "cohorts";
    for (const scenarios::ScenarioPath& out : spec->OutputPaths()) {
      if (auto inside = Confine(root, "results root", out.path, out.key); !inside) {
        return reject(ReplyError::kForbiddenPath, inside.error().message);
      }
    }
    auto output = Confine(root, "results root", spec->output, "run.output");
    if (!output) return reject(ReplyError::kForbiddenPath, output.error().message);
    if (IsPathInside(output->string(), cohorts.string())) {
      return reject(ReplyError::kForbiddenPath, "run.output = \"" + spec->output + "\" is inside " +
                                                    ResolvedPath(cohorts.string()) +
                                                    ", where only cohorts live");
    }
    if (spec->cohort.source == scenarios::CohortSpec::Source::kSynthetic) {
      auto cohort = scenarios::SyntheticCohortDir(*spec, output->string(), root.string());
      if (!cohort) return reject(ReplyError::kForbiddenPath, cohort.error().message);
      spec->cohort.dir = *cohort;
    }

    auto run = std::make_shared<RunRecord>();
    int position = 0;
    {
      auto t = table.Lock();
      if (int(t->queue.size()) >= options.queue_capacity) {
        return reject(ReplyError::kQueueFull, "the run queue is full (" +
                                                  std::to_string(options.queue_capacity) +
                                                  " waiting); try again later");
      }
      run->id = NewRunId(*t, spec->name);
      position = int(t->queue.size());
    }
    run->trace_id = request.trace_id.empty() ? run->id : request.trace_id;
    run->out = (*output / run->id).string();
    // Every path derived for the run, checked as written (run.name is confined by the parser,
    // this guards the derivations): its folder and log outside cohorts/, its cohort inside.
    const bool synthetic = spec->cohort.source == scenarios::CohortSpec::Source::kSynthetic;
    for (const std::string& derived : {run->out, run->log_path()}) {
      if (!IsPathInside(derived, root.string()) || IsPathInside(derived, cohorts.string())) {
        return reject(ReplyError::kForbiddenPath,
                      "the run's folder '" + derived + "' would leave " +
                          ResolvedPath(root.string()) + " or enter its cohorts/");
      }
    }
    if (synthetic && !IsPathInside(spec->cohort.dir, cohorts.string())) {
      return reject(ReplyError::kForbiddenPath, "the run's cohort '" + spec->cohort.dir +
                                                    "' would leave " +
                                                    ResolvedPath(cohorts.string()));
    }
    run->spec = std::move(*spec);
    run->options.resume = true;  // continue the log that starts with run_accepted
    // A manifest's rows name more files; the runner checks them on the worker thread, where
    // reading the CSV cannot hold up the control socket.
    run->options.check_input = confine_input;
    run->options.backends = options.backends;
    std::error_code ec;
    fs::create_directories(run->out, ec);
    if (ec) {
      return Fail(request.request_id, ReplyError::kInternal,
                  "cannot create '" + run->out + "': " + ec.message());
    }
    if (auto accepted = Append(run, scenarios::RunAccepted{run->spec.name, run->out, position});
        !accepted) {
      return Fail(request.request_id, ReplyError::kInternal, accepted.error().message);
    }
    {
      auto t = table.Lock();
      t->runs[run->id] = run;
      t->run_order.push_back(run);
      t->queue.push_back(run);
      if (!submit.client_request_id.empty()) {
        t->by_client_request[submit.client_request_id] = run->id;
      }
    }
    runs_cv.notify_all();
    return Reply{request.request_id, Submitted{run->id, position, false}};
  }

  Reply HandleCancel(const Request& request, const std::string& id) {
    auto run = Find(id);
    if (!run) return Fail(request.request_id, ReplyError::kUnknownRun, "no run '" + id + "'");
    bool was_queued = false;
    {
      auto t = table.Lock();
      for (auto it = t->queue.begin(); it != t->queue.end(); ++it) {
        if (*it == run) {
          t->queue.erase(it);
          was_queued = true;
          break;
        }
      }
    }
    if (was_queued) {
      if (auto cancelled = Append(run, scenarios::RunCancelled{0}); !cancelled) {
        return Fail(request.request_id, ReplyError::kInternal, cancelled.error().message);
      }
      return Reply{request.request_id, CancelReply{run->GetStatus()}};
    }
    const RunStatus status = run->GetStatus();
    if (IsEnded(status.state)) {
      return Fail(request.request_id, ReplyError::kNotCancellable,
                  "run '" + id + "' already ended (" + ToString(status.state) + ")");
    }
    run->cancel = true;  // the runner stops between simulation batches
    return Reply{request.request_id, CancelReply{status}};
  }

  Reply HandleSnapshot(const Request& request, const SnapshotRequest& snapshot) {
    auto run = Find(snapshot.run_id);
    if (!run) {
      return Fail(request.request_id, ReplyError::kUnknownRun, "no run '" + snapshot.run_id + "'");
    }
    SnapshotReply reply;
    reply.run = run->GetStatus();
    const std::uint64_t limit =
        snapshot.max_events == 0
            ? std::uint64_t(options.snapshot_page)
            : std::min<std::uint64_t>(snapshot.max_events, std::uint64_t(options.snapshot_page));
    std::uint64_t from = 0, to = 0;  // byte range of the page in events.jsonl
    {
      std::lock_guard<std::mutex> lock(run->mutex);
      const std::uint64_t count = run->offsets.size();
      const std::uint64_t begin =
          snapshot.after_seq < run->first_seq ? 0 : snapshot.after_seq + 1 - run->first_seq;
      const std::uint64_t end = std::min(count, begin + limit);
      if (begin < end) {
        from = run->offsets[begin];
        to = end < count ? run->offsets[end] : run->log_size;
      }
      reply.more = end < count;
    }
    if (from < to) {
      auto page = ReadRange(run->log_path(), from, to - from);
      if (!page) return Fail(request.request_id, ReplyError::kInternal, page.error().message);
      for (std::size_t start = 0, end = page->find('\n'); end != std::string::npos;
           start = end + 1, end = page->find('\n', start)) {
        auto event = scenarios::EventFromJson(page->substr(start, end - start));
        if (!event) return Fail(request.request_id, ReplyError::kInternal, event.error().message);
        reply.events.push_back(EncodeEnvelope(RunEvent{std::move(*event), run->trace_id, {}}));
      }
    }
    return Reply{request.request_id, std::move(reply)};
  }

  Health MakeHealth() const {
    Health h;
    h.uptime_seconds = Since(started);
    h.queue_capacity = options.queue_capacity;
    {
      auto t = table.Lock();
      h.queue_depth = int(t->queue.size());
      h.active_run = t->active ? t->active->id : "";
      h.models_loaded = t->models_loaded;
    }
    h.events_published = published.load();
    h.events_dropped = dropped.load();
    h.bad_requests = bad_requests.load();
    h.rejected_submits = rejected.load();
    h.auth_failures = auth_failures.load();
    h.stages = stages.Stats();
    h.limits = options.limits;
    return h;
  }

  /// Dispatch() counted by request kind and reply code (mewm_requests_total).
  Reply Handle(std::string_view bytes) {
    const char* kind = "undecodable";
    Reply reply = Dispatch(bytes, &kind);
    const auto* error = std::get_if<ErrorReply>(&reply.body);
    ++(*requests.Lock())[{kind, error ? ToString(error->code) : "ok"}];
    return reply;
  }

  Reply Dispatch(std::string_view bytes, const char** kind) {
    if (bytes.size() > options.max_request_bytes) {
      bad_requests.fetch_add(1, std::memory_order_relaxed);
      return Fail("", ReplyError::kTooLarge,
                  "request of " + std::to_string(bytes.size()) + " bytes is over the limit of " +
                      std::to_string(options.max_request_bytes));
    }
    auto request = DecodeRequest(bytes);
    if (!request) {
      bad_requests.fetch_add(1, std::memory_order_relaxed);
      return Fail("",
                  request.error().code == ErrorCode::kMismatch ? ReplyError::kWrongVersion
                                                               : ReplyError::kMalformed,
                  request.error().message);
    }
    const std::string& rid = request->request_id;
    static constexpr const char* kKinds[] = {"submit",   "cancel", "status",
                                             "snapshot", "list",   "health"};
    static_assert(std::variant_size_v<decltype(request->body)> == std::size(kKinds));
    *kind = kKinds[request->body.index()];
    if (const auto* x = std::get_if<SubmitRequest>(&request->body))
      return HandleSubmit(*request, *x);
    if (const auto* x = std::get_if<CancelRequest>(&request->body))
      return HandleCancel(*request, x->run_id);
    if (const auto* x = std::get_if<SnapshotRequest>(&request->body)) {
      return HandleSnapshot(*request, *x);
    }
    if (const auto* x = std::get_if<StatusRequest>(&request->body)) {
      auto run = Find(x->run_id);
      if (!run) return Fail(rid, ReplyError::kUnknownRun, "no run '" + x->run_id + "'");
      return Reply{rid, run->GetStatus()};
    }
    if (std::holds_alternative<ListRunsRequest>(request->body)) {
      RunList list;
      auto t = table.Lock();
      for (const auto& run : t->run_order) list.runs.push_back(run->GetStatus());
      return Reply{rid, std::move(list)};
    }
    return Reply{rid, MakeHealth()};
  }

  // --- HTTP: metrics, health, run status and event streams (docs/PROTOCOL.md "HTTP") ----------

  /// The families beyond Health's for /metrics.
  std::vector<MetricFamily> MoreMetrics() const {
    std::vector<MetricFamily> more;
    const auto counter = [&](const char* name, const char* help, double value) {
      more.push_back({name, "counter", help, {{{}, value}}});
    };
    more.push_back({"mewm_build_info",
                    "gauge",
                    "The build: version and git hash (1).",
                    {{{{"version", BuildVersion()}, {"git_hash", BuildGitHash()}}, 1.0}}});
    MetricFamily runs{"mewm_runs", "gauge", "Runs the server knows, by state.", {}};
    {
      std::map<std::string, int> by_state;
      for (RunState state : {RunState::kQueued, RunState::kRunning, RunState::kFinished,
                             RunState::kFailed, RunState::kCancelled}) {
        by_state[ToString(state)] = 0;
      }
      auto t = table.Lock();
      for (const auto& run : t->run_order) {
        std::lock_guard<std::mutex> lock(run->mutex);
        ++by_state[ToString(run->state)];
      }
      for (const auto& [state, n] : by_state)
        runs.samples.push_back({{{"state", state}}, double(n)});
    }
    more.push_back(std::move(runs));
    MetricFamily control_requests{
        "mewm_requests_total", "counter", "Control requests answered, by kind and reply code.", {}};
    for (const auto& [key, n] : *requests.Lock()) {
      control_requests.samples.push_back({{{"kind", key.first}, {"code", key.second}}, double(n)});
    }
    more.push_back(std::move(control_requests));
    counter("mewm_bytes_published_total", "Bytes sent on the PUB socket (every frame).",
            double(bytes_published.load()));
    MetricFamily http_requests{"mewm_http_requests_total",
                               "counter",
                               "HTTP requests answered, by route and status code.",
                               {}};
    for (const auto& [key, n] : http_counters.Requests()) {
      http_requests.samples.push_back(
          {{{"route", key.first}, {"code", std::to_string(key.second)}}, double(n)});
    }
    more.push_back(std::move(http_requests));
    more.push_back({"mewm_sse_streams",
                    "gauge",
                    "Event streams (SSE) open now.",
                    {{{}, double(http_counters.streams_open.load())}}});
    counter("mewm_sse_events_sent_total", "Events written to event streams (SSE).",
            double(http_counters.sse_events.load()));
    counter("mewm_sse_bytes_sent_total", "Bytes sent on event streams (SSE).",
            double(http_counters.sse_bytes.load()));
    counter("mewm_sse_dropped_total",
            "Event streams closed because the client took nothing for the stall timeout.",
            double(http_counters.streams_dropped.load()));
    counter("mewm_sse_rejected_total", "Event streams refused (503) at the stream limit.",
            double(http_counters.streams_rejected.load()));
    counter("mewm_http_auth_failures_total",
            "HTTP requests refused (401) for a missing or wrong "
            "bearer token.",
            double(http_counters.auth_failures.load()));
    return more;
  }

  HttpResponse HandleHttp(const HttpRequest& request) {
    static const std::string kRuns = "/v1/runs", kRunsPrefix = "/v1/runs/", kEvents = "/events";
    const std::string& path = request.path;
    std::string route = "other", run_id;
    bool events = false;
    if (path == "/metrics" || path == "/v2/health/live" || path == "/v2/health/ready" ||
        path == kRuns) {
      route = path;
    } else if (path.compare(0, kRunsPrefix.size(), kRunsPrefix) == 0) {
      run_id = path.substr(kRunsPrefix.size());
      if (run_id.size() > kEvents.size() &&
          run_id.compare(run_id.size() - kEvents.size(), kEvents.size(), kEvents) == 0) {
        run_id.resize(run_id.size() - kEvents.size());
        events = true;
      }
      if (!run_id.empty() && run_id.find('/') == std::string::npos) {
        route = events ? "/v1/runs/{id}/events" : "/v1/runs/{id}";
      }
    }
    if (route == "other") {
      return JsonResponse(404, ErrorJson("no such endpoint: " + path), route);
    }
    if (request.method != "GET") {
      HttpResponse response =
          JsonResponse(405, ErrorJson(request.method + " is not allowed here; use GET"), route);
      response.headers.emplace_back("Allow", "GET");
      return response;
    }
    if (route == "/metrics") {
      HttpResponse response;
      response.content_type = "text/plain; version=0.0.4; charset=utf-8";
      response.body = RenderPrometheus(MakeHealth(), stages, MoreMetrics());
      response.route = route;
      return response;
    }
    if (route == "/v2/health/live") return JsonResponse(200, R"({"live":true})", route);
    if (route == "/v2/health/ready") {
      nlohmann::json body;
      bool ready;
      {
        auto t = table.Lock();
        const bool room = int(t->queue.size()) < options.queue_capacity;
        const bool started = serving.load();
        ready = started && t->accepting && room;
        body = {{"ready", ready},
                {"accepting", t->accepting},
                {"queue_depth", t->queue.size()},
                {"queue_capacity", options.queue_capacity},
                {"active_run", t->active ? t->active->id : ""},
                {"models_loaded", t->models_loaded}};
        if (!started) {
          body["reason"] = "starting: the control socket is not served yet";
        } else if (!t->accepting) {
          body["reason"] = "shutting down";
        } else if (!room) {
          body["reason"] = "the run queue is full";
        }
      }
      return JsonResponse(ready ? 200 : 503, body.dump(), route);
    }
    if (route == kRuns) {
      nlohmann::json runs = nlohmann::json::array();
      {
        auto t = table.Lock();
        for (const auto& run : t->run_order) runs.push_back(StatusJson(run->GetStatus()));
      }
      return JsonResponse(200, nlohmann::json{{"runs", std::move(runs)}}.dump(), route);
    }
    auto run = Find(run_id);
    if (!run) return JsonResponse(404, ErrorJson("no run '" + run_id + "'"), route);
    const RunStatus status = run->GetStatus();
    if (!events) return JsonResponse(200, StatusJson(status).dump(), route);
    const auto after = ResumeAfter(request);
    if (!after) {
      return JsonResponse(
          400, ErrorJson("Last-Event-ID (or last_event_id) must be a decimal event seq"), route);
    }
    if (*after > status.last_seq) {
      return JsonResponse(
          400,
          ErrorJson("Last-Event-ID " + std::to_string(*after) + " is beyond the run's last event " +
                    std::to_string(status.last_seq)),
          route);
    }
    if (IsEnded(status.state) && *after == status.last_seq) {
      HttpResponse done;  // the run ended and nothing follows: EventSource stops reconnecting
      done.status = 204;
      done.route = route;
      return done;
    }
    HttpResponse response;
    response.stream = std::make_unique<RunEventStream>(run, *after);
    response.route = route;
    return response;
  }

  /// Answers every request waiting on the control socket.
  void ServeControl() {
    for (;;) {
      std::vector<zmq::message_t> frames;
      if (!TryReceive(control, &frames)) return;
      if (frames.size() < 2) continue;  // an identity alone: nothing to answer
      // [identity, "", request] from DEALER/REQ clients; [identity, request] is accepted too.
      const bool delimited = frames.size() >= 3 && frames[1].size() == 0;
      const std::size_t first = delimited ? 2 : 1;
      Reply reply;
      if (frames.size() != first + 1) {
        bad_requests.fetch_add(1, std::memory_order_relaxed);
        reply = Fail("", ReplyError::kMalformed,
                     "a request is one frame (after the empty delimiter), got " +
                         std::to_string(frames.size() - first));
      } else {
        reply = Handle(frames[first].to_string_view());
      }
      const std::string encoded = EncodeReply(reply);
      (void)control.send(frames[0], zmq::send_flags::sndmore | zmq::send_flags::dontwait);
      if (delimited) (void)control.send(zmq::message_t(), zmq::send_flags::sndmore);
      (void)control.send(zmq::buffer(encoded), zmq::send_flags::dontwait);
    }
  }

  // --- CURVE ----------------------------------------------------------------------------------

  /// The ZAP handler (RFC 27): allows CURVE clients whose public key is on the allowlist and
  /// refuses everything else, including requests it cannot parse.
  void ZapLoop() {
    while (!zap_stop) {
      std::vector<zmq::message_t> frames;
      if (!WaitReadable(zap, std::chrono::milliseconds(50)) || !TryReceive(zap, &frames)) continue;
      // version, request id, domain, address, identity, mechanism, credentials...
      const std::string request_id = frames.size() > 1 ? frames[1].to_string() : "";
      bool allowed = frames.size() >= 7 && frames[0].to_string() == "1.0" &&
                     frames[5].to_string() == "CURVE" && frames[6].size() == 32 &&
                     allowlist.count(frames[6].to_string()) > 0;
      if (!allowed) auth_failures.fetch_add(1, std::memory_order_relaxed);
      std::array<zmq::const_buffer, 6> reply = {
          zmq::str_buffer("1.0"),
          zmq::buffer(request_id),
          allowed ? zmq::str_buffer("200") : zmq::str_buffer("400"),
          allowed ? zmq::str_buffer("OK") : zmq::str_buffer("key not on the allowlist"),
          zmq::str_buffer(""),
          zmq::str_buffer("")};
      (void)zmq::send_multipart(zap, reply);
    }
  }

  Status SetUpCurve() {
    if (options.curve_secret_file.empty() != options.curve_allowlist_file.empty()) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "CURVE needs both a secret key file and an allowlist file");
    }
    if (options.curve_secret_file.empty()) return {};
    if (zmq_has("curve") == 0) {
      return MakeError(ErrorCode::kUnsupported, "this libzmq was built without CURVE");
    }
    MEWM_TRY(const std::string secret, ReadCurveKey(options.curve_secret_file));
    MEWM_TRY(allowlist, ReadAllowlist(options.curve_allowlist_file));
    char public_z85[41];
    if (zmq_curve_public(public_z85, secret.c_str()) != 0) {
      return MakeError(ErrorCode::kCorruptData,
                       "'" + options.curve_secret_file + "' is not a CURVE secret key");
    }
    public_key = public_z85;
    // The handler is bound before any socket so no connection is ever accepted without it.
    zap = zmq::socket_t(context, zmq::socket_type::rep);
    zap.bind("inproc://zeromq.zap.01");
    zap_thread = std::thread([this] { ZapLoop(); });
    auto publisher = pub.Lock();  // set up before any thread publishes
    for (zmq::socket_t* socket : {&control, &publisher->socket}) {
      socket->set(zmq::sockopt::curve_server, 1);
      socket->set(zmq::sockopt::curve_secretkey, secret);
      socket->set(zmq::sockopt::zap_domain, "mewm");
    }
    return {};
  }
};

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Server::~Server() = default;

Expected<std::unique_ptr<Server>> Server::Create(const ServerOptions& options, RunFunction run) {
  if (options.limits.max_patients < 0 || options.limits.max_beam_samples < 0 ||
      !(options.limits.max_seconds >= 0.0)) {
    return MakeError(ErrorCode::kInvalidArgument, "admission limits must be >= 0 (0 = none)");
  }
  if (options.queue_capacity < 1 || options.send_hwm < 0 || options.heartbeat_ms < 1 ||
      options.snapshot_page < 1 || options.max_event_streams < 1 || options.stream_stall_ms < 1 ||
      options.stream_keepalive_ms < 1) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "queue capacity, heartbeat, snapshot page and the event-stream limits must "
                     "be >= 1, the high-water mark >= 0");
  }
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->run_fn = std::move(run);
  try {
    impl->pub.Lock()->socket = zmq::socket_t(impl->context, zmq::socket_type::pub);
    if (!options.control_endpoint.empty()) {
      impl->control = zmq::socket_t(impl->context, zmq::socket_type::router);
    }
    MEWM_RETURN_IF_ERROR(impl->SetUpCurve());  // on both sockets, before they bind
    {
      auto publisher = impl->pub.Lock();
      zmq::socket_t& events = publisher->socket;
      events.set(zmq::sockopt::sndhwm, options.send_hwm);
      events.set(zmq::sockopt::xpub_nodrop, 1);  // EAGAIN at the HWM: drops are counted
      events.set(zmq::sockopt::maxmsgsize, std::int64_t(options.hard_max_message_bytes));
      events.set(zmq::sockopt::linger, options.linger_ms);
      events.bind(options.event_endpoint);
      impl->event_ep = BoundEndpoint(events);
    }
    if (impl->control) {
      impl->control.set(zmq::sockopt::maxmsgsize, std::int64_t(options.hard_max_message_bytes));
      impl->control.set(zmq::sockopt::linger, options.linger_ms);
      impl->control.bind(options.control_endpoint);
      impl->control_ep = BoundEndpoint(impl->control);
    }
  } catch (const zmq::error_t& e) {
    return MakeError(ErrorCode::kIo, std::string("cannot open the server sockets (") +
                                         options.control_endpoint + ", " + options.event_endpoint +
                                         "): " + e.what());
  }
  if (options.metrics_port >= 0) {
    HttpLimits limits;
    if (!options.http_token_file.empty()) {
      MEWM_TRY(limits.token, ReadTokenFile(options.http_token_file));
    } else if (!IsLoopback(options.metrics_address)) {
      LogWarn("the HTTP port listens on " + options.metrics_address +
              " without a bearer token (--http-token-file): anyone who reaches it can read every "
              "run's events");
    }
    limits.max_streams = std::size_t(options.max_event_streams);
    limits.stall_timeout = std::chrono::milliseconds(options.stream_stall_ms);
    limits.keepalive = std::chrono::milliseconds(options.stream_keepalive_ms);
    Impl* raw = impl.get();
    MEWM_TRY(impl->http,
             HttpServer::Start(
                 options.metrics_address, options.metrics_port, std::move(limits),
                 [raw](const HttpRequest& r) { return raw->HandleHttp(r); }, &impl->http_counters));
  }
  Impl* raw = impl.get();
  impl->log_thread = std::thread([raw] {
    ::pthread_setname_np(::pthread_self(), "mewm-log");  // names show in top -H and perf
    raw->LogLoop();
  });
  if (options.recover_runs) raw->RecoverRuns();
  impl->worker = std::thread([raw] {
    ::pthread_setname_np(::pthread_self(), "mewm-run");
    raw->WorkerLoop();
  });
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

Status Server::Serve() {
  Impl& m = *impl_;
  bool shutting_down = false;
  int cancelled_runs = 0;
  const auto heartbeat_ns = std::int64_t(m.options.heartbeat_ms) * 1000000;
  m.serving = true;
  for (;;) {
    const bool idle_exit = [&] {
      if (!m.options.exit_when_idle) return false;
      auto t = m.table.Lock();
      return t->queue.empty() && !t->active;
    }();
    if ((m.stop.load() || idle_exit) && !shutting_down) {
      shutting_down = true;
      std::deque<std::shared_ptr<RunRecord>> queued;
      {
        auto t = m.table.Lock();
        t->accepting = false;
        t->worker_stop = true;
        queued.swap(t->queue);
        if (t->active && !m.options.finish_on_shutdown) {
          t->active->cancel = true;
          ++cancelled_runs;
        }
      }
      m.runs_cv.notify_all();
      for (auto& run : queued) {
        if (auto cancelled = m.Append(run, scenarios::RunCancelled{0}); !cancelled) {
          LogWarn("cannot record the cancel of " + run->id + ": " + cancelled.error().message);
        }
        ++cancelled_runs;
      }
    }
    if (shutting_down) {
      auto t = m.table.Lock();
      if (!t->active && t->queue.empty()) break;
    }
    // Keep answering status and snapshots while a run drains.
    if (m.control) {
      if (WaitReadable(m.control, std::chrono::milliseconds(50))) m.ServeControl();
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (SteadyNs() - m.last_publish_ns.load(std::memory_order_relaxed) >= heartbeat_ns) {
      Heartbeat beat;
      {
        auto t = m.table.Lock();
        beat = {t->active ? t->active->id : "", int(t->queue.size()), {}};
        const std::int64_t recent = SteadyNs() - 60'000'000'000;
        for (auto it = t->run_order.rbegin();
             it != t->run_order.rend() && beat.recent_runs.size() < 16; ++it) {
          if ((*it)->last_event_ns.load(std::memory_order_relaxed) < recent) continue;
          beat.recent_runs.push_back({(*it)->id, (*it)->GetStatus().last_seq});
        }
      }
      m.PublishServer(beat);
    }
  }
  m.serving = false;
  if (m.worker.joinable()) m.worker.join();
  m.Flush();
  m.PublishServer(ServerClosing{m.stop.load() ? "shutdown" : "idle", cancelled_runs});
  return {};
}

void Server::Stop() { impl_->stop.store(true); }

Expected<std::string> Server::SubmitLocal(const scenarios::ScenarioSpec& spec,
                                          const scenarios::RunOptions& options,
                                          scenarios::EventSink* extra_sink) {
  auto run = std::make_shared<RunRecord>();
  run->spec = spec;
  run->options = options;
  run->extra = extra_sink;
  run->id = options.run_id.empty() ? scenarios::DefaultRunId(spec) : options.run_id;
  run->trace_id = run->id;
  run->out = options.output_dir.empty() ? spec.output : options.output_dir;
  if (options.resume) {
    // Events the server itself adds (a failure to start) continue the earlier sequence.
    if (auto earlier = scenarios::ReadEvents(run->log_path()); earlier && !earlier->empty()) {
      run->queued_seq.store(earlier->back().seq);
    }
  }
  {
    auto t = impl_->table.Lock();
    if (!t->accepting) {
      return MakeError(ErrorCode::kCancelled, "the server is shutting down");
    }
    if (t->runs.count(run->id)) {
      return MakeError(ErrorCode::kInvalidArgument, "run '" + run->id + "' is already known");
    }
    t->runs[run->id] = run;
    t->run_order.push_back(run);
    t->queue.push_back(run);
  }
  impl_->runs_cv.notify_all();
  return run->id;
}

const std::string& Server::control_endpoint() const { return impl_->control_ep; }
const std::string& Server::event_endpoint() const { return impl_->event_ep; }
int Server::metrics_port() const { return impl_->http ? impl_->http->port() : -1; }
const std::string& Server::public_key() const { return impl_->public_key; }
Health Server::health() const { return impl_->MakeHealth(); }
std::string Server::HandleRequestForTest(std::string_view request) {
  return EncodeReply(impl_->Handle(request));
}

Expected<scenarios::RunSummary> Server::last_summary() const {
  auto t = impl_->table.Lock();
  if (!t->last_summary) return MakeError(ErrorCode::kNotFound, "no run has finished");
  return *t->last_summary;
}

// --- keys ---------------------------------------------------------------------------------------

Expected<CurveKeyPair> GenerateCurveKeyPair() {
  char public_key[41], secret_key[41];
  if (zmq_curve_keypair(public_key, secret_key) != 0) {
    return MakeError(ErrorCode::kUnsupported, "this libzmq cannot make CURVE keys");
  }
  return CurveKeyPair{public_key, secret_key};
}

namespace {

/// Creates `path` with exactly `mode` from the start (O_CREAT | O_EXCL: never another file, never
/// looser permissions for a moment) and writes `text` to it. EEXIST is kInvalidArgument; a file
/// system that cannot keep the mode (fstat disagrees) is kIo and the file is removed.
Status WriteNewFile(const std::string& path, const std::string& text, mode_t mode) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0) {
    if (errno == EEXIST) return MakeError(ErrorCode::kInvalidArgument, "'" + path + "' exists");
    return MakeError(ErrorCode::kIo, "cannot create '" + path + "': " + std::strerror(errno));
  }
  const auto fail = [&](const std::string& what) {
    const std::string reason = std::strerror(errno);
    ::close(fd);
    ::unlink(path.c_str());
    return MakeError(ErrorCode::kIo, "cannot " + what + " '" + path + "': " + reason);
  };
  // The umask can only narrow `mode`; set it exactly, then check the file system kept it.
  struct stat st {};
  if (::fchmod(fd, mode) != 0) return fail("set the mode of");
  if (::fstat(fd, &st) != 0) return fail("check");
  if ((st.st_mode & 07777) != mode) {
    errno = EPERM;
    return fail("keep mode " + std::to_string(mode >> 6) + std::to_string((mode >> 3) & 7) +
                std::to_string(mode & 7) + " on");
  }
  for (std::size_t written = 0; written < text.size();) {
    const ssize_t n = ::write(fd, text.data() + written, text.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return fail("write");
    written += std::size_t(n);
  }
  if (::fsync(fd) != 0) return fail("sync");
  if (::close(fd) != 0) {
    ::unlink(path.c_str());
    return MakeError(ErrorCode::kIo, "cannot write '" + path + "': " + std::strerror(errno));
  }
  return {};
}

/// WriteNewFile, or with `overwrite` a new temporary file renamed over `path`.
Status WriteKeyFile(const std::string& path, const std::string& text, mode_t mode, bool overwrite) {
  if (!overwrite) return WriteNewFile(path, text, mode);
  const std::string temp = path + ".tmp-" + std::to_string(::getpid());
  ::unlink(temp.c_str());  // one this process left behind
  MEWM_RETURN_IF_ERROR(WriteNewFile(temp, text, mode));
  if (::rename(temp.c_str(), path.c_str()) != 0) {
    const std::string reason = std::strerror(errno);
    ::unlink(temp.c_str());
    return MakeError(ErrorCode::kIo, "cannot replace '" + path + "': " + reason);
  }
  return {};
}

}  // namespace

Status WriteCurveKeyPair(const CurveKeyPair& keys, const std::string& base, bool overwrite) {
  const std::string secret_path = base + ".key", public_path = base + ".pub";
  if (!overwrite) {
    for (const std::string& path : {secret_path, public_path}) {
      struct stat st {};
      if (::lstat(path.c_str(), &st) == 0) {
        return MakeError(ErrorCode::kInvalidArgument,
                         "'" + path +
                             "' already exists: choose another BASE, or replace the key pair "
                             "with --force (then give the new public key to every peer)");
      }
    }
  }
  MEWM_RETURN_IF_ERROR(
      WriteKeyFile(secret_path, "# mewm CURVE secret key: keep private\n" + keys.secret_key + "\n",
                   0600, overwrite));
  if (Status written = WriteKeyFile(
          public_path, "# mewm CURVE public key\n" + keys.public_key + "\n", 0644, overwrite);
      !written) {
    if (!overwrite) ::unlink(secret_path.c_str());  // the half of a pair this call created
    return written;
  }
  return {};
}

Expected<std::string> ReadCurveKey(const std::string& path) {
  MEWM_TRY(const std::vector<std::string> keys, ReadKeyLines(path));
  if (keys.empty()) return MakeError(ErrorCode::kCorruptData, "'" + path + "' holds no CURVE key");
  return keys.front();
}

}  // namespace mewm::streaming

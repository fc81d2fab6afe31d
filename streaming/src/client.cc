// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/streaming/client.h"

#include <unistd.h>

#include <chrono>
#include <map>
#include <set>
#include <zmq.hpp>
#include <zmq_addon.hpp>

#include "mewm/core/mutex_guarded.h"
#include "zmq_util.h"

namespace mewm::streaming {
namespace {

using Clock = std::chrono::steady_clock;

/// The largest message a client takes from a server; a larger one disconnects the server before
/// it is held in memory. A reply is decoded within 32 MiB of pointed-to data (DecodeLimits), so
/// 64 MiB holds any reply this client can read. An event frame may be a plan's `.vdb` volume,
/// which for a whole-abdomen CT at 1 mm is tens of MB.
constexpr std::int64_t kMaxReplyBytes = std::int64_t(64) << 20;
constexpr std::int64_t kMaxEventFrameBytes = std::int64_t(1) << 30;

template <typename T>
Expected<T> Expect(Expected<Reply> reply, const char* what) {
  if (!reply) return reply.error();
  if (const auto* error = std::get_if<ErrorReply>(&reply->body)) return ToError(*error);
  if (auto* value = std::get_if<T>(&reply->body)) return std::move(*value);
  return MakeError(ErrorCode::kCorruptData, std::string("the server answered a ") + what +
                                                " request with the wrong kind of reply");
}

}  // namespace

Error ToError(const ErrorReply& reply) {
  ErrorCode code = ErrorCode::kInternal;
  switch (reply.code) {
    case ReplyError::kInvalidScenario:
    case ReplyError::kForbiddenPath:
    case ReplyError::kNotCancellable:
    case ReplyError::kOverLimit:
      code = ErrorCode::kInvalidArgument;
      break;
    case ReplyError::kUnknownRun:
      code = ErrorCode::kNotFound;
      break;
    case ReplyError::kMalformed:
    case ReplyError::kTooLarge:
      code = ErrorCode::kCorruptData;
      break;
    case ReplyError::kWrongVersion:
      code = ErrorCode::kMismatch;
      break;
    case ReplyError::kQueueFull:
    case ReplyError::kShuttingDown:
      code = ErrorCode::kUnsupported;
      break;
    case ReplyError::kInternal:
      code = ErrorCode::kInternal;
      break;
  }
  return Error{code, std::string("server: ") + ToString(reply.code) + ": " + reply.message};
}

struct Client::Impl {
  ClientOptions options;
  zmq::context_t context{1};
  zmq::socket_t dealer;
  std::uint64_t requests = 0;
  MutexGuarded<WatchStats> stats;  ///< Watch() counts; stats() copies them from another thread

  void Secure(zmq::socket_t& socket) const {
    if (options.server_public_key.empty()) return;
    socket.set(zmq::sockopt::curve_serverkey, options.server_public_key);
    socket.set(zmq::sockopt::curve_publickey, options.public_key);
    socket.set(zmq::sockopt::curve_secretkey, options.secret_key);
  }

  void OpenDealer() {
    dealer = zmq::socket_t(context, zmq::socket_type::dealer);
    dealer.set(zmq::sockopt::linger, 0);
    dealer.set(zmq::sockopt::maxmsgsize, kMaxReplyBytes);
    Secure(dealer);
    dealer.connect(options.control_endpoint);
  }

  zmq::socket_t OpenSubscriber(const std::string& run_id) {
    zmq::socket_t sub(context, zmq::socket_type::sub);
    sub.set(zmq::sockopt::linger, 0);
    sub.set(zmq::sockopt::rcvhwm, options.receive_hwm);
    sub.set(zmq::sockopt::maxmsgsize, kMaxEventFrameBytes);
    Secure(sub);
    sub.set(zmq::sockopt::subscribe, run_id.empty() ? std::string("run/") : RunTopicPrefix(run_id));
    sub.set(zmq::sockopt::subscribe, "server/");
    sub.connect(options.event_endpoint);
    return sub;
  }

  Expected<Reply> Exchange(const std::string& bytes, const std::string& request_id) {
    try {
      std::array<zmq::const_buffer, 2> frames = {zmq::const_buffer(), zmq::buffer(bytes)};
      if (!zmq::send_multipart(dealer, frames, zmq::send_flags::dontwait)) {
        OpenDealer();
        return MakeError(ErrorCode::kIo, "cannot send to " + options.control_endpoint);
      }
      const auto deadline = Clock::now() + std::chrono::milliseconds(options.request_timeout_ms);
      for (;;) {
        const auto left =
            std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
        if (left.count() <= 0) {
          OpenDealer();  // Lazy Pirate: a late reply must not answer the next request
          return MakeError(ErrorCode::kIo,
                           "no reply from " + options.control_endpoint + " within " +
                               std::to_string(options.request_timeout_ms) +
                               " ms (is the server running? with CURVE: is this client's key on "
                               "its allowlist?)");
        }
        std::vector<zmq::message_t> reply;
        if (!WaitReadable(dealer, left) || !TryReceive(dealer, &reply)) continue;
        if (reply.size() != 2 || reply[0].size() != 0) continue;  // not a reply to us
        auto decoded = DecodeReply(reply[1].to_string_view());
        if (!decoded) return decoded.error().WithContext("reply from " + options.control_endpoint);
        // A reply to an earlier request that timed out is skipped; "" answers undecodable input.
        if (!decoded->request_id.empty() && decoded->request_id != request_id) continue;
        return decoded;
      }
    } catch (const zmq::error_t& e) {
      return MakeError(ErrorCode::kIo, std::string("control socket: ") + e.what());
    }
  }

  Expected<Reply> Call(Request request) {
    request.request_id = "c" + std::to_string(::getpid()) + "-" + std::to_string(++requests);
    return Exchange(EncodeRequest(request), request.request_id);
  }

  Expected<SnapshotReply> Snapshot(const std::string& run_id, std::uint64_t after,
                                   std::uint32_t max_events) {
    return Expect<SnapshotReply>(Call(Request{"", "", SnapshotRequest{run_id, after, max_events}}),
                                 "snapshot");
  }

  class Watcher;
};

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Client::~Client() = default;

Expected<std::unique_ptr<Client>> Client::Connect(const ClientOptions& options) {
  if (!options.server_public_key.empty() &&
      (options.public_key.size() != 40 || options.secret_key.size() != 40)) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "CURVE needs this client's public and secret keys (z85, 40 characters)");
  }
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  try {
    impl->OpenDealer();
  } catch (const zmq::error_t& e) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "cannot connect to " + options.control_endpoint + ": " + e.what());
  }
  return std::unique_ptr<Client>(new Client(std::move(impl)));
}

Expected<Reply> Client::Call(const Request& request) { return impl_->Call(request); }
Expected<Reply> Client::CallRaw(const std::string& bytes) { return impl_->Exchange(bytes, ""); }

Expected<Submitted> Client::Submit(const SubmitRequest& submit) {
  return Expect<Submitted>(Call(Request{"", "", submit}), "submit");
}
Expected<RunStatus> Client::Cancel(const std::string& run_id) {
  auto reply = Expect<CancelReply>(Call(Request{"", "", CancelRequest{run_id}}), "cancel");
  if (!reply) return reply.error();
  return reply->run;
}
Expected<RunStatus> Client::GetStatus(const std::string& run_id) {
  return Expect<RunStatus>(Call(Request{"", "", StatusRequest{run_id}}), "status");
}
Expected<std::vector<RunStatus>> Client::ListRuns() {
  auto reply = Expect<RunList>(Call(Request{"", "", ListRunsRequest{}}), "list");
  if (!reply) return reply.error();
  return reply->runs;
}
Expected<Health> Client::GetHealth() {
  return Expect<Health>(Call(Request{"", "", HealthRequest{}}), "health");
}
Expected<SnapshotReply> Client::Snapshot(const std::string& run_id, std::uint64_t after_seq,
                                         std::uint32_t max_events) {
  return impl_->Snapshot(run_id, after_seq, max_events);
}
WatchStats Client::stats() const { return *impl_->stats.Lock(); }

/// One Watch() call: what it has delivered per run, and the steps of the Clone pattern.
class Client::Impl::Watcher {
 public:
  Watcher(Client& client, Impl& m, const WatchOptions& options,
          const std::function<bool(const RunEvent&, const std::string& volume)>& on_event,
          const std::function<void(const ServerEvent&)>& on_server)
      : client_(client), m_(m), options_(options), on_event_(on_event), on_server_(on_server) {}

  Status Run();

 private:
  void Deliver(const RunEvent& e, const std::string& volume, bool history);
  Status Heal(const std::string& run_id);
  Status HealAll();
  bool Done() const;
  Status Handle(std::vector<zmq::message_t>& frames);
  Status HandleServer(const ServerEvent& server);
  Status HandleRun(const RunEvent& e, std::vector<zmq::message_t>& frames);
  zmq::socket_t Subscribe();

  Client& client_;
  Impl& m_;
  const WatchOptions& options_;
  const std::function<bool(const RunEvent&, const std::string& volume)>& on_event_;
  const std::function<void(const ServerEvent&)>& on_server_;
  std::map<std::string, std::uint64_t> last_;  // per run: the last seq delivered
  std::set<std::string> ended_;
  bool halted_ = false;                             // on_event asked to stop
  bool server_closed_ = false;                      // every-run watch: `server closing` arrived
  std::vector<std::vector<zmq::message_t>> early_;  // received while subscribing
};

void Client::Impl::Watcher::Deliver(const RunEvent& e, const std::string& volume, bool history) {
  last_[e.event.run_id] = e.event.seq;
  if (e.unknown_kind) {  // a newer server's event kind: keep the seq, show nothing
    ++m_.stats.Lock()->unknown;
    return;
  }
  if (scenarios::IsTerminal(e.event.body)) ended_.insert(e.event.run_id);
  ++m_.stats.Lock()->delivered;
  if (history) ++m_.stats.Lock()->from_history;
  if (!on_event_(e, volume)) halted_ = true;
}

/// Reads a run's history after the last delivered event, page by page, until a page says it is
/// the last or the watch is stopped. A page that announces more but brings nothing new is an
/// error: a server that keeps sending it would otherwise be asked again forever.
Status Client::Impl::Watcher::Heal(const std::string& run_id) {
  for (;;) {
    if (Done()) return {};
    const std::uint64_t before = last_[run_id];
    auto snapshot = m_.Snapshot(run_id, last_[run_id], 0);
    if (!snapshot) return snapshot.error();
    for (const std::string& bytes : snapshot->events) {
      MEWM_TRY(Envelope envelope, DecodeEnvelope(bytes));
      const auto* e = std::get_if<RunEvent>(&envelope);
      if (e == nullptr || e->event.run_id != run_id) {
        return MakeError(ErrorCode::kCorruptData,
                         "snapshot of " + run_id + " holds a foreign event");
      }
      if (e->event.seq <= last_[run_id]) continue;
      if (e->event.seq != last_[run_id] + 1) {
        return MakeError(ErrorCode::kCorruptData, "gap in the server's history of " + run_id +
                                                      ": after seq " +
                                                      std::to_string(last_[run_id]) + " comes " +
                                                      std::to_string(e->event.seq));
      }
      Deliver(*e, "", true);
      if (halted_) return {};
    }
    if (!snapshot->more || snapshot->events.empty()) return {};
    if (last_[run_id] == before) {
      return MakeError(ErrorCode::kCorruptData,
                       "the server's history of " + run_id + " announces more events after seq " +
                           std::to_string(before) + " but its page holds none after it");
    }
  }
}

Status Client::Impl::Watcher::HealAll() {
  if (!options_.run_id.empty()) return Heal(options_.run_id);
  for (const auto& [run_id, seq] : last_) {
    if (!ended_.count(run_id)) MEWM_RETURN_IF_ERROR(Heal(run_id));
  }
  return {};
}

bool Client::Impl::Watcher::Done() const {
  return halted_ || server_closed_ || (options_.stop && options_.stop()) ||
         (!options_.run_id.empty() && options_.until_end && ended_.count(options_.run_id));
}

/// One message from the SUB socket: {} to go on; an error ends the watch.
Status Client::Impl::Watcher::Handle(std::vector<zmq::message_t>& frames) {
  if (frames.size() < 2) {
    return MakeError(ErrorCode::kCorruptData, "event message without an envelope frame");
  }
  MEWM_TRY(Envelope envelope, DecodeEnvelope(frames[1].to_string_view()));
  if (const auto* server = std::get_if<ServerEvent>(&envelope)) return HandleServer(*server);
  return HandleRun(std::get<RunEvent>(envelope), frames);
}

Status Client::Impl::Watcher::HandleServer(const ServerEvent& server) {
  ++m_.stats.Lock()->heartbeats;
  if (on_server_) on_server_(server);
  if (const auto* beat = std::get_if<Heartbeat>(&server.body)) {
    // A run further along than what we have, with nothing on the way: a missed tail.
    // Watching every run, only runs already followed (or the active one) are healed, so
    // recently ended runs are not replayed.
    for (const RunSeq& run : beat->recent_runs) {
      const bool followed = options_.run_id.empty()
                                ? last_.count(run.run_id) > 0 || run.run_id == beat->active_run
                                : run.run_id == options_.run_id;
      if (!followed || ended_.count(run.run_id) || run.last_seq <= last_[run.run_id]) continue;
      ++m_.stats.Lock()->gaps;
      if (auto healed = Heal(run.run_id); !healed && healed.error().code != ErrorCode::kIo) {
        return healed;
      }
    }
  }
  if (std::holds_alternative<ServerClosing>(server.body)) {
    if (options_.run_id.empty()) {  // following every run: the server's end is the watch's
      server_closed_ = true;
      return {};
    }
    return MakeError(ErrorCode::kCancelled, "the server closed (" +
                                                std::get<ServerClosing>(server.body).reason +
                                                ") before the watch ended");
  }
  return {};
}

Status Client::Impl::Watcher::HandleRun(const RunEvent& e, std::vector<zmq::message_t>& frames) {
  const std::string& run_id = e.event.run_id;
  if (!options_.run_id.empty() && run_id != options_.run_id) return {};
  std::string volume;
  if (e.volume) {
    if (frames.size() != 3 || frames[2].size() != e.volume->size_bytes ||
        Sha256(frames[2].to_string_view()) != e.volume->sha256) {
      return MakeError(ErrorCode::kCorruptData, "volume frame of " + run_id + " seq " +
                                                    std::to_string(e.event.seq) +
                                                    " does not match its size and SHA-256");
    }
    volume = frames[2].to_string();
  } else if (frames.size() != 2) {
    return MakeError(ErrorCode::kCorruptData, "unexpected frames after the envelope of " + run_id +
                                                  " seq " + std::to_string(e.event.seq));
  }
  const std::uint64_t have = last_.count(run_id) ? last_[run_id] : 0;
  if (e.event.seq <= have) {
    ++m_.stats.Lock()->duplicates;
    return {};
  }
  if (e.event.seq > have + 1) {
    if (last_.count(run_id))
      ++m_.stats.Lock()->gaps;  // a run seen for the first time is a late join
    last_[run_id] = have;
    if (auto healed = Heal(run_id); !healed) {
      return MakeError(ErrorCode::kCorruptData,
                       "gap in " + run_id + ": after seq " + std::to_string(have) + " came " +
                           std::to_string(e.event.seq) +
                           ", and the server could not supply the missing events (" +
                           healed.error().message + ")");
    }
    if (halted_ || e.event.seq <= last_[run_id]) return {};  // the history already had it
    if (e.event.seq != last_[run_id] + 1) {
      return MakeError(ErrorCode::kCorruptData, "gap in " + run_id +
                                                    ": the server's history ends at seq " +
                                                    std::to_string(last_[run_id]) + " but seq " +
                                                    std::to_string(e.event.seq) + " was published");
    }
  }
  Deliver(e, volume, false);
  return {};
}

/// Subscribes, then waits for the first message (any: a heartbeat will do) so the subscription
/// is known to be live before the history is read. Otherwise the events published between the
/// snapshot and the subscription taking effect would be missed with nothing after them to
/// reveal the gap. Messages that arrive meanwhile are kept for after the history.
zmq::socket_t Client::Impl::Watcher::Subscribe() {
  zmq::socket_t sub = m_.OpenSubscriber(options_.run_id);
  std::vector<zmq::message_t> frames;
  if (WaitReadable(sub, std::chrono::milliseconds(m_.options.liveness_ms)) &&
      TryReceive(sub, &frames)) {
    early_.push_back(std::move(frames));
  }
  return sub;
}

Status Client::Impl::Watcher::Run() {
  try {
    zmq::socket_t sub = Subscribe();
    if (options_.run_id.empty()) {
      // A server that is not up yet has no runs to catch up on: its runs will arrive live.
      auto runs = client_.ListRuns();
      if (!runs && runs.error().code != ErrorCode::kIo) return runs.error();
      for (const RunStatus& run : runs ? *runs : std::vector<RunStatus>{}) {
        if (!IsEnded(run.state)) last_[run.run_id] = 0;
      }
    }
    MEWM_RETURN_IF_ERROR(HealAll());
    auto last_traffic = Clock::now();
    while (!Done()) {
      for (auto& frames : early_) MEWM_RETURN_IF_ERROR(Handle(frames));
      early_.clear();
      if (Done()) break;
      // Drain what is waiting first; poll only when the socket is empty (one syscall fewer per
      // event at high rates).
      std::vector<zmq::message_t> frames;
      if (TryReceive(sub, &frames)) {
        last_traffic = Clock::now();
        MEWM_RETURN_IF_ERROR(Handle(frames));
        continue;
      }
      if (!WaitReadable(sub, std::chrono::milliseconds(50))) {
        if (Clock::now() - last_traffic > std::chrono::milliseconds(m_.options.liveness_ms)) {
          // Silence: reopen the subscription, then catch up from the history.
          sub = Subscribe();
          ++m_.stats.Lock()->reconnects;
          last_traffic = Clock::now();
          if (auto healed = HealAll(); !healed) {
            if (healed.error().code != ErrorCode::kIo) return healed;  // server away: keep trying
          }
        }
        continue;
      }
    }
  } catch (const zmq::error_t& e) {
    return MakeError(ErrorCode::kIo, std::string("event socket: ") + e.what());
  }
  return {};
}

Status Client::Watch(
    const WatchOptions& options,
    const std::function<bool(const RunEvent&, const std::string& volume)>& on_event,
    const std::function<void(const ServerEvent&)>& on_server) {
  return Impl::Watcher(*this, *impl_, options, on_event, on_server).Run();
}

}  // namespace mewm::streaming

// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The server and client over real sockets on 127.0.0.1. Runs are scripted (a RunFunction that
// writes events.jsonl like the Runner) so a test controls where a run pauses; one test plans real
// patients. Waits are on events, with bounds; no sleep is used to synchronise.
#include "mewm/streaming/server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <sstream>
#include <thread>
#include <zmq.hpp>
#include <zmq_addon.hpp>

#include "../../streaming/src/metrics.h"  // RenderPrometheus, private to the module
#include "../scenarios/planning_fixture.h"
#include "mewm/core/file_util.h"
#include "mewm/streaming/admission.h"
#include "mewm/streaming/client.h"
#include "mewm/streaming/http_server.h"

namespace mewm::streaming {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using namespace std::string_literals;
using scenarios::Event;
using scenarios::EventBody;

/// Lets a test hold a scripted run at a chosen event until it says go.
class Gate {
 public:
  /// Called by the run: marks the gate reached and waits (at most 30 s) to be released.
  void Reach() {
    std::unique_lock<std::mutex> lock(mutex_);
    reached_ = true;
    cv_.notify_all();
    cv_.wait_for(lock, 30s, [&] { return released_; });
  }
  bool WaitReached() {
    std::unique_lock<std::mutex> lock(mutex_);
    return cv_.wait_for(lock, 30s, [&] { return reached_; });
  }
  void Release() {
    std::lock_guard<std::mutex> lock(mutex_);
    released_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  bool reached_ = false, released_ = false;
};

struct Script {
  int patients = 2;
  int candidates = 5;
  std::size_t payload = 0;  ///< > 0: each candidate is a proposal event with this much text
  std::chrono::milliseconds work{0};  ///< simulated model work per candidate (a "batch")
  int pause_after = -1;               ///< hold at this many events, until the gate opens
  std::shared_ptr<Gate> gate;
  std::function<bool()> enough;  ///< when it returns true, a patient's candidates stop early
};

/// A script that holds its run at event `events` until `gate` opens.
Script PausedAt(int events, const std::shared_ptr<Gate>& gate) {
  Script script;
  script.pause_after = events;
  script.gate = gate;
  return script;
}

/// A RunFunction that behaves like the Runner: seq continued on resume, cancellation polled
/// between batches, events.jsonl written unless the caller keeps it.
RunFunction Scripted(Script script) {
  return [script](const scenarios::ScenarioSpec& spec, const scenarios::RunOptions& options,
                  scenarios::EventSink& sink) -> Expected<scenarios::RunSummary> {
    const std::string log_path = options.output_dir + "/events.jsonl";
    std::uint64_t seq = 0;
    if (options.resume && fs::exists(log_path)) {
      MEWM_TRY(auto earlier, scenarios::ReadEvents(log_path));
      if (!earlier.empty()) seq = earlier.back().seq;
    }
    std::unique_ptr<scenarios::JsonlSink> log;
    scenarios::FanoutSink out;
    if (options.write_event_log) {  // the server keeps the log itself
      MEWM_TRY(log, scenarios::JsonlSink::Open(log_path));
      out.Add(log.get());
    }
    out.Add(&sink);
    int emitted = 0;
    const auto emit = [&](EventBody body) -> Status {
      if (++emitted == script.pause_after && script.gate) script.gate->Reach();
      return out.Emit(Event{options.run_id, ++seq, scenarios::NowNs(), std::move(body)});
    };
    scenarios::RunSummary summary{options.run_id, options.output_dir, 0, 0, 0, false};
    MEWM_RETURN_IF_ERROR(
        emit(scenarios::RunStarted{spec.name, options.output_dir, spec.seed, script.patients, 0}));
    for (int p = 0; p < script.patients; ++p) {
      const std::string id = "P" + std::to_string(p);
      MEWM_RETURN_IF_ERROR(emit(scenarios::PatientStarted{id, p, script.patients}));
      for (int c = 0; c < script.candidates && !(script.enough && script.enough()); ++c) {
        if (options.cancelled && options.cancelled()) {
          MEWM_RETURN_IF_ERROR(emit(scenarios::RunCancelled{summary.finished}));
          summary.cancelled = true;
          return summary;
        }
        if (script.work.count() > 0) std::this_thread::sleep_for(script.work);
        if (options.stage_seconds) options.stage_seconds("dynamics", 0.001);
        if (script.payload > 0) {
          MEWM_RETURN_IF_ERROR(
              emit(scenarios::ProposalMade{id, {}, {}, std::string(script.payload, 'r')}));
        } else {
          MEWM_RETURN_IF_ERROR(emit(scenarios::CandidateEvaluated{
              id, "drug", c, {{"Epirubicin"}, 0.5 + 0.01 * c, 0.1}, false}));
        }
      }
      MEWM_RETURN_IF_ERROR(emit(scenarios::PlanDecided{id, {{"Epirubicin"}, 0.5, 0.1}, 20, ""}));
      MEWM_RETURN_IF_ERROR(emit(scenarios::PatientFinished{id, 8, 0, 8, 0.1}));
      ++summary.finished;
    }
    MEWM_RETURN_IF_ERROR(emit(scenarios::RunFinished{summary.finished, 0, 0.5}));
    return summary;
  };
}

std::vector<std::string> Json(const std::vector<Event>& events) {
  std::vector<std::string> out;
  for (const Event& e : events) out.push_back(scenarios::EventToJson(e));
  return out;
}

class ServerTest : public testing::VdbTest {
 protected:
  void SetUp() override { testing::WriteTestModels(dir_.path().string()); }

  void TearDown() override { StopServer(); }

  ServerOptions Options() const {
    ServerOptions options;
    options.control_endpoint = "tcp://127.0.0.1:*";
    options.event_endpoint = "tcp://127.0.0.1:*";
    options.results_root = dir_.File("results");
    options.scenario_base = dir_.path().string();
    options.heartbeat_ms = 50;
    options.backends = &testing::WorldBackends();
    return options;
  }

  void StartServer(const ServerOptions& options, RunFunction run) {
    auto server = Server::Create(options, std::move(run));
    ASSERT_TRUE(server) << server.error().message;
    server_ = std::move(*server);
    serve_thread_ = std::thread([this] { served_ = server_->Serve(); });
  }

  void StopServer() {
    if (!server_) return;
    server_->Stop();
    if (serve_thread_.joinable()) serve_thread_.join();
    server_.reset();
  }

  ClientOptions ClientOpts(int timeout_ms = 5000) const {
    ClientOptions options;
    options.control_endpoint = server_->control_endpoint();
    options.event_endpoint = server_->event_endpoint();
    options.request_timeout_ms = timeout_ms;
    options.liveness_ms = 2000;
    return options;
  }

  std::unique_ptr<Client> NewClient(int timeout_ms = 5000) {
    auto client = Client::Connect(ClientOpts(timeout_ms));
    EXPECT_TRUE(client) << client.error().message;
    return std::move(*client);
  }

  static std::string Toml(const std::string& name = "st", const std::string& extra = "") {
    return "[run]\nname = \"" + name + "\"\nseed = 3\noutput = \"runs\"\n" + extra +
           "\n[cohort]\nsource = \"synthetic\"\nn = 2\nseed = 4\nspacing_mm = 2.0\n" +
           testing::kTestModelsToml + "\n[planner]\nbeams = 2\nsamples = 2\n";
  }

  std::string SubmitOk(Client& client, const std::string& toml = Toml()) {
    auto submitted = client.Submit({toml, "", ""});
    EXPECT_TRUE(submitted) << submitted.error().message;
    return submitted ? submitted->run_id : "";
  }

  /// Watches one run to its end; returns the delivered events.
  std::vector<Event> WatchToEnd(Client& client, const std::string& run_id,
                                std::vector<std::string>* volumes = nullptr) {
    std::vector<Event> events;
    WatchOptions options;
    options.run_id = run_id;
    const Status watched = client.Watch(options, [&](const RunEvent& e, const std::string& v) {
      events.push_back(e.event);
      if (volumes && !v.empty()) volumes->push_back(v);
      return true;
    });
    EXPECT_TRUE(watched) << watched.error().message;
    return events;
  }

  std::vector<Event> Log(Client& client, const std::string& run_id) {
    auto status = client.GetStatus(run_id);
    EXPECT_TRUE(status);
    auto events = scenarios::ReadEvents(status->output_dir + "/events.jsonl");
    EXPECT_TRUE(events) << events.error().message;
    return events ? *events : std::vector<Event>{};
  }

  testing::TempDir dir_;
  std::unique_ptr<Server> server_;
  std::thread serve_thread_;
  Status served_;
};

TEST_F(ServerTest, SubmitStreamsEveryEventInOrderAndEndsFinished) {
  StartServer(Options(), Scripted({}));
  auto client = NewClient();
  const std::string id = SubmitOk(*client);
  const std::vector<Event> events = WatchToEnd(*client, id);
  ASSERT_FALSE(events.empty());
  for (std::size_t i = 0; i < events.size(); ++i) EXPECT_EQ(events[i].seq, i + 1);
  EXPECT_TRUE(std::holds_alternative<scenarios::RunAccepted>(events.front().body));
  EXPECT_TRUE(std::holds_alternative<scenarios::RunFinished>(events.back().body));
  EXPECT_EQ(Json(events), Json(Log(*client, id)));  // exactly what was written to disk
  auto status = client->GetStatus(id);
  ASSERT_TRUE(status);
  EXPECT_EQ(status->state, RunState::kFinished);
  EXPECT_EQ(status->patients_done, 2);
  EXPECT_EQ(status->last_seq, events.size());
  EXPECT_EQ(fs::path(status->output_dir).parent_path(), fs::path(dir_.File("results/runs")));
}

TEST_F(ServerTest, WatcherJoiningMidRunEndsWithThePublishersEventList) {
  auto gate = std::make_shared<Gate>();
  Script script = PausedAt(25, gate);
  script.candidates = 20;
  StartServer(Options(), Scripted(script));
  auto client = NewClient();
  const std::string id = SubmitOk(*client);
  ASSERT_TRUE(gate->WaitReached());
  auto watcher = NewClient();
  std::vector<Event> events;
  std::thread watch([&] { events = WatchToEnd(*watcher, id); });
  // Release once the watcher has the history: what follows arrives live.
  for (int i = 0; i < 500 && watcher->stats().delivered < 24; ++i)
    std::this_thread::sleep_for(10ms);
  gate->Release();
  watch.join();
  EXPECT_EQ(Json(events), Json(Log(*client, id)));
  EXPECT_GE(watcher->stats().from_history, 24u);
  EXPECT_GT(watcher->stats().delivered, watcher->stats().from_history);  // live part too
}

TEST_F(ServerTest, KilledWatcherRestartsAndRecoversEverything) {
  auto gate = std::make_shared<Gate>();
  Script script = PausedAt(40, gate);
  script.candidates = 30;
  StartServer(Options(), Scripted(script));
  auto client = NewClient();
  const std::string id = SubmitOk(*client);
  {
    // The first watcher dies after 10 events: its sockets close mid-stream.
    auto first = NewClient();
    WatchOptions options;
    options.run_id = id;
    int seen = 0;
    ASSERT_TRUE(
        first->Watch(options, [&](const RunEvent&, const std::string&) { return ++seen < 10; }));
    EXPECT_EQ(seen, 10);
  }
  ASSERT_TRUE(gate->WaitReached());
  auto second = NewClient();
  std::vector<Event> events;
  std::thread watch([&] { events = WatchToEnd(*second, id); });
  gate->Release();
  watch.join();
  EXPECT_EQ(Json(events), Json(Log(*client, id)));
}

TEST_F(ServerTest, EveryRunWatchFollowsNewRunsAndEndsWhenTheServerCloses) {
  StartServer(Options(), Scripted({}));
  auto watcher = NewClient();
  std::vector<Event> events;
  std::atomic<bool> live{false};
  Status watched;
  std::thread watch([&] {
    watched = watcher->Watch(
        {},
        [&](const RunEvent& e, const std::string&) {
          events.push_back(e.event);
          return true;
        },
        [&](const ServerEvent&) { live = true; });
  });
  for (int i = 0; i < 500 && !live; ++i) std::this_thread::sleep_for(10ms);  // subscribed
  auto client = NewClient();
  const std::string id = SubmitOk(*client);
  WatchToEnd(*client, id);
  const auto log = Log(*client, id);
  StopServer();  // publishes `server closing`: the every-run watch ends without an error
  watch.join();
  EXPECT_TRUE(watched) << watched.error().message;
  EXPECT_EQ(Json(events), Json(log));
}

/// A fake server on 127.0.0.1 for tests of the client against servers that misbehave: a ROUTER
/// that answers each request with `answer(request)` (the reply's bytes), and a PUB on which
/// `tick` may publish between polls. Its thread stops when the object is destroyed, or at
/// `deadline`, which also bounds the client's watch: a client that misses what the test expects
/// fails instead of waiting forever on a server that has gone quiet.
class FakeServer {
 public:
  using Answer = std::function<std::string(const Expected<Request>& request)>;
  using Tick = std::function<void(zmq::socket_t& pub)>;

  explicit FakeServer(Answer answer, Tick tick = {})
      : pub_(context_, zmq::socket_type::pub), router_(context_, zmq::socket_type::router) {
    pub_.bind("tcp://127.0.0.1:*");
    router_.bind("tcp://127.0.0.1:*");
    thread_ = std::thread([this, answer = std::move(answer), tick = std::move(tick)] {
      while (!done_ && std::chrono::steady_clock::now() < deadline) {
        zmq::pollitem_t item{router_.handle(), 0, ZMQ_POLLIN, 0};
        if (zmq::poll(&item, 1, 5ms) > 0) {
          std::vector<zmq::message_t> frames;
          (void)zmq::recv_multipart(router_, std::back_inserter(frames));
          const std::string bytes = answer(DecodeRequest(frames.back().to_string_view()));
          std::array<zmq::const_buffer, 3> out = {zmq::buffer(frames[0].to_string_view()),
                                                  zmq::const_buffer(), zmq::buffer(bytes)};
          (void)zmq::send_multipart(router_, out, zmq::send_flags::dontwait);
        }
        if (tick) tick(pub_);
      }
    });
  }
  ~FakeServer() {
    done_ = true;
    thread_.join();
  }

  std::unique_ptr<Client> Connect(int request_timeout_ms) {
    ClientOptions options;
    options.control_endpoint = router_.get(zmq::sockopt::last_endpoint);
    options.event_endpoint = pub_.get(zmq::sockopt::last_endpoint);
    options.request_timeout_ms = request_timeout_ms;
    auto client = Client::Connect(options);
    EXPECT_TRUE(client);
    return client ? std::move(*client) : nullptr;
  }
  /// Watches `run_id` until the watch ends or the deadline passes; the seqs it delivered.
  Status Watch(Client& client, const std::string& run_id, std::vector<std::uint64_t>* seqs) {
    WatchOptions watch;
    watch.run_id = run_id;
    watch.stop = [&] { return std::chrono::steady_clock::now() > deadline; };
    return client.Watch(watch, [&](const RunEvent& e, const std::string&) {
      seqs->push_back(e.event.seq);
      return true;
    });
  }
  /// An event of run `run_id` with sequence number `seq`.
  static std::string EventBytes(const std::string& run_id, std::uint64_t seq) {
    return EncodeEnvelope(
        RunEvent{scenarios::Event{run_id, seq, scenarios::NowNs(), scenarios::Progress{"x", 0, 1}},
                 "", std::nullopt});
  }
  /// A snapshot reply of run `run_id` holding `events`.
  static std::string Snapshot(const Expected<Request>& request, const std::string& run_id,
                              std::vector<std::string> events, bool more) {
    Reply reply{request ? request->request_id : "", RunList{}};
    if (request && std::holds_alternative<SnapshotRequest>(request->body)) {
      RunStatus run{run_id, "fake", RunState::kRunning, 2, 0, 0, 0, "", "", ""};
      reply.body = SnapshotReply{run, std::move(events), more};
    }
    return EncodeReply(reply);
  }

  const std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::now() + 60s;

 private:
  zmq::context_t context_;
  zmq::socket_t pub_, router_;
  std::atomic<bool> done_{false};
  std::thread thread_;
};

TEST_F(ServerTest, GapThatTheServerCannotFillIsAnExplicitError) {
  // Its history of run "g-1" ends at seq 2, but it publishes seq 4: seq 1 and 2 until the watcher
  // has them (the subscription takes a moment), then 4.
  FakeServer fake(
      [](const Expected<Request>& request) {
        return FakeServer::Snapshot(
            request, "g-1", {FakeServer::EventBytes("g-1", 1), FakeServer::EventBytes("g-1", 2)},
            false);
      },
      [](zmq::socket_t& pub) {
        for (std::uint64_t seq : {1, 2, 4}) {
          const std::string bytes = FakeServer::EventBytes("g-1", seq);
          std::array<zmq::const_buffer, 2> msg = {zmq::str_buffer("run/g-1/progress"),
                                                  zmq::buffer(bytes)};
          (void)zmq::send_multipart(pub, msg);
        }
      });
  auto client = fake.Connect(2000);
  ASSERT_TRUE(client);
  std::vector<std::uint64_t> seqs;
  WatchOptions every;  // the whole stream, not one run: the gap shows on the live events
  every.stop = [&] { return std::chrono::steady_clock::now() > fake.deadline; };
  const Status watched = client->Watch(every, [&](const RunEvent& e, const std::string&) {
    seqs.push_back(e.event.seq);
    return true;
  });
  ASSERT_FALSE(watched);
  EXPECT_EQ(watched.error().code, ErrorCode::kCorruptData);
  EXPECT_NE(watched.error().message.find("gap in g-1"), std::string::npos)
      << watched.error().message;
  EXPECT_EQ(seqs, (std::vector<std::uint64_t>{1, 2}));  // nothing after the gap was delivered
}

TEST_F(ServerTest, AHistoryThatAnnouncesMoreButBringsNothingNewEndsTheWatch) {
  // Every snapshot page of run "h-1" is seq 1 and 2 with `more` set: the client once asked again
  // forever, at full CPU, deaf to Ctrl-C.
  std::atomic<int> pages{0};
  FakeServer fake([&](const Expected<Request>& request) {
    if (request && std::holds_alternative<SnapshotRequest>(request->body)) ++pages;
    return FakeServer::Snapshot(
        request, "h-1", {FakeServer::EventBytes("h-1", 1), FakeServer::EventBytes("h-1", 2)}, true);
  });
  auto client = fake.Connect(2000);
  ASSERT_TRUE(client);
  std::vector<std::uint64_t> seqs;
  const Status watched = fake.Watch(*client, "h-1", &seqs);
  ASSERT_FALSE(watched);
  EXPECT_EQ(watched.error().code, ErrorCode::kCorruptData);
  EXPECT_NE(watched.error().message.find("announces more events after seq 2"), std::string::npos)
      << watched.error().message;
  EXPECT_EQ(seqs, (std::vector<std::uint64_t>{1, 2}));
  EXPECT_EQ(pages.load(), 2);
}

TEST_F(ServerTest, AClientDropsAServerThatSendsAnOversizedReply) {
  // Every request answered with a 100 MiB frame. The client's socket refuses a message over
  // 64 MiB and drops the peer, so the call times out; before, it held the frame and only then
  // found it corrupt (a 2 GiB announcement reached 1.7 GB).
  const std::string huge(100u << 20, 'x');
  FakeServer fake([&](const Expected<Request>&) { return huge; });
  auto client = fake.Connect(1500);
  ASSERT_TRUE(client);
  auto health = client->GetHealth();
  ASSERT_FALSE(health);
  EXPECT_EQ(health.error().code, ErrorCode::kIo) << health.error().message;
  EXPECT_NE(health.error().message.find("no reply"), std::string::npos) << health.error().message;
}

TEST_F(ServerTest, SlowSubscriberNeitherBlocksTheRunNorLosesEventsForOthers) {
  ServerOptions options = Options();
  options.send_hwm = 4;
  options.heartbeat_ms = 10;
  Script script;
  script.patients = 2;
  script.candidates = 1500;
  script.payload = 2048;  // ~6 MB in all: far more than the socket buffers hold
  StartServer(options, Scripted(script));
  // A subscriber that stops reading once its subscription is known to be live.
  zmq::context_t context;
  zmq::socket_t slow(context, zmq::socket_type::sub);
  slow.set(zmq::sockopt::rcvhwm, 4);
  slow.set(zmq::sockopt::rcvbuf, 4096);
  slow.set(zmq::sockopt::subscribe, "");
  slow.connect(server_->event_endpoint());
  zmq::message_t first;
  slow.set(zmq::sockopt::rcvtimeo, 5000);
  ASSERT_TRUE(slow.recv(first));  // a heartbeat: the server now sends to us
  auto client = NewClient();
  const std::string id = SubmitOk(*client);
  auto watcher = NewClient();
  const std::vector<Event> events = WatchToEnd(*watcher, id);  // returns: the run was not blocked
  EXPECT_EQ(Json(events), Json(Log(*client, id)));
  auto health = client->GetHealth();
  ASSERT_TRUE(health);
  EXPECT_GT(health->events_dropped, 0u);       // the stuck subscriber missed events...
  EXPECT_EQ(watcher->stats().reconnects, 0u);  // ...while the watcher kept getting them live
}

TEST_F(ServerTest, HeartbeatsNeverAnnounceASeqBeforeItIsPublished) {
  // A heartbeat names each recent run's last seq, so that a watcher that missed a run's tail
  // heals it from a snapshot. Once it named the last seq *written to the log*, which runs ahead
  // of the last one sent by a batch: a heartbeat made in between announced events still on their
  // way, and the watcher fetched them from history (a false gap). `mewm bench stream` found it
  // ("the watcher missed live events", 3 of 8 runs on 2 loaded cores). The window is a thread
  // switch wide, so this check under many heartbeats is statistical: it did not catch the old
  // code in 3 runs here; the bench did.
  // Drops at a high-water mark are a real gap, healed from history like this one (CI saw one
  // under a loaded `ctest -j2`: 1154 events from history). They are not what this test is
  // about, so neither end has a mark here and the server must report no drop.
  ServerOptions options = Options();
  options.heartbeat_ms = 1;
  options.send_hwm = 0;
  Script script;
  script.patients = 2;
  // The run lasts until the watcher has heard 40 heartbeats during it, whatever the machine's speed
  // (a fixed 40,000 candidates gave 11 in all on a loaded CI machine), bounded by the candidates.
  std::atomic<std::uint64_t> heard{0};  // heartbeats after the run's first event
  script.candidates = 2000000;
  script.enough = [&] { return heard.load() >= 40; };
  StartServer(options, Scripted(script));
  ClientOptions unbounded = ClientOpts();
  unbounded.receive_hwm = 0;
  auto connected = Client::Connect(unbounded);
  ASSERT_TRUE(connected) << connected.error().message;
  std::unique_ptr<Client> watcher = std::move(*connected);
  std::atomic<bool> live{false};
  std::atomic<bool> done{false};
  std::uint64_t delivered = 0;
  WatchOptions watch;  // every run: live before the run exists
  watch.stop = [&] { return done.load(); };
  std::thread watching([&] {
    const Status watched = watcher->Watch(
        watch,
        [&](const RunEvent& e, const std::string&) {
          ++delivered;
          if (std::holds_alternative<scenarios::RunFinished>(e.event.body)) done = true;
          return !done;
        },
        [&](const ServerEvent&) {
          live = true;
          if (delivered > 0) ++heard;
        });
    EXPECT_TRUE(watched) << watched.error().message;
  });
  for (int i = 0; i < 5000 && !live; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  ASSERT_TRUE(live);
  auto client = NewClient();
  const std::string id = SubmitOk(*client);
  // Requests turn the server's loop, which sends a heartbeat whenever nothing was published for
  // a millisecond: many heartbeats land among the run's batches.
  auto asker = NewClient();
  std::thread asking([&] {
    while (!done) (void)asker->GetHealth();
  });
  watching.join();
  asking.join();
  EXPECT_EQ(delivered, Log(*client, id).size());
  auto health = client->GetHealth();
  ASSERT_TRUE(health);
  ASSERT_EQ(health->events_dropped, 0u);  // else a gap would be the mark's, not a heartbeat's
  const WatchStats stats = watcher->stats();
  EXPECT_GE(heard.load(), 40u);
  EXPECT_EQ(stats.reconnects, 0u);
  EXPECT_EQ(stats.gaps, 0u);
  EXPECT_EQ(stats.from_history, 0u);
}

TEST_F(ServerTest, FullQueueRejectsWithAReason) {
  ServerOptions options = Options();
  options.queue_capacity = 1;
  auto gate = std::make_shared<Gate>();
  Script script = PausedAt(2, gate);
  StartServer(options, Scripted(script));
  auto client = NewClient();
  const std::string running = SubmitOk(*client);
  ASSERT_TRUE(gate->WaitReached());  // the first run left the queue
  const std::string queued = SubmitOk(*client);
  auto rejected = client->Call(Request{"", "", SubmitRequest{Toml(), "", ""}});
  ASSERT_TRUE(rejected);
  const auto* error = std::get_if<ErrorReply>(&rejected->body);
  ASSERT_NE(error, nullptr);
  EXPECT_EQ(error->code, ReplyError::kQueueFull);
  EXPECT_NE(error->message.find("queue is full"), std::string::npos);
  gate->Release();
  WatchToEnd(*client, queued);
  auto health = client->GetHealth();
  EXPECT_EQ(health->rejected_submits, 1u);
  EXPECT_EQ(client->GetStatus(running)->state, RunState::kFinished);
}

TEST_F(ServerTest, CancelEndsTheRunWithinASecondOfTheCurrentBatch) {
  auto gate = std::make_shared<Gate>();
  Script script = PausedAt(5, gate);
  script.candidates = 100000;
  script.work = 20ms;  // one simulated batch
  StartServer(Options(), Scripted(script));
  auto client = NewClient();
  const std::string id = SubmitOk(*client);
  ASSERT_TRUE(gate->WaitReached());
  gate->Release();
  auto watcher = NewClient();
  std::vector<Event> events;
  std::thread watch([&] { events = WatchToEnd(*watcher, id); });
  const auto t0 = std::chrono::steady_clock::now();
  auto cancelled = client->Cancel(id);
  ASSERT_TRUE(cancelled) << cancelled.error().message;
  watch.join();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_FALSE(events.empty());
  EXPECT_TRUE(std::holds_alternative<scenarios::RunCancelled>(events.back().body));
  EXPECT_LT(seconds, 1.0);
  EXPECT_EQ(client->GetStatus(id)->state, RunState::kCancelled);
  auto again = client->Cancel(id);
  ASSERT_FALSE(again);
  EXPECT_NE(again.error().message.find("not_cancellable"), std::string::npos);
}

TEST_F(ServerTest, CancellingAQueuedRunRecordsItWithoutRunningIt) {
  auto gate = std::make_shared<Gate>();
  Script script = PausedAt(2, gate);
  StartServer(Options(), Scripted(script));
  auto client = NewClient();
  const std::string first = SubmitOk(*client);
  ASSERT_TRUE(gate->WaitReached());
  const std::string second = SubmitOk(*client);
  auto cancelled = client->Cancel(second);
  ASSERT_TRUE(cancelled);
  gate->Release();
  const auto events = WatchToEnd(*client, second);
  ASSERT_EQ(events.size(), 2u);  // accepted, cancelled
  EXPECT_TRUE(std::holds_alternative<scenarios::RunCancelled>(events[1].body));
  EXPECT_EQ(Json(events), Json(Log(*client, second)));
  WatchToEnd(*client, first);
}

TEST_F(ServerTest, BadMessagesGetErrorRepliesWhileARunContinues) {
  ServerOptions options = Options();
  options.max_request_bytes = 64 * 1024;
  auto gate = std::make_shared<Gate>();
  Script script = PausedAt(3, gate);
  StartServer(options, Scripted(script));
  auto client = NewClient();
  const std::string id = SubmitOk(*client);
  ASSERT_TRUE(gate->WaitReached());  // a run is in the middle of its work
  const auto expect_error = [&](const std::string& bytes, ReplyError code) {
    auto reply = client->CallRaw(bytes);
    ASSERT_TRUE(reply) << reply.error().message;
    const auto* error = std::get_if<ErrorReply>(&reply->body);
    ASSERT_NE(error, nullptr);
    EXPECT_EQ(error->code, code) << error->message;
  };
  std::mt19937 rng(3);
  std::string junk(333, '\0');
  for (char& c : junk) c = char(rng());
  expect_error(junk, ReplyError::kMalformed);
  const std::string valid = EncodeRequest(Request{"r", "", StatusRequest{id}});
  expect_error(valid.substr(0, valid.size() - 8), ReplyError::kMalformed);
  expect_error(std::string(100 * 1024, 'x'), ReplyError::kTooLarge);
  expect_error(EncodeRequest(Request{"r", "", HealthRequest{}}, kSchemaVersion + 1),
               ReplyError::kWrongVersion);
  expect_error("", ReplyError::kMalformed);
  gate->Release();
  const auto events = WatchToEnd(*client, id);
  EXPECT_TRUE(std::holds_alternative<scenarios::RunFinished>(events.back().body));
  EXPECT_EQ(client->GetHealth()->bad_requests, 5u);
}

TEST_F(ServerTest, InvalidScenariosAndEscapingPathsAreRejected) {
  StartServer(Options(), Scripted({}));
  auto client = NewClient();
  const auto expect = [&](const SubmitRequest& submit, ReplyError code, const std::string& text) {
    auto reply = client->Call(Request{"", "", submit});
    ASSERT_TRUE(reply);
    const auto* error = std::get_if<ErrorReply>(&reply->body);
    ASSERT_NE(error, nullptr) << submit.scenario_toml;
    EXPECT_EQ(error->code, code);
    EXPECT_NE(error->message.find(text), std::string::npos) << error->message;
  };
  expect({"[run\nname=", "", ""}, ReplyError::kInvalidScenario, "");
  expect({Toml("x", "bogus = 1"), "", ""}, ReplyError::kInvalidScenario, "bogus");
  std::string escaping = Toml();
  escaping.replace(escaping.find("\"runs\""), 6, "\"../../etc\"");
  expect({escaping, "", ""}, ReplyError::kForbiddenPath, "..");
  std::string absolute = Toml();
  absolute.replace(absolute.find("\"runs\""), 6, "\"/tmp/elsewhere\"");
  expect({absolute, "", ""}, ReplyError::kForbiddenPath, "outside");
  expect({Toml(), "", "../outside/s.toml"}, ReplyError::kForbiddenPath, "..");
  // A NUL cut the path short where the file was opened, after the check had normalised the
  // whole text: "/etc/shadow\0/../<base>/models/cox.json" passed as inside and opened
  // /etc/shadow. An ESC would reach the terminal of whoever reads the reply.
  const std::string base = fs::absolute(dir_.path()).string();
  std::string nul = Toml();
  nul.replace(nul.find("\"models/cox.json\""), 17,
              "\"/etc/shadow\\u0000/../../../../../.." + base + "/models/cox.json\"");
  expect({nul, "", ""}, ReplyError::kInvalidScenario, "survival.model = \"/etc/shadow\\x00/../");
  std::string esc = Toml();
  esc.replace(esc.find("\"runs\""), 6, "\"runs\\u001b[2J\"");
  expect({esc, "", ""}, ReplyError::kInvalidScenario, "run.output = \"runs\\x1b[2J\"");
  expect({Toml(), "", std::string("s.toml\0/../../x", 15)}, ReplyError::kForbiddenPath,
         "scenario path = \"s.toml\\x00/../../x\" holds a control character");
  EXPECT_TRUE(client->ListRuns()->empty());  // nothing was queued
}

TEST_F(ServerTest, DeeplyNestedTomlIsRefusedAndTheServerKeepsAnswering) {
  StartServer(Options(), Scripted({}));
  auto client = NewClient();
  // One dotted key of 100,000 parts (about 200 KB, under the 1 MiB request cap) overflowed the
  // stack inside toml++ and killed the server.
  std::string key = "a";
  for (int i = 1; i < 100000; ++i) key += ".a";
  for (const std::string& toml :
       {Toml() + key + " = 1\n", Toml() + "deep = " + std::string(100000, '[') + "]\n"}) {
    auto reply = client->Call(Request{"", "", SubmitRequest{toml, "", ""}});
    ASSERT_TRUE(reply) << reply.error().message;
    const auto* error = std::get_if<ErrorReply>(&reply->body);
    ASSERT_NE(error, nullptr);
    EXPECT_EQ(error->code, ReplyError::kInvalidScenario);
    EXPECT_NE(error->message.find("64 levels"), std::string::npos) << error->message;
  }
  auto health = client->GetHealth();
  ASSERT_TRUE(health) << health.error().message;
  EXPECT_EQ(health->rejected_submits, 2u);
  WatchToEnd(*client, SubmitOk(*client));  // and it still runs scenarios
}

TEST_F(ServerTest, RunNamesThatCouldLeaveTheRootOrShareAPrefixAreRefused) {
  StartServer(Options(), Scripted({}));
  auto client = NewClient();
  const std::vector<std::string> names = {"../../../x", "/tmp/abs-run", "victim/evil",
                                          "..",         "a b",          std::string(65, 'n')};
  for (const std::string& name : names) {
    auto reply = client->Call(Request{"", "", SubmitRequest{Toml(name), "", ""}});
    ASSERT_TRUE(reply);
    const auto* error = std::get_if<ErrorReply>(&reply->body);
    ASSERT_NE(error, nullptr) << name;
    EXPECT_EQ(error->code, ReplyError::kInvalidScenario) << name;
    EXPECT_NE(error->message.find("run.name must be 1 to 64 characters"), std::string::npos)
        << error->message;
  }
  EXPECT_TRUE(client->ListRuns()->empty());  // nothing was queued, so no folder was made
}

TEST_F(ServerTest, InputsOutsideTheBaseGetOneAnswerBeforeAnythingIsOpened) {
  // A folder beside the scenario base, holding what a client should learn nothing about.
  const fs::path outside = dir_.path().string() + "-outside";
  fs::create_directories(outside);
  std::ofstream(outside / "secret.toml") << "[[drug]]\nsecret_key_name = 1\n";
  fs::copy_file(dir_.File("models/cox.json"), outside / "cox.json");
  ASSERT_EQ(::mkfifo((outside / "fifo").c_str(), 0600), 0);
  ASSERT_EQ(::mkfifo(dir_.File("fifo").c_str(), 0600), 0);
  fs::create_symlink(outside / "cox.json", dir_.File("models/link.json"));
  StartServer(Options(), Scripted({}));
  auto client = NewClient(3000);
  const auto unblock = [&] {  // only needed if a read blocked the server
    for (const std::string& fifo : {(outside / "fifo").string(), dir_.File("fifo")}) {
      const int fd = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK);
      if (fd >= 0) ::close(fd);
    }
  };
  const auto submit = [&](const std::string& toml) -> ErrorReply {
    auto reply = client->Call(Request{"", "", SubmitRequest{toml, "", ""}});
    auto health = client->GetHealth();
    if (!reply || !health) unblock();
    EXPECT_TRUE(reply) << "no answer: " << reply.error().message;
    EXPECT_TRUE(health) << "no health after the submit: " << health.error().message;
    const auto* error = reply ? std::get_if<ErrorReply>(&reply->body) : nullptr;
    EXPECT_NE(error, nullptr) << toml;
    return error ? *error : ErrorReply{};
  };
  const auto actions = [&](const std::string& path) {
    return Toml() + "\n[actions]\npath = \"" + path + "\"\n";
  };
  // /dev/zero last: a server that read it would grow until bad_alloc.
  for (const std::string& path :
       {(outside / "fifo").string(), (outside / "secret.toml").string(),
        "../" + outside.filename().string() + "/secret.toml", "/dev/zero"s}) {
    const ErrorReply error = submit(actions(path));
    EXPECT_EQ(error.code, ReplyError::kForbiddenPath) << path;
    EXPECT_NE(error.message.find("actions.path = \""), std::string::npos) << error.message;
    EXPECT_NE(error.message.find("is outside the server's scenario base"), std::string::npos);
    EXPECT_EQ(error.message.find("secret_key_name"), std::string::npos) << error.message;
  }
  // Inside the base, a FIFO is refused without being opened for a read.
  const ErrorReply fifo = submit(actions("fifo"));
  EXPECT_EQ(fifo.code, ReplyError::kInvalidScenario);
  EXPECT_NE(fifo.message.find("not a regular file"), std::string::npos) << fifo.message;
  // A model outside: the same answer whether or not a file is there, and through a link.
  const auto model = [&](const std::string& path) {
    std::string toml = Toml();
    return toml.replace(toml.find("models/cox.json"), 15, path);
  };
  const ErrorReply there = submit(model((outside / "cox.json").string()));
  const ErrorReply missing = submit(model((outside / "nope.json").string()));
  EXPECT_EQ(there.code, ReplyError::kForbiddenPath);
  EXPECT_EQ(missing.code, ReplyError::kForbiddenPath);
  EXPECT_EQ(there.message.substr(there.message.find("\" is outside")),
            missing.message.substr(missing.message.find("\" is outside")));
  EXPECT_EQ(missing.message.find("does not exist"), std::string::npos) << missing.message;
  EXPECT_EQ(submit(model("models/link.json")).code, ReplyError::kForbiddenPath);
  EXPECT_TRUE(client->ListRuns()->empty());
  StopServer();
  fs::remove_all(outside);
}

TEST_F(ServerTest, AManifestsRowsAreConfinedToTheBaseLikeTheScenariosKeys) {
  // The manifest lies inside the base; one row names files outside it, by an absolute path and
  // by '..'. The run fails naming the row, before any of them is opened.
  const fs::path outside = dir_.path().string() + "-outside";
  fs::create_directories(outside);
  ASSERT_EQ(::mkfifo((outside / "ct.nii.gz").c_str(), 0600), 0);  // opening it would block
  const std::string header =
      "patient_id,ct,tumor,age_years,sex,child_pugh,bclc_stage,afp_ng_ml,lesion_count,"
      "max_diameter_mm,vascular_invasion\n";
  const std::string clinical = ",62,M,A,B,30,1,40,0\n";
  std::ofstream(dir_.File("inside.csv")) << header << "P1,inside.nii.gz,inside.nii.gz" << clinical;
  std::ofstream(dir_.File("absolute.csv"))
      << header << "P1,inside.nii.gz,inside.nii.gz" << clinical << "P2," << (outside / "ct.nii.gz")
      << ",inside.nii.gz" << clinical;
  std::ofstream(dir_.File("dotdot.csv")) << header << "P1,inside.nii.gz,../"
                                         << outside.filename().string() << "/ct.nii.gz" << clinical;
  StartServer(Options(), RunWithRunner);
  auto client = NewClient(10000);
  const auto manifest = [](const std::string& csv) {
    std::string toml = Toml();
    const std::string synthetic = "source = \"synthetic\"\nn = 2\nseed = 4\nspacing_mm = 2.0\n";
    return toml.replace(toml.find(synthetic), synthetic.size(),
                        "source = \"manifest\"\nmanifest = \"" + csv + "\"\n");
  };
  // Inside the base the rows pass the check; the missing image fails only its patient.
  auto events = WatchToEnd(*client, SubmitOk(*client, manifest("inside.csv")));
  ASSERT_FALSE(events.empty());
  ASSERT_TRUE(std::holds_alternative<scenarios::RunFinished>(events.back().body))
      << scenarios::EventToJson(events.back());
  for (const std::string csv : {"absolute.csv:3 ct", "dotdot.csv:2 tumor"}) {
    events = WatchToEnd(*client, SubmitOk(*client, manifest(csv.substr(0, csv.find(':')))));
    ASSERT_FALSE(events.empty());
    const auto* failed = std::get_if<scenarios::RunFailed>(&events.back().body);
    ASSERT_NE(failed, nullptr) << scenarios::EventToJson(events.back());
    EXPECT_NE(failed->error.find(csv), std::string::npos) << failed->error;
    EXPECT_NE(failed->error.find("is outside the server's scenario base"), std::string::npos)
        << failed->error;
    for (const Event& e : events) {  // no patient was planned or even started
      EXPECT_FALSE(std::holds_alternative<scenarios::RunStarted>(e.body)) << csv;
    }
  }
  StopServer();
  fs::remove_all(outside);
}

TEST_F(ServerTest, CohortFoldersStayInCohortsAndRunsStayOut) {
  StartServer(Options(), Scripted({}));
  auto client = NewClient();
  const std::string victim = SubmitOk(*client);
  WatchToEnd(*client, victim);
  const std::string root = ResolvedPath(Options().results_root);
  fs::create_directories(dir_.File("elsewhere"));
  fs::create_directory_symlink(dir_.File("elsewhere"), root + "/link");
  fs::create_directories(root + "/cohorts");
  fs::create_directory_symlink(dir_.File("elsewhere"), root + "/cohorts/link");
  const auto expect_forbidden = [&](const std::string& toml, const std::string& text) {
    auto reply = client->Call(Request{"", "", SubmitRequest{toml, "", ""}});
    ASSERT_TRUE(reply);
    const auto* error = std::get_if<ErrorReply>(&reply->body);
    ASSERT_NE(error, nullptr) << toml;
    EXPECT_EQ(error->code, ReplyError::kForbiddenPath) << error->message;
    EXPECT_NE(error->message.find(text), std::string::npos) << error->message;
  };
  const auto cohort = [&](const std::string& dir) {
    std::string toml = Toml();
    return toml.replace(toml.find("spacing_mm = 2.0"), 16,
                        "spacing_mm = 2.0\ndir = \"" + dir + "\"");
  };
  const auto output = [&](const std::string& dir) {
    std::string toml = Toml();
    return toml.replace(toml.find("\"runs\""), 6, "\"" + dir + "\"");
  };
  // Another run's folder, inside the root, was a valid cohort.dir: its patients/ was replaced.
  expect_forbidden(cohort("runs/" + victim), "must name a folder inside " + root + "/cohorts");
  expect_forbidden(cohort(root + "/runs/" + victim), "must name a folder inside");
  expect_forbidden(cohort("cohorts"), "must name a folder inside");
  expect_forbidden(cohort("cohorts/link/x"), "outside the server's results root");  // by a link
  expect_forbidden(cohort("/tmp/elsewhere"), "outside the server's results root");
  expect_forbidden(output("cohorts/mine"), "where only cohorts live");
  expect_forbidden(output("link"), "outside the server's results root");
  // A folder holding another cohort, which other runs read: generating this run's cohort there
  // replaced it (a peer named another run's default cohort with another seed).
  fs::create_directories(root + "/cohorts/theirs");
  std::ofstream(root + "/cohorts/theirs/manifest.json") << R"({"n": 7, "note": "another cohort"})";
  expect_forbidden(cohort("cohorts/theirs"), "holds another cohort (other n, seed or spacing)");
  EXPECT_EQ(*ReadFile(root + "/cohorts/theirs/manifest.json"),
            R"({"n": 7, "note": "another cohort"})");
  // Deeper than a restarted server looks for runs: it would have lost the run.
  expect_forbidden(output("a/b/c/d/e/f/g"), "is more than 6 folders below the results root");
  EXPECT_EQ(client->ListRuns()->size(), 1u);
  EXPECT_TRUE(fs::is_empty(dir_.File("elsewhere")));
  // Where the layout says, a cohort folder of one's own choosing is fine.
  const std::string mine = SubmitOk(*client, cohort("cohorts/mine"));
  WatchToEnd(*client, mine);
  EXPECT_EQ(client->ListRuns()->size(), 2u);
}

TEST_F(ServerTest, RealRunnerNeverReplacesAFolderThatIsNotAMewmCohort) {
  const std::string root = Options().results_root;
  fs::create_directories(root + "/cohorts/mine/patients/P0001");
  std::ofstream(root + "/cohorts/mine/patients/P0001/keep.txt") << "precious";
  StartServer(Options(), RunWithRunner);
  auto client = NewClient(10000);
  std::string toml = Toml();
  toml.replace(toml.find("spacing_mm = 2.0"), 16, "spacing_mm = 2.0\ndir = \"cohorts/mine\"");
  const auto events = WatchToEnd(*client, SubmitOk(*client, toml));
  ASSERT_FALSE(events.empty());
  const auto* failed = std::get_if<scenarios::RunFailed>(&events.back().body);
  ASSERT_NE(failed, nullptr) << scenarios::EventToJson(events.back());
  EXPECT_NE(failed->error.find("not a cohort written by mewm"), std::string::npos) << failed->error;
  auto kept = ReadFile(root + "/cohorts/mine/patients/P0001/keep.txt");
  ASSERT_TRUE(kept);
  EXPECT_EQ(*kept, "precious");
}

TEST_F(ServerTest, ResubmittingWithTheSameRequestIdReturnsTheSameRun) {
  StartServer(Options(), Scripted({}));
  auto client = NewClient();
  auto first = client->Submit({Toml(), "idem-1", ""});
  auto second = client->Submit({Toml(), "idem-1", ""});
  ASSERT_TRUE(first && second);
  EXPECT_EQ(first->run_id, second->run_id);
  EXPECT_FALSE(first->duplicate);
  EXPECT_TRUE(second->duplicate);
  auto third = client->Submit({Toml(), "idem-2", ""});
  EXPECT_NE(third->run_id, first->run_id);
  EXPECT_EQ(client->ListRuns()->size(), 2u);
}

TEST_F(ServerTest, SnapshotsPageThroughHistoryAndUnknownRunsAreErrors) {
  StartServer(Options(), Scripted({}));
  auto client = NewClient();
  const std::string id = SubmitOk(*client);
  const auto all = WatchToEnd(*client, id);
  auto page = client->Snapshot(id, 3, 4);
  ASSERT_TRUE(page);
  ASSERT_EQ(page->events.size(), 4u);
  EXPECT_TRUE(page->more);
  auto first = DecodeEnvelope(page->events.front());
  EXPECT_EQ(std::get<RunEvent>(*first).event.seq, 4u);
  auto tail = client->Snapshot(id, all.size() - 1, 0);
  EXPECT_EQ(tail->events.size(), 1u);
  EXPECT_FALSE(tail->more);
  for (auto result : {client->GetStatus("nope").error(), client->Cancel("nope").error(),
                      client->Snapshot("nope", 0).error()}) {
    EXPECT_EQ(result.code, ErrorCode::kNotFound);
  }
}

TEST_F(ServerTest, CurveAllowsListedKeysAndRefusesOthers) {
  auto server_keys = GenerateCurveKeyPair();
  auto listed = GenerateCurveKeyPair();
  auto stranger = GenerateCurveKeyPair();
  ASSERT_TRUE(server_keys && listed && stranger);
  ASSERT_TRUE(WriteCurveKeyPair(*server_keys, dir_.File("server")));
  ASSERT_TRUE(WriteFileAtomic(dir_.File("allow.txt"), "# clients\n" + listed->public_key + "\n"));
  ServerOptions options = Options();
  options.curve_secret_file = dir_.File("server.key");
  options.curve_allowlist_file = dir_.File("allow.txt");
  StartServer(options, Scripted({}));
  EXPECT_EQ(server_->public_key(), server_keys->public_key);
  const auto connect = [&](const CurveKeyPair& keys) {
    ClientOptions c = ClientOpts(700);
    c.server_public_key = server_keys->public_key;
    c.public_key = keys.public_key;
    c.secret_key = keys.secret_key;
    return std::move(*Client::Connect(c));
  };
  auto good = connect(*listed);
  const std::string id = SubmitOk(*good);
  const auto events = WatchToEnd(*good, id);  // events arrive encrypted over the PUB socket too
  EXPECT_TRUE(std::holds_alternative<scenarios::RunFinished>(events.back().body));
  auto bad = connect(*stranger);
  auto refused = bad->GetHealth();
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, ErrorCode::kIo);
  auto plain = NewClient(700);
  EXPECT_FALSE(plain->GetHealth());  // no CURVE at all
  auto health = good->GetHealth();
  ASSERT_TRUE(health);
  EXPECT_GE(health->auth_failures, 1u);
}

TEST_F(ServerTest, CurveFailsClosedOnAMissingOrBadAllowlist) {
  auto keys = GenerateCurveKeyPair();
  ASSERT_TRUE(WriteCurveKeyPair(*keys, dir_.File("server")));
  ServerOptions options = Options();
  options.curve_secret_file = dir_.File("server.key");
  options.curve_allowlist_file = dir_.File("missing.txt");
  EXPECT_FALSE(Server::Create(options, Scripted({})));
  ASSERT_TRUE(WriteFileAtomic(dir_.File("bad.txt"), "not-a-key\n"));
  options.curve_allowlist_file = dir_.File("bad.txt");
  auto bad = Server::Create(options, Scripted({}));
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("bad.txt:1"), std::string::npos);
  options.curve_allowlist_file = "";
  EXPECT_FALSE(Server::Create(options, Scripted({})));  // a key without an allowlist
}

TEST_F(ServerTest, ShutdownCancelsTheActiveRunAndPublishesServerClosing) {
  auto gate = std::make_shared<Gate>();
  Script script = PausedAt(3, gate);
  script.candidates = 100000;
  script.work = 20ms;  // a run far longer than the test
  StartServer(Options(), Scripted(script));
  zmq::context_t context;
  zmq::socket_t sub(context, zmq::socket_type::sub);
  sub.set(zmq::sockopt::subscribe, "server/");
  sub.set(zmq::sockopt::rcvtimeo, 5000);
  sub.connect(server_->event_endpoint());
  zmq::message_t topic;
  ASSERT_TRUE(sub.recv(topic));  // a heartbeat: subscribed
  std::vector<zmq::message_t> rest;
  (void)zmq::recv_multipart(sub, std::back_inserter(rest));  // the heartbeat's envelope
  auto client = NewClient();
  const std::string id = SubmitOk(*client);
  ASSERT_TRUE(gate->WaitReached());
  server_->Stop();
  gate->Release();
  serve_thread_.join();
  EXPECT_TRUE(served_);
  // Heartbeats may come first; the last server message is `closing`.
  std::optional<ServerClosing> closing;
  for (int i = 0; i < 1000 && !closing; ++i) {
    std::vector<zmq::message_t> frames;
    if (!zmq::recv_multipart(sub, std::back_inserter(frames))) break;
    auto envelope = DecodeEnvelope(frames.at(1).to_string_view());
    ASSERT_TRUE(envelope);
    const auto& server = std::get<ServerEvent>(*envelope);
    if (auto* c = std::get_if<ServerClosing>(&server.body)) closing = *c;
  }
  ASSERT_TRUE(closing.has_value());
  EXPECT_EQ(closing->reason, "shutdown");
  EXPECT_EQ(closing->cancelled_runs, 1);
  const std::string out = dir_.File("results/runs/" + id + "/events.jsonl");
  auto log = scenarios::ReadEvents(out);
  ASSERT_TRUE(log);
  EXPECT_TRUE(std::holds_alternative<scenarios::RunCancelled>(log->back().body));
  server_.reset();
}

TEST_F(ServerTest, RestartedServerListsEarlierRunsAndEndsTheCutOffOnes) {
  StartServer(Options(), Scripted({}));
  std::string finished_id;
  std::vector<Event> finished_events;
  {
    auto client = NewClient();
    finished_id = SubmitOk(*client);
    finished_events = WatchToEnd(*client, finished_id);
  }
  StopServer();
  // A run an earlier process left without a terminal event (as after a crash).
  const std::string cut = dir_.File("results/runs/cut-1");
  fs::create_directories(cut);
  {
    scenarios::JsonlSink::Open(cut + "/events.jsonl")
        .value()
        ->Emit(Event{"cut-1", 1, scenarios::NowNs(), scenarios::RunAccepted{"cut", cut, 0}})
        .value();
  }

  StartServer(Options(), Scripted({}));
  auto client = NewClient();
  auto runs = client->ListRuns();
  ASSERT_TRUE(runs);
  ASSERT_EQ(runs->size(), 2u);
  auto finished = client->GetStatus(finished_id);
  ASSERT_TRUE(finished);
  EXPECT_EQ(finished->state, RunState::kFinished);
  EXPECT_EQ(finished->patients_done, 2);
  EXPECT_EQ(Json(WatchToEnd(*client, finished_id)), Json(finished_events));  // history served
  auto cut_status = client->GetStatus("cut-1");
  ASSERT_TRUE(cut_status);
  EXPECT_EQ(cut_status->state, RunState::kFailed);
  EXPECT_NE(cut_status->error.find("interrupted"), std::string::npos);
  const auto cut_events = WatchToEnd(*client, "cut-1");  // ends: the log is terminal now
  ASSERT_EQ(cut_events.size(), 2u);
  EXPECT_TRUE(std::holds_alternative<scenarios::RunFailed>(cut_events[1].body));
  EXPECT_EQ(Json(cut_events), Json(Log(*client, "cut-1")));
  // New runs still get fresh ids alongside.
  EXPECT_NE(SubmitOk(*client), finished_id);
}

TEST_F(ServerTest, MetricsEndpointServesStageHistograms) {
  ServerOptions options = Options();
  options.metrics_port = 0;
  StartServer(options, Scripted({}));
  ASSERT_GT(server_->metrics_port(), 0);
  auto client = NewClient();
  WatchToEnd(*client, SubmitOk(*client));
  httplib::Client http("127.0.0.1", server_->metrics_port());
  auto response = http.Get("/metrics");
  ASSERT_TRUE(response);
  EXPECT_EQ(response->status, 200);
  EXPECT_NE(response->body.find("mewm_stage_seconds_bucket{stage=\"publish\",le=\"+Inf\"}"),
            std::string::npos);
  EXPECT_NE(response->body.find("mewm_stage_seconds_count{stage=\"dynamics\"} 10"),
            std::string::npos)
      << response->body;
  EXPECT_NE(response->body.find("mewm_events_published_total"), std::string::npos);
}

TEST_F(ServerTest, RealRunnerStreamsPlansWithVerifiedVolumeFrames) {
  StartServer(Options(), RunWithRunner);
  auto client = NewClient(10000);
  const std::string id = SubmitOk(*client);
  std::vector<std::string> volumes;
  const auto events = WatchToEnd(*client, id, &volumes);
  ASSERT_FALSE(events.empty());
  ASSERT_TRUE(std::holds_alternative<scenarios::RunFinished>(events.back().body))
      << scenarios::EventToJson(events.back());
  EXPECT_EQ(Json(events), Json(Log(*client, id)));
  int decided = 0;
  for (const Event& e : events) decided += std::holds_alternative<scenarios::PlanDecided>(e.body);
  EXPECT_EQ(decided, 2);
  // Plans decided while watching came with their .vdb, checked against size and SHA-256.
  for (const std::string& volume : volumes) EXPECT_EQ(volume.substr(0, 4), " BDV");
  auto health = client->GetHealth();
  ASSERT_TRUE(health);
  ASSERT_EQ(health->stages.size(), 4u);
  EXPECT_GT(health->stages[1].count, 0u);  // dynamics batches were timed
  EXPECT_EQ(health->models_loaded.size(), 3u);
}

TEST_F(ServerTest, SubmitsTheDispatchFuzzerFoundGetErrorRepliesNotACrash) {
  StartServer(Options(), Scripted({}));
  auto client = NewClient();
  // A missing [run] and a top-level `__missing__` key: ParseScenario threw and the server died.
  for (const std::string& toml : {std::string("__missing__ = 1\n"),
                                  std::string("__missing__ = \"x\"\n[dynamics]\nsamples = 4\n")}) {
    auto reply = client->Call(Request{"", "", SubmitRequest{toml, "", ""}});
    ASSERT_TRUE(reply) << reply.error().message;
    const auto* error = std::get_if<ErrorReply>(&reply->body);
    ASSERT_NE(error, nullptr);
    EXPECT_EQ(error->code, ReplyError::kInvalidScenario) << error->message;
  }
  EXPECT_TRUE(client->GetHealth());  // still serving
}

TEST_F(ServerTest, MetricsStayAnswerableWhileManyConnectionsStall) {
  ServerOptions options = Options();
  options.metrics_port = 0;
  StartServer(options, Scripted({}));
  ASSERT_GT(server_->metrics_port(), 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(std::uint16_t(server_->metrics_port()));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  // Clients that connect and never finish a request: silent ones, and ones stuck mid-request.
  std::vector<int> stalled;
  const auto stall = [&](int count) {
    for (int i = 0; i < count; ++i) {
      const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
      ASSERT_GE(fd, 0);
      ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
      if (i % 2 == 1) {
        ASSERT_GT(::send(fd, "GET /metrics HTTP/1.1\r\n", 23, MSG_NOSIGNAL), 0);
      }
      stalled.push_back(fd);
    }
  };
  const auto scrape = [&] {
    httplib::Client http("127.0.0.1", server_->metrics_port());
    http.set_connection_timeout(3);
    http.set_read_timeout(3);
    const auto t0 = std::chrono::steady_clock::now();
    auto response = http.Get("/metrics");
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_TRUE(response);
    if (response) {
      EXPECT_EQ(response->status, 200);
    }
    return seconds;
  };
  stall(40);
  const double with_40 = scrape();
  EXPECT_LT(with_40, 1.0);
  stall(160);  // more than the endpoint keeps open: the oldest make room
  const double with_200 = scrape();
  EXPECT_LT(with_200, 1.0);
  std::printf("GET /metrics: %.3f s with 40 stalled connections, %.3f s with 200\n", with_40,
              with_200);
  // Stalled connections are closed by the server within its deadline (2 s), not held.
  const int last = stalled.back();
  timeval timeout{5, 0};
  ::setsockopt(last, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  char byte;
  const auto t0 = std::chrono::steady_clock::now();
  const ssize_t n = ::recv(last, &byte, 1, 0);
  const double closed_after =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_TRUE(n == 0 || (n < 0 && errno == ECONNRESET)) << n << " " << std::strerror(errno);
  EXPECT_LT(closed_after, 4.0);
  for (int fd : stalled) ::close(fd);
  EXPECT_LT(scrape(), 1.0);
}

TEST(MetricsTest, ValuesArePrintedExactly) {
  Health health;
  health.uptime_seconds = 123456.789012345;
  health.queue_depth = 3;
  health.events_published = 12345678901234567ull;
  StageMetrics stages;
  stages.Observe("dynamics", 4321.1234375);  // a whole number of ns: the sum is exact
  const std::string text = RenderPrometheus(health, stages);
  // Shortest round-trip decimals, integers as integers (6 significant digits would print 123457).
  EXPECT_NE(text.find("\nmewm_uptime_seconds 123456.789012345\n"), std::string::npos) << text;
  EXPECT_NE(text.find("\nmewm_queue_depth 3\n"), std::string::npos) << text;
  EXPECT_NE(text.find("\nmewm_events_published_total 12345678901234567\n"), std::string::npos);
  EXPECT_NE(text.find("\nmewm_stage_seconds_sum{stage=\"dynamics\"} 4321.1234375\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("mewm_stage_seconds_bucket{stage=\"dynamics\",le=\"1e-05\"} 0\n"),
            std::string::npos)
      << text;
}

TEST_F(ServerTest, SubmitsOverAnAdmissionLimitAreRefusedNamingTheLimit) {
  ServerOptions options = Options();
  StartServer(options, Scripted({}));
  auto client = NewClient();
  const auto refusal = [&](const std::string& toml) -> std::string {
    auto reply = client->Call(Request{"", "", SubmitRequest{toml, "", ""}});
    EXPECT_TRUE(reply);
    if (!reply) return "";
    const auto* error = std::get_if<ErrorReply>(&reply->body);
    EXPECT_NE(error, nullptr) << "admitted: " << toml;
    if (error == nullptr) return "";
    EXPECT_EQ(error->code, ReplyError::kOverLimit) << error->message;
    return error->message;
  };
  // The default limits refuse 100000 patients at 0.5 mm (days of work, terabytes).
  std::string huge = Toml();
  huge.replace(huge.find("n = 2"), 5, "n = 100000");
  huge.replace(huge.find("spacing_mm = 2.0"), 16, "spacing_mm = 0.5");
  const std::string message = refusal(huge);
  for (const char* named : {"patients", "--max-patients", "voxels", "--max-voxels", "disk",
                            "--max-disk-gb", "time", "--max-hours"}) {
    EXPECT_NE(message.find(named), std::string::npos) << named << ": " << message;
  }
  std::string wide = Toml();
  wide.replace(wide.find("beams = 2\nsamples = 2"), 21, "beams = 64\nsamples = 64");
  EXPECT_NE(refusal(wide).find("beams x samples"), std::string::npos);
  // An exhaustive search has no beams to count: it simulates its whole plan space (185 plans of
  // the shipped base at horizons 2/2, bounded at 230) x samples. One beam of 64 samples was
  // admitted as if it were cheap.
  std::string exhaustive = Toml();
  exhaustive.replace(exhaustive.find("beams = 2\nsamples = 2"), 21,
                     "beams = 1\nsamples = 64\nsearch = \"exhaustive\"");
  EXPECT_NE(refusal(exhaustive)
                .find("simulations: an estimated 14720 outcomes per patient is over "
                      "the limit of 5120 (--max-beam-samples x 20"),
            std::string::npos);
  // Nothing was queued or written; the refusals are counted.
  EXPECT_TRUE(client->ListRuns()->empty());
  EXPECT_FALSE(fs::exists(dir_.File("results/runs")));
  auto health = client->GetHealth();
  ASSERT_TRUE(health);
  EXPECT_EQ(health->rejected_submits, 3u);
  // Health reports the limits in force.
  const AdmissionLimits defaults;
  EXPECT_EQ(health->limits.max_patients, defaults.max_patients);
  EXPECT_EQ(health->limits.max_voxels, defaults.max_voxels);
  EXPECT_EQ(health->limits.max_beam_samples, defaults.max_beam_samples);
  EXPECT_EQ(health->limits.max_disk_bytes, defaults.max_disk_bytes);
  EXPECT_EQ(health->limits.max_seconds, defaults.max_seconds);
  // The usual scenario is admitted.
  WatchToEnd(*client, SubmitOk(*client));
  StopServer();

  // Each limit is configurable and named on its own.
  options.limits.max_patients = 1;
  options.limits.max_voxels = 1000;
  options.limits.max_beam_samples = 3;
  options.limits.max_disk_bytes = 1000;
  options.limits.max_seconds = 1.0;
  StartServer(options, Scripted({}));
  client = NewClient();
  const std::string all = refusal(Toml());
  for (const char* named : {"cohort.n = 2 is over the limit of 1", "over the limit of 1000 (",
                            "= 4 is over the limit of 3", "--max-disk-gb", "--max-hours"}) {
    EXPECT_NE(all.find(named), std::string::npos) << named << ": " << all;
  }
  health = client->GetHealth();
  EXPECT_EQ(health->limits.max_patients, 1);
  EXPECT_EQ(health->limits.max_voxels, 1000u);
  EXPECT_EQ(health->limits.max_beam_samples, 3);
  EXPECT_EQ(health->limits.max_disk_bytes, 1000u);
  EXPECT_EQ(health->limits.max_seconds, 1.0);
  StopServer();
  options.limits = AdmissionLimits{0, 0, 0, 0, 0.0};  // 0 = no limit
  StartServer(options, Scripted({}));
  client = NewClient();
  WatchToEnd(*client, SubmitOk(*client, huge));  // scripted: nothing is generated
}

TEST_F(ServerTest, DefaultAdmissionLimitsAdmitTheShippedScenarios) {
  int checked = 0;
  for (const auto& entry : fs::directory_iterator(fs::path(MEWM_SOURCE_DIR) / "scenarios")) {
    const fs::path file = entry.path() / "scenario.toml";
    if (!fs::exists(file)) continue;
    auto spec = scenarios::LoadScenario(file.string());
    ASSERT_TRUE(spec) << spec.error().message;
    const CostEstimate cost = EstimateCost(*spec);
    EXPECT_TRUE(CheckAdmission(cost, AdmissionLimits{})) << file;
    std::printf("%s: %d patients, %llu voxels, %d beam samples, %.1f GB, %.2f h (estimated)\n",
                file.parent_path().filename().c_str(), cost.patients,
                static_cast<unsigned long long>(cost.voxels), cost.beam_samples,
                double(cost.disk_bytes) / 1e9, cost.seconds / 3600.0);
    ++checked;
  }
  EXPECT_GE(checked, 3);
}

TEST(AdmissionTest, TheTimeEstimateFollowsTheMechanisticGridAndFollowUp) {
  // A 0.5 mm grid over 365 days ran about 230 times longer than the defaults and was admitted at
  // their estimate.
  scenarios::ScenarioSpec spec;
  spec.cohort.source = scenarios::CohortSpec::Source::kSynthetic;
  spec.cohort.n = 1;
  spec.cohort.spacing_mm = 2.0;
  const double defaults = EstimateCost(spec).seconds;
  spec.mechanistic.grid_mm = 0.5;
  spec.mechanistic.follow_up_days = 365.0;
  EXPECT_GT(EstimateCost(spec).seconds, 100.0 * defaults);
  // The limit's message keeps three digits: at one decimal, 150 s over 7.2 s read "0.0 h is over
  // the limit of 0.0 h".
  CostEstimate cost;
  cost.seconds = 150.0;
  AdmissionLimits limits;
  limits.max_seconds = 7.2;
  const Status refused = CheckAdmission(cost, limits);
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message.find("an estimated 0.0417 h is over the limit of 0.002 h"),
            std::string::npos)
      << refused.error().message;
}

TEST_F(ServerTest, SubmittedOpenAiPoliciesNeedAnEndpointAndAKeyVariableTheOperatorAllowed) {
  // Any peer could have the server send any of its environment variables, as a bearer token, to
  // any URL, and read the start of the reply back in an event.
  ServerOptions options = Options();
  StartServer(options, Scripted({}));
  auto client = NewClient();
  const auto forbidden = [&](const std::string& toml) -> std::string {
    auto reply = client->Call(Request{"", "", SubmitRequest{toml, "", ""}});
    EXPECT_TRUE(reply);
    const auto* error = reply ? std::get_if<ErrorReply>(&reply->body) : nullptr;
    EXPECT_NE(error, nullptr) << "admitted: " << toml;
    if (error == nullptr) return "";
    EXPECT_EQ(error->code, ReplyError::kForbiddenPath) << error->message;
    return error->message;
  };
  const std::string openai =
      Toml() +
      "\n[policy]\nbackend = \"openai\"\nendpoint = \"http://127.0.0.1:9/v1\"\n"
      "model = \"m\"\napi_key_env = \"HOME\"\n";
  EXPECT_NE(forbidden(openai).find("policy.endpoint = \"http://127.0.0.1:9/v1\" is not one this "
                                   "server may call (mewm serve --policy-endpoint)"),
            std::string::npos);
  StopServer();
  options.policy_endpoints = {"http://127.0.0.1:9/v1"};
  StartServer(options, Scripted({}));
  client = NewClient();
  EXPECT_NE(forbidden(openai).find("policy.api_key_env = \"HOME\" is not a variable this server "
                                   "may send (mewm serve --policy-key-env)"),
            std::string::npos);
  EXPECT_TRUE(client->ListRuns()->empty());
  StopServer();
}

/// Waits (bounded) until a file or folder whose name starts with `prefix` exists under `root`.
bool WaitForPathUnder(const fs::path& root, const std::string& prefix) {
  for (int i = 0; i < 3000; ++i) {
    std::error_code ec;
    for (auto it = fs::recursive_directory_iterator(root, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (it->path().filename().string().rfind(prefix, 0) == 0) return true;
    }
    std::this_thread::sleep_for(10ms);
  }
  return false;
}

class SlowCohortTest : public ServerTest {
 protected:
  /// A real run whose synthetic cohort takes tens of seconds to generate (8 patients at 1 mm).
  std::string SubmitSlowCohort(Client& client) {
    std::string toml = Toml();
    toml.replace(toml.find("n = 2"), 5, "n = 8");
    toml.replace(toml.find("spacing_mm = 2.0"), 16, "spacing_mm = 1.0");
    const std::string id = SubmitOk(client, toml);
    // Generation has begun once a patient's temporary folder (.tmp-P0001-<pid>) appears.
    EXPECT_TRUE(WaitForPathUnder(dir_.File("results"), ".tmp-P"));
    return id;
  }

  /// The generated cohort folder is not a complete cohort: no manifest, no temporary folders.
  void ExpectNoHalfWrittenCohort() {
    std::error_code ec;
    for (auto it = fs::recursive_directory_iterator(dir_.File("results"), ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
      EXPECT_NE(it->path().filename(), "manifest.json") << it->path();
      EXPECT_NE(it->path().filename().string().rfind(".tmp-", 0), 0u) << it->path();
    }
  }
};

TEST_F(SlowCohortTest, CancelStopsCohortGenerationWithinTwoSeconds) {
  StartServer(Options(), RunWithRunner);
  auto client = NewClient();
  const std::string id = SubmitSlowCohort(*client);
  auto watcher = NewClient();
  std::vector<Event> events;
  std::thread watch([&] { events = WatchToEnd(*watcher, id); });
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(client->Cancel(id));
  watch.join();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("cancel during cohort generation: run_cancelled after %.3f s\n", seconds);
  EXPECT_LT(seconds, 2.0);
  ASSERT_FALSE(events.empty());
  EXPECT_TRUE(std::holds_alternative<scenarios::RunCancelled>(events.back().body))
      << scenarios::EventToJson(events.back());
  EXPECT_EQ(client->GetStatus(id)->state, RunState::kCancelled);
  ExpectNoHalfWrittenCohort();
}

TEST_F(SlowCohortTest, ShutdownStopsCohortGenerationWithinTwoSeconds) {
  StartServer(Options(), RunWithRunner);
  auto client = NewClient();
  const std::string id = SubmitSlowCohort(*client);
  const auto t0 = std::chrono::steady_clock::now();
  server_->Stop();  // what SIGTERM does
  serve_thread_.join();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("shutdown during cohort generation: Serve() returned after %.3f s\n", seconds);
  EXPECT_LT(seconds, 2.0);
  EXPECT_TRUE(served_);
  server_.reset();
  ExpectNoHalfWrittenCohort();
}

// --- the HTTP port: run status, event streams (SSE), health, token, hostile requests ----------

/// A raw HTTP/1.1 client on a blocking socket with a receive timeout (no library between the
/// test and the bytes): Server-Sent Events parsed as they arrive.
class HttpPeer {
 public:
  struct Sse {
    std::uint64_t id = 0;
    std::string data;
  };

  /// `from`: the loopback address to connect from (any of 127.0.0.0/8 reaches 127.0.0.1).
  explicit HttpPeer(int port, int rcvbuf = 0, const char* from = nullptr) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    if (rcvbuf > 0) ::setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    timeval timeout{10, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    if (from != nullptr) {
      sockaddr_in local{};
      local.sin_family = AF_INET;
      if (::inet_pton(AF_INET, from, &local.sin_addr) != 1 ||
          ::bind(fd_, reinterpret_cast<sockaddr*>(&local), sizeof(local)) != 0) {
        return;  // not connected
      }
    }
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(std::uint16_t(port));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0;
  }
  ~HttpPeer() { Close(); }
  void Close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  bool connected() const { return connected_; }
  void ShutdownWrite() { ::shutdown(fd_, SHUT_WR); }

  bool Send(const std::string& bytes) {
    return ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL) == ssize_t(bytes.size());
  }
  bool Get(const std::string& target, const std::string& headers = "") {
    return Send("GET " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers + "\r\n");
  }

  /// Reads the status line and headers; the status code, or -1.
  int Status() {
    while (head_.empty()) {
      const std::size_t end = buffer_.find("\r\n\r\n");
      if (end != std::string::npos) {
        head_ = buffer_.substr(0, end + 2);
        buffer_.erase(0, end + 4);
        break;
      }
      if (!Fill()) return -1;
    }
    return head_.size() > 12 ? std::atoi(head_.c_str() + 9) : -1;
  }
  const std::string& head() const { return head_; }

  /// The rest of the response until the server closes (bounded by the receive timeout).
  std::string Body() {
    while (Fill()) {
    }
    return std::move(buffer_);
  }
  bool closed() const { return closed_; }

  /// Reads SSE messages until `count` more arrived or the stream ended; false on a timeout.
  bool Read(std::size_t count, std::vector<Sse>* out) {
    std::size_t got = 0;
    while (got < count) {
      const std::size_t end = buffer_.find("\n\n");
      if (end == std::string::npos) {
        if (!Fill()) return closed_;
        continue;
      }
      const std::string block = buffer_.substr(0, end + 1);
      buffer_.erase(0, end + 2);
      Sse event;
      bool has_data = false;
      for (std::size_t start = 0, stop = block.find('\n'); stop != std::string::npos;
           start = stop + 1, stop = block.find('\n', start)) {
        const std::string line = block.substr(start, stop - start);
        if (line.rfind("id: ", 0) == 0) event.id = std::stoull(line.substr(4));
        if (line.rfind("data: ", 0) == 0) {
          event.data = line.substr(6);
          has_data = true;
        }
      }
      if (has_data) {
        out->push_back(std::move(event));
        ++got;
      }
    }
    return true;
  }

 private:
  bool Fill() {
    if (closed_) return false;
    char chunk[65536];
    const ssize_t n = ::recv(fd_, chunk, sizeof(chunk), 0);
    if (n <= 0) {
      closed_ = n == 0 || errno == ECONNRESET;
      return false;
    }
    buffer_.append(chunk, std::size_t(n));
    return true;
  }

  int fd_ = -1;
  bool connected_ = false, closed_ = false;
  std::string buffer_, head_;
};

std::vector<std::string> LogLines(const std::string& path) {
  std::vector<std::string> lines;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

std::vector<std::string> Data(const std::vector<HttpPeer::Sse>& events) {
  std::vector<std::string> out;
  for (const auto& e : events) out.push_back(e.data);
  return out;
}

/// One GET on a fresh connection: status and body.
std::pair<int, std::string> HttpGet(int port, const std::string& target,
                                    const std::string& headers = "") {
  HttpPeer peer(port);
  EXPECT_TRUE(peer.connected());
  EXPECT_TRUE(peer.Get(target, headers));
  const int status = peer.Status();
  return {status, peer.Body()};
}

std::string MetricsText(int port, const std::string& headers = "") {
  auto [status, body] = HttpGet(port, "/metrics", headers);
  EXPECT_EQ(status, 200);
  return body;
}

class HttpTest : public ServerTest {
 protected:
  ServerOptions HttpOptions() const {
    ServerOptions options = Options();
    options.metrics_port = 0;
    return options;
  }
  int port() const { return server_->metrics_port(); }
  std::string LogPath(const std::string& id) {
    auto status = NewClient()->GetStatus(id);
    EXPECT_TRUE(status);
    return status ? status->output_dir + "/events.jsonl" : "";
  }
};

TEST_F(HttpTest, LateJoinStreamEndsWithExactlyTheRunsEventLog) {
  StartServer(HttpOptions(), Scripted({}));
  auto client = NewClient();
  const std::string id = SubmitOk(*client);
  WatchToEnd(*client, id);
  HttpPeer peer(port());
  ASSERT_TRUE(peer.Get("/v1/runs/" + id + "/events"));
  ASSERT_EQ(peer.Status(), 200);
  EXPECT_NE(peer.head().find("Content-Type: text/event-stream"), std::string::npos);
  std::vector<HttpPeer::Sse> events;
  ASSERT_TRUE(peer.Read(SIZE_MAX, &events));
  EXPECT_TRUE(peer.closed());  // the stream ends with the run
  const std::vector<std::string> log = LogLines(LogPath(id));
  // accepted, started, 2 x (started, 5 candidates, decided, finished), finished
  ASSERT_EQ(log.size(), 19u);
  EXPECT_EQ(Data(events), log);
  for (std::size_t i = 0; i < events.size(); ++i) EXPECT_EQ(events[i].id, i + 1);
  // Status as JSON: the list and the run.
  auto [list_status, list] = HttpGet(port(), "/v1/runs");
  EXPECT_EQ(list_status, 200);
  const auto runs = nlohmann::json::parse(list).at("runs");
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_EQ(runs[0].at("run_id"), id);
  auto [run_status, run] = HttpGet(port(), "/v1/runs/" + id);
  EXPECT_EQ(run_status, 200);
  const auto json = nlohmann::json::parse(run);
  EXPECT_EQ(json.at("state"), "finished");
  EXPECT_EQ(json.at("last_seq"), 19);
  EXPECT_EQ(json.at("patients_done"), 2);
}

TEST_F(HttpTest, ResumeWithLastEventIdHasNoGapAndNoDuplicate) {
  auto gate = std::make_shared<Gate>();
  Script script = PausedAt(30, gate);
  script.candidates = 20;
  StartServer(HttpOptions(), Scripted(script));
  auto client = NewClient();
  const std::string id = SubmitOk(*client);
  ASSERT_TRUE(gate->WaitReached());  // 30 events emitted (29 + run_accepted on disk at most)
  std::vector<HttpPeer::Sse> got;
  {
    HttpPeer first(port());
    ASSERT_TRUE(first.Get("/v1/runs/" + id + "/events"));
    ASSERT_EQ(first.Status(), 200);
    ASSERT_TRUE(first.Read(12, &got));
  }  // disconnects mid-stream
  ASSERT_EQ(got.size(), 12u);
  {
    // The header, as EventSource sends it on reconnect; a live run: it stays open across the gate.
    HttpPeer second(port());
    ASSERT_TRUE(second.Get("/v1/runs/" + id + "/events",
                           "Last-Event-ID: " + std::to_string(got.back().id) + "\r\n"));
    ASSERT_EQ(second.Status(), 200);
    ASSERT_TRUE(second.Read(8, &got));
  }
  ASSERT_EQ(got.size(), 20u);
  gate->Release();
  WatchToEnd(*client, id);
  // The query parameter (for clients that cannot set headers), to the end of the run; the header
  // wins over it when both are given.
  HttpPeer third(port());
  ASSERT_TRUE(third.Get("/v1/runs/" + id + "/events?last_event_id=3",
                        "Last-Event-ID: " + std::to_string(got.back().id) + "\r\n"));
  ASSERT_EQ(third.Status(), 200);
  ASSERT_TRUE(third.Read(SIZE_MAX, &got));
  EXPECT_TRUE(third.closed());
  EXPECT_EQ(Data(got), LogLines(LogPath(id)));
  for (std::size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i].id, i + 1);
  HttpPeer query(port());
  ASSERT_TRUE(query.Get("/v1/runs/" + id + "/events?last_event_id=40"));
  ASSERT_EQ(query.Status(), 200);
  std::vector<HttpPeer::Sse> tail;
  ASSERT_TRUE(query.Read(SIZE_MAX, &tail));
  ASSERT_FALSE(tail.empty());
  EXPECT_EQ(tail.front().id, 41u);
  EXPECT_EQ(tail.back().id, got.back().id);
  // Resuming at the last event of an ended run: 204, nothing follows (EventSource stops).
  auto [done, body] = HttpGet(port(), "/v1/runs/" + id + "/events",
                              "Last-Event-ID: " + std::to_string(got.back().id) + "\r\n");
  EXPECT_EQ(done, 204);
  EXPECT_TRUE(body.empty());
}

TEST_F(HttpTest, LiveStreamFollowsARunFromItsStart) {
  auto gate = std::make_shared<Gate>();
  StartServer(HttpOptions(), Scripted(PausedAt(3, gate)));
  auto client = NewClient();
  const std::string id = SubmitOk(*client);
  ASSERT_TRUE(gate->WaitReached());
  HttpPeer peer(port());
  ASSERT_TRUE(peer.Get("/v1/runs/" + id + "/events"));
  ASSERT_EQ(peer.Status(), 200);
  std::vector<HttpPeer::Sse> events;
  ASSERT_TRUE(peer.Read(2, &events));  // what is on disk before the gate opens
  gate->Release();
  ASSERT_TRUE(peer.Read(SIZE_MAX, &events));
  EXPECT_TRUE(peer.closed());
  EXPECT_EQ(Data(events), LogLines(LogPath(id)));
}

TEST_F(HttpTest, ErrorsAreClearAndHostileRequestsAreClosed) {
  StartServer(HttpOptions(), Scripted({}));
  auto client = NewClient();
  const std::string id = SubmitOk(*client);
  WatchToEnd(*client, id);
  const std::string events = "/v1/runs/" + id + "/events";
  EXPECT_EQ(HttpGet(port(), "/v1/runs/nope/events").first, 404);
  EXPECT_EQ(HttpGet(port(), "/v1/runs/nope").first, 404);
  EXPECT_EQ(HttpGet(port(), "/v2/nothing").first, 404);
  // A path that is not UTF-8: its 404's JSON threw, and the exception ended the server.
  for (const std::string path : {"/\xff", "/v1/runs/\xc3\x28", "/v1/runs/\xff/events"}) {
    const auto [status, body] = HttpGet(port(), path);
    EXPECT_EQ(status, 404) << body;
    EXPECT_NE(body.find("\xEF\xBF\xBD"), std::string::npos) << body;  // U+FFFD in its place
  }
  for (const std::string bad : {"abc", "-1", "+3", "1.5", "99999999999999999999999", "0x10"}) {
    const auto [status, body] = HttpGet(port(), events, "Last-Event-ID: " + bad + "\r\n");
    EXPECT_EQ(status, 400) << bad;
    EXPECT_NE(body.find("Last-Event-ID"), std::string::npos) << body;
  }
  EXPECT_EQ(HttpGet(port(), events + "?last_event_id=x").first, 400);
  EXPECT_EQ(HttpGet(port(), events, "Last-Event-ID: 20\r\n").first, 400);  // beyond the end (19)
  {
    HttpPeer post(port());
    ASSERT_TRUE(post.Send("POST " + events + " HTTP/1.1\r\nContent-Length: 0\r\n\r\n"));
    EXPECT_EQ(post.Status(), 405);
    EXPECT_NE(post.head().find("Allow: GET"), std::string::npos);
  }
  // Garbage, a header without a colon, a request line that is not HTTP/1.x, NUL bytes: 400 and
  // closed; an endless head: 431 and closed. The server keeps serving. A TLS hello and binary
  // bytes end no head: they are answered from their first bytes (they were closed unanswered at
  // the request deadline).
  for (const std::string& junk :
       {std::string("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 15),
        std::string("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11),
        std::string("\x89PNG\x01\x02\xff\xfe binary", 15), std::string("GET /\x1b[2J", 9),
        std::string("GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n"),
        std::string("GET /metrics SPDY/9\r\n\r\n"), std::string("GET  HTTP/1.1\r\n\r\n"),
        std::string("GET /met\0rics HTTP/1.1\r\n\r\n", 26)}) {
    HttpPeer peer(port());
    ASSERT_TRUE(peer.Send(junk));
    EXPECT_EQ(peer.Status(), 400) << junk;
    peer.Body();
    EXPECT_TRUE(peer.closed());
  }
  {
    HttpPeer peer(port());
    ASSERT_TRUE(peer.Send("GET /metrics HTTP/1.1\r\nX-Long: " + std::string(20000, 'a')));
    EXPECT_EQ(peer.Status(), 431);
    peer.Body();
    EXPECT_TRUE(peer.closed());
  }
  {
    // A request sent in pieces, then a half-close: still answered.
    HttpPeer peer(port());
    ASSERT_TRUE(peer.Send("GET /v2/health/li"));
    ASSERT_TRUE(peer.Send("ve HTTP/1.0\r\n\r\n"));
    peer.ShutdownWrite();
    EXPECT_EQ(peer.Status(), 200);
  }
  // Lines that end in a bare LF, as `printf ... | nc` sends them (RFC 9112 lets a server accept
  // them): answered as with CRLF, headers read. They were left unanswered until the deadline.
  for (const std::string& head :
       {std::string("GET /v2/health/live HTTP/1.0\n\n"),
        std::string("GET /v2/health/live HTTP/1.1\nHost: x\nX-A: b\r\n\n"),
        std::string("GET " + events + " HTTP/1.1\nLast-Event-ID: abc\n\n")}) {
    HttpPeer peer(port());
    ASSERT_TRUE(peer.Send(head));
    EXPECT_EQ(peer.Status(), head.find("Last-Event-ID") == std::string::npos ? 200 : 400) << head;
  }
  const std::string metrics = MetricsText(port());
  EXPECT_NE(metrics.find("mewm_http_requests_total{route=\"/v1/runs/{id}/events\",code=\"400\"} 9"),
            std::string::npos)
      << metrics;
  EXPECT_NE(metrics.find("mewm_http_requests_total{route=\"-\",code=\"431\"} 1"),
            std::string::npos);
}

TEST_F(HttpTest, BearerTokenProtectsEveryEndpoint) {
  const std::string token = "s3cret-token-0123456789abcdef";
  const std::string token_file = dir_.File("http.token");
  ASSERT_TRUE(WriteFileAtomic(token_file, "# the HTTP bearer token\n" + token + "\n"));
  ServerOptions options = HttpOptions();
  options.http_token_file = token_file;
  StartServer(options, Scripted({}));
  auto client = NewClient();
  const std::string id = SubmitOk(*client);
  WatchToEnd(*client, id);
  for (const std::string& target :
       {"/metrics"s, "/v1/runs"s, "/v1/runs/" + id, "/v1/runs/" + id + "/events",
        "/v2/health/ready"s, "/v1/runs/nope"s}) {
    HttpPeer none(port());
    ASSERT_TRUE(none.Get(target));
    EXPECT_EQ(none.Status(), 401) << target;
    EXPECT_NE(none.head().find("WWW-Authenticate: Bearer"), std::string::npos);
    for (const std::string& wrong :
         {"Bearer " + token + "x", "Bearer " + token.substr(1), "Basic " + token, "Bearer"s}) {
      EXPECT_EQ(HttpGet(port(), target, "Authorization: " + wrong + "\r\n").first, 401) << wrong;
    }
  }
  const std::string good = "Authorization: Bearer " + token + "\r\n";
  EXPECT_EQ(HttpGet(port(), "/v1/runs/" + id, good).first, 200);
  EXPECT_EQ(HttpGet(port(), "/v1/runs/" + id, "authorization: bearer " + token + "\r\n").first,
            200);
  HttpPeer peer(port());
  ASSERT_TRUE(peer.Get("/v1/runs/" + id + "/events", good));
  ASSERT_EQ(peer.Status(), 200);
  std::vector<HttpPeer::Sse> events;
  ASSERT_TRUE(peer.Read(SIZE_MAX, &events));
  EXPECT_EQ(Data(events), LogLines(LogPath(id)));
  EXPECT_NE(MetricsText(port(), good).find("\nmewm_http_auth_failures_total 30\n"),
            std::string::npos);
  StopServer();
  // A token that is too short, or a missing file: the server does not start (fails closed).
  ASSERT_TRUE(WriteFileAtomic(token_file, "short\n"));
  auto refused = Server::Create(options, Scripted({}));
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message.find("at least 16"), std::string::npos);
  options.http_token_file = dir_.File("missing.token");
  EXPECT_FALSE(Server::Create(options, Scripted({})));
}

TEST_F(HttpTest, CorsIsOffByDefaultAndOptInForNamedOrigins) {
  // Off (today's behaviour): no CORS headers, OPTIONS is not allowed.
  StartServer(HttpOptions(), Scripted({}));
  {
    HttpPeer peer(port());
    ASSERT_TRUE(peer.Get("/v1/runs", "Origin: http://localhost:3000\r\n"));
    EXPECT_EQ(peer.Status(), 200);
    EXPECT_EQ(peer.head().find("Access-Control"), std::string::npos) << peer.head();
    HttpPeer preflight(port());
    ASSERT_TRUE(
        preflight.Send("OPTIONS /v1/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: "
                       "http://localhost:3000\r\n\r\n"));
    EXPECT_EQ(preflight.Status(), 405);
  }
  StopServer();
  // On, with a token: the named origin reads /v1 and /v2, its preflight passes without the token.
  const std::string token = "cors-token-0123456789abcdef";
  ASSERT_TRUE(WriteFileAtomic(dir_.File("http.token"), token + "\n"));
  ServerOptions options = HttpOptions();
  options.http_token_file = dir_.File("http.token");
  options.http_cors_origins = {"http://localhost:3000", "https://viewer.example.org"};
  StartServer(options, Scripted({}));
  auto client = NewClient();
  const std::string id = SubmitOk(*client);
  WatchToEnd(*client, id);
  const std::string origin = "Origin: http://localhost:3000\r\n";
  const std::string auth = "Authorization: Bearer " + token + "\r\n";
  HttpPeer preflight(port());
  ASSERT_TRUE(
      preflight.Send("OPTIONS /v1/runs/" + id + "/events HTTP/1.1\r\nHost: 127.0.0.1\r\n" + origin +
                     "Access-Control-Request-Method: GET\r\n"
                     "Access-Control-Request-Headers: authorization,last-event-id\r\n\r\n"));
  EXPECT_EQ(preflight.Status(), 204);
  const std::string& head = preflight.head();
  EXPECT_NE(head.find("Access-Control-Allow-Origin: http://localhost:3000\r\n"), std::string::npos)
      << head;
  EXPECT_NE(head.find("Access-Control-Allow-Headers: Authorization, Last-Event-ID\r\n"),
            std::string::npos)
      << head;
  EXPECT_NE(head.find("Access-Control-Allow-Methods: GET, OPTIONS\r\n"), std::string::npos);
  EXPECT_NE(head.find("Vary: Origin\r\n"), std::string::npos);
  for (const std::string& target : {"/v1/runs"s, "/v1/runs/" + id, "/v2/health/ready"s}) {
    HttpPeer peer(port());
    ASSERT_TRUE(peer.Get(target, origin + auth));
    EXPECT_EQ(peer.Status(), 200) << target;
    EXPECT_NE(peer.head().find("Access-Control-Allow-Origin: http://localhost:3000\r\n"),
              std::string::npos)
        << target << "\n"
        << peer.head();
    EXPECT_NE(peer.head().find("Vary: Origin\r\n"), std::string::npos) << target;
  }
  // The event stream, resumed with Last-Event-ID, carries the header too.
  HttpPeer stream(port());
  ASSERT_TRUE(stream.Get("/v1/runs/" + id + "/events", origin + auth + "Last-Event-ID: 17\r\n"));
  ASSERT_EQ(stream.Status(), 200);
  EXPECT_NE(stream.head().find("Access-Control-Allow-Origin: http://localhost:3000"),
            std::string::npos);
  std::vector<HttpPeer::Sse> events;
  ASSERT_TRUE(stream.Read(SIZE_MAX, &events));
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].id, 18u);
  // Without the token a browser can read the 401 (the header is there), not the data.
  HttpPeer refused(port());
  ASSERT_TRUE(refused.Get("/v1/runs", origin));
  EXPECT_EQ(refused.Status(), 401);
  EXPECT_NE(refused.head().find("Access-Control-Allow-Origin: http://localhost:3000"),
            std::string::npos);
  // Another origin gets no Allow-Origin and its preflight is refused; /metrics has no CORS.
  HttpPeer other(port());
  ASSERT_TRUE(other.Get("/v1/runs", "Origin: http://evil.example\r\n" + auth));
  EXPECT_EQ(other.Status(), 200);
  EXPECT_EQ(other.head().find("Access-Control-Allow-Origin"), std::string::npos);
  EXPECT_NE(other.head().find("Vary: Origin"), std::string::npos);
  HttpPeer other_preflight(port());
  ASSERT_TRUE(other_preflight.Send(
      "OPTIONS /v1/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://evil.example\r\n\r\n"));
  EXPECT_EQ(other_preflight.Status(), 403);
  EXPECT_EQ(other_preflight.head().find("Access-Control-Allow-Origin"), std::string::npos);
  HttpPeer metrics(port());
  ASSERT_TRUE(metrics.Get("/metrics", origin + auth));
  EXPECT_EQ(metrics.Status(), 200);
  EXPECT_EQ(metrics.head().find("Access-Control"), std::string::npos);
  StopServer();
  // "*" allows any origin; a malformed origin stops the server from starting.
  options.http_cors_origins = {"*"};
  StartServer(options, Scripted({}));
  HttpPeer any(port());
  ASSERT_TRUE(any.Get("/v2/health/live", "Origin: http://anything.test:8080\r\n" + auth));
  EXPECT_EQ(any.Status(), 200);
  EXPECT_NE(any.head().find("Access-Control-Allow-Origin: *\r\n"), std::string::npos);
  StopServer();
  for (const std::string& bad : {"localhost:3000"s, "http://host/path"s, "http://host/"s, ""s}) {
    options.http_cors_origins = {bad};
    auto not_started = Server::Create(options, Scripted({}));
    ASSERT_FALSE(not_started) << bad;
    EXPECT_NE(not_started.error().message.find("CORS origin"), std::string::npos) << bad;
  }
}

TEST_F(HttpTest, SlowStreamIsDroppedAndCountedWithoutHoldingUpOthers) {
  auto gate = std::make_shared<Gate>();
  Script script = PausedAt(3, gate);
  script.patients = 1;
  script.candidates = 120;
  script.payload = 100000;  // 12 MB of events: more than any socket buffer holds
  ServerOptions options = HttpOptions();
  options.stream_stall_ms = 300;
  StartServer(options, Scripted(script));
  auto client = NewClient();
  const std::string id = SubmitOk(*client);
  ASSERT_TRUE(gate->WaitReached());
  HttpPeer slow(port(), 4096);  // connects, asks, never reads
  ASSERT_TRUE(slow.Get("/v1/runs/" + id + "/events"));
  HttpPeer fast(port());
  ASSERT_TRUE(fast.Get("/v1/runs/" + id + "/events"));
  ASSERT_EQ(fast.Status(), 200);
  gate->Release();
  std::vector<HttpPeer::Sse> events;
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(fast.Read(SIZE_MAX, &events));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(Data(events), LogLines(LogPath(id)));
  std::printf("SSE: %zu events (%.1f MB) in %.3f s beside a stalled stream\n", events.size(),
              double(fs::file_size(LogPath(id))) / 1e6, seconds);
  // The stalled client is dropped within its stall timeout and counted.
  std::string metrics;
  for (int i = 0; i < 100; ++i) {
    metrics = MetricsText(port());
    if (metrics.find("\nmewm_sse_dropped_total 1\n") != std::string::npos) break;
    std::this_thread::sleep_for(50ms);
  }
  EXPECT_NE(metrics.find("\nmewm_sse_dropped_total 1\n"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("\nmewm_sse_streams 0\n"), std::string::npos);
}

TEST_F(HttpTest, LargeLateJoinIsPacedByTheSocketNotByTheLoopTimer) {
  // A stream whose buffer drained while more of the log was ready once waited for the loop's 1 s
  // tick (2 MB/s); it must go at the socket's pace. 10 MB: 5 s then, well under 1 s now.
  Script script;
  script.patients = 1;
  script.candidates = 100;
  script.payload = 100000;
  StartServer(HttpOptions(), Scripted(script));
  auto client = NewClient();
  const std::string id = SubmitOk(*client);
  WatchToEnd(*client, id);
  HttpPeer peer(port());
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(peer.Get("/v1/runs/" + id + "/events"));
  ASSERT_EQ(peer.Status(), 200);
  std::vector<HttpPeer::Sse> events;
  ASSERT_TRUE(peer.Read(SIZE_MAX, &events));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(Data(events), LogLines(LogPath(id)));
  std::printf("SSE late join: %zu events, %.1f MB in %.3f s\n", events.size(),
              double(fs::file_size(LogPath(id))) / 1e6, seconds);
  EXPECT_LT(seconds, 3.0);
}

TEST_F(HttpTest, StreamsOverTheLimitGet503AndHealthSaysWhenTheQueueIsFull) {
  auto gate = std::make_shared<Gate>();
  ServerOptions options = HttpOptions();
  options.max_event_streams = 2;
  options.queue_capacity = 1;
  {
    // Created but not serving yet (Serve() not called): live, not ready.
    auto created = Server::Create(options, Scripted({}));
    ASSERT_TRUE(created);
    const int http = (*created)->metrics_port();
    EXPECT_EQ(HttpGet(http, "/v2/health/live").first, 200);
    const auto [status, body] = HttpGet(http, "/v2/health/ready");
    EXPECT_EQ(status, 503);
    EXPECT_NE(body.find("starting"), std::string::npos) << body;
  }
  StartServer(options, Scripted(PausedAt(3, gate)));
  auto client = NewClient();
  ASSERT_TRUE(client->GetHealth());  // a reply: Serve() runs
  EXPECT_EQ(HttpGet(port(), "/v2/health/live").first, 200);
  EXPECT_EQ(HttpGet(port(), "/v2/health/ready").first, 200);
  const std::string id = SubmitOk(*client);
  ASSERT_TRUE(gate->WaitReached());
  HttpPeer a(port()), b(port());
  ASSERT_TRUE(a.Get("/v1/runs/" + id + "/events"));
  ASSERT_TRUE(b.Get("/v1/runs/" + id + "/events"));
  EXPECT_EQ(a.Status(), 200);
  EXPECT_EQ(b.Status(), 200);
  const auto [third, body] = HttpGet(port(), "/v1/runs/" + id + "/events");
  EXPECT_EQ(third, 503);
  EXPECT_NE(body.find("too many event streams"), std::string::npos);
  // One run active, one queued: the queue (capacity 1) is full, so not ready.
  SubmitOk(*client);
  const auto [ready, reason] = HttpGet(port(), "/v2/health/ready");
  EXPECT_EQ(ready, 503);
  EXPECT_EQ(nlohmann::json::parse(reason).at("reason"), "the run queue is full");
  EXPECT_EQ(HttpGet(port(), "/v2/health/live").first, 200);
  const std::string metrics = MetricsText(port());
  EXPECT_NE(metrics.find("\nmewm_sse_rejected_total 1\n"), std::string::npos);
  EXPECT_NE(metrics.find("\nmewm_runs{state=\"queued\"} 1\n"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("\nmewm_runs{state=\"running\"} 1\n"), std::string::npos);
  gate->Release();
}

TEST_F(HttpTest, OneClientAddressCannotHoldEveryStream) {
  // A client that opens streams and never reads them costs nothing while a run is quiet, so the
  // global limit alone let one address take every slot. Streams from one address are capped.
  {
    ServerOptions bad = HttpOptions();
    bad.max_event_streams_per_peer = 0;
    auto refused = Server::Create(bad, Scripted({}));
    ASSERT_FALSE(refused);
    EXPECT_EQ(refused.error().code, ErrorCode::kInvalidArgument);
  }
  auto gate = std::make_shared<Gate>();
  ServerOptions options = HttpOptions();
  options.max_event_streams = 4;
  options.max_event_streams_per_peer = 2;
  StartServer(options, Scripted(PausedAt(3, gate)));
  auto client = NewClient();
  const std::string id = SubmitOk(*client);
  ASSERT_TRUE(gate->WaitReached());
  const std::string events = "/v1/runs/" + id + "/events";
  auto a = std::make_unique<HttpPeer>(port());
  HttpPeer b(port());
  ASSERT_TRUE(a->Get(events));
  ASSERT_TRUE(b.Get(events));
  ASSERT_EQ(a->Status(), 200);
  ASSERT_EQ(b.Status(), 200);
  HttpPeer third(port());
  ASSERT_TRUE(third.Get(events));
  EXPECT_EQ(third.Status(), 429);
  EXPECT_NE(third.head().find("Retry-After: 1"), std::string::npos) << third.head();
  EXPECT_NE(third.Body().find("too many event streams open from 127.0.0.1 (2)"), std::string::npos);
  // Another address still gets a stream, and short requests from the capped one are answered.
  HttpPeer other(port(), 0, "127.0.0.2");
  ASSERT_TRUE(other.connected());
  ASSERT_TRUE(other.Get(events));
  EXPECT_EQ(other.Status(), 200);
  EXPECT_EQ(HttpGet(port(), "/v2/health/live").first, 200);
  // Closing one of its streams gives the address its slot back (the loop sees the close).
  a.reset();
  int status = 0;
  for (int i = 0; i < 100 && status != 200; ++i) {
    HttpPeer again(port());
    if (again.Get(events)) status = again.Status();
    if (status != 200) std::this_thread::sleep_for(20ms);
  }
  EXPECT_EQ(status, 200);
  const std::string metrics = MetricsText(port());
  EXPECT_NE(metrics.find("\nmewm_sse_rejected_total "), std::string::npos);
  EXPECT_EQ(metrics.find("\nmewm_sse_rejected_total 0\n"), std::string::npos) << metrics;
  gate->Release();
}

/// A stream that stays open and sends nothing.
class QuietStream : public StreamSource {
 public:
  bool Pull(std::string*, std::size_t, std::uint64_t*) override { return true; }
};

TEST(HttpServerTest, AnIpv6ClientIsCountedByItsSlash64) {
  // One IPv6 host usually has a whole /64 to take addresses from: the limit counts the /64.
  HttpLimits limits;
  limits.max_streams_per_peer = 1;
  HttpCounters counters;
  auto server = HttpServer::Start(
      "::1", 0, limits,
      [](const HttpRequest&) {
        HttpResponse response;
        response.stream = std::make_unique<QuietStream>();
        return response;
      },
      &counters);
  if (!server) GTEST_SKIP() << "no IPv6 loopback here: " << server.error().message;
  const auto connect = [&] {
    const int fd = ::socket(AF_INET6, SOCK_STREAM, 0);
    timeval timeout{10, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    sockaddr_in6 address{};
    address.sin6_family = AF_INET6;
    address.sin6_port = htons(std::uint16_t((*server)->port()));
    address.sin6_addr = in6addr_loopback;
    const std::string get = "GET /events HTTP/1.1\r\nHost: x\r\n\r\n";
    EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
    EXPECT_EQ(::send(fd, get.data(), get.size(), MSG_NOSIGNAL), ssize_t(get.size()));
    return fd;
  };
  const auto head = [](int fd) {
    std::string in;
    char buffer[4096];
    while (in.find("\r\n\r\n") == std::string::npos) {
      const ssize_t n = ::recv(fd, buffer, sizeof(buffer), 0);
      if (n <= 0) break;
      in.append(buffer, std::size_t(n));
    }
    return in;
  };
  const int first = connect();
  EXPECT_EQ(head(first).rfind("HTTP/1.1 200", 0), 0u);
  const int second = connect();
  std::string refused = head(second);
  char buffer[4096];
  for (ssize_t n; (n = ::recv(second, buffer, sizeof(buffer), 0)) > 0;) refused.append(buffer, n);
  EXPECT_EQ(refused.rfind("HTTP/1.1 429", 0), 0u) << refused;
  EXPECT_NE(refused.find("from ::/64 (1)"), std::string::npos) << refused;
  EXPECT_EQ(counters.streams_rejected.load(), 1u);
  ::close(first);
  ::close(second);
}

/// promtool's own lint rules that matter here, checked without it: every sample belongs to a
/// family announced by HELP and TYPE before it, counters end in _total, nothing is announced twice.
void ExpectWellFormedExposition(const std::string& text) {
  std::set<std::string> announced;
  std::map<std::string, std::string> types;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("# HELP ", 0) == 0) {
      const std::string name = line.substr(7, line.find(' ', 7) - 7);
      EXPECT_TRUE(announced.insert(name).second) << "announced twice: " << name;
      continue;
    }
    if (line.rfind("# TYPE ", 0) == 0) {
      const std::string rest = line.substr(7);
      types[rest.substr(0, rest.find(' '))] = rest.substr(rest.find(' ') + 1);
      continue;
    }
    std::string name = line.substr(0, line.find_first_of("{ "));
    for (const char* suffix : {"_bucket", "_sum", "_count"}) {
      const std::string s = suffix;
      if (name.size() > s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0 &&
          types[name.substr(0, name.size() - s.size())] == "histogram") {
        name.resize(name.size() - s.size());
      }
    }
    EXPECT_TRUE(announced.count(name)) << "sample before its HELP: " << line;
    if (types[name] == "counter") {
      EXPECT_EQ(name.substr(name.size() - 6), "_total") << name;
    }
  }
}

TEST_F(HttpTest, MetricsCountRequestsRunsBytesAndPassPromtool) {
  StartServer(HttpOptions(), Scripted({}));
  auto client = NewClient();
  const std::string id = SubmitOk(*client);
  WatchToEnd(*client, id);
  EXPECT_FALSE(client->GetStatus("nope"));
  EXPECT_EQ(HttpGet(port(), "/v1/runs/nope").first, 404);
  HttpPeer peer(port());
  ASSERT_TRUE(peer.Get("/v1/runs/" + id + "/events"));
  std::vector<HttpPeer::Sse> events;
  ASSERT_TRUE(peer.Read(SIZE_MAX, &events));
  // The run's record and its history are final before the log thread has published every event
  // (events.jsonl first, then the PUB socket): under load the watcher can finish from history
  // first. Wait (bounded) for the 19th publish before reading the counters.
  const std::string published_all = "stage_seconds_bucket{stage=\"publish\",le=\"+Inf\"} 19\n";
  std::string text = MetricsText(port());
  for (int i = 0; i < 500 && text.find(published_all) == std::string::npos; ++i) {
    std::this_thread::sleep_for(10ms);
    text = MetricsText(port());
  }
  for (const std::string& expected : {
           "mewm_build_info{version=\""s,
           "\nmewm_runs{state=\"finished\"} 1\n"s,
           "\nmewm_requests_total{kind=\"submit\",code=\"ok\"} 1\n"s,
           "\nmewm_requests_total{kind=\"status\",code=\"unknown_run\"} 1\n"s,
           "\nmewm_http_requests_total{route=\"/v1/runs/{id}\",code=\"404\"} 1\n"s,
           "\nmewm_sse_events_sent_total 19\n"s,
           "mewm_stage_seconds_bucket{stage=\"publish\",le=\"+Inf\"} 19\n"s,
       }) {
    EXPECT_NE(text.find(expected), std::string::npos) << expected << "\n" << text;
  }
  const auto bytes_at = text.find("\nmewm_bytes_published_total ");
  ASSERT_NE(bytes_at, std::string::npos);
  EXPECT_GT(std::stod(text.substr(bytes_at + 28)), 19 * 40.0);
  const std::string hash = BuildGitHash();
  EXPECT_TRUE(hash == "unknown" || hash.find_first_not_of("0123456789abcdef") == std::string::npos)
      << hash;
  ExpectWellFormedExposition(text);
  // Debian's promtool (package prometheus, 96 MB: not in tools/dev.sh's set) when installed.
  if (std::system("command -v promtool >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "promtool not installed (apt-get install prometheus): checked the format "
                    "rules above without it";
  }
  const std::string file = dir_.File("metrics.txt");
  ASSERT_TRUE(WriteFileAtomic(file, text));
  const std::string out = dir_.File("promtool.txt");
  const int rc = std::system(("promtool check metrics < " + file + " > " + out + " 2>&1").c_str());
  auto report = ReadFile(out);
  EXPECT_EQ(rc, 0) << (report ? *report : report.error().message);
}

}  // namespace
}  // namespace mewm::streaming

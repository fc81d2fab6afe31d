// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// `mewm bench stream`: the streaming server path against a raw cppzmq PUB/SUB baseline sending
// the same bytes, side by side in one process on loopback (docs/BENCHMARKS.md).
//
//   server path = event made by a run -> events.jsonl -> history -> Cap'n Proto envelope -> PUB
//                 -> SUB -> decode, seq check (and SHA-256 check of volume frames) in the client
//   raw         = the same topic and payload bytes through a bare PUB/SUB pair
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <thread>
#include <zmq.hpp>
#include <zmq_addon.hpp>

#include "commands.h"
#include "mewm/core/file_util.h"
#include "mewm/streaming/client.h"
#include "mewm/streaming/server.h"

namespace mewm::cli {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using scenarios::Event;

struct Load {
  int events = 0;
  std::size_t payload = 0;  ///< rationale bytes (event) or volume bytes
  double rate_per_s = 0.0;  ///< 0 = as fast as possible
  bool volumes = false;     ///< each event is a plan_decided with a .vdb frame
  std::string volume_path;
};

struct Result {
  double seconds = 0.0;
  double sender_seconds = 0.0;  ///< server path: how long the run took to emit everything
  double cpu_us_per_event = 0.0;
  std::uint64_t received = 0, bytes = 0;
  std::vector<double> latency_us;
  double Rate() const { return double(received) / seconds; }
  double MBps() const { return double(bytes) / seconds / 1e6; }
  double Percentile(double q) const {
    if (latency_us.empty()) return 0.0;
    std::vector<double> v = latency_us;
    const auto k = std::size_t(q * double(v.size() - 1));
    std::nth_element(v.begin(), v.begin() + std::ptrdiff_t(k), v.end());
    return v[k];
  }
};

/// User plus system CPU seconds of this process (all threads).
double CpuSeconds() {
  rusage usage{};
  ::getrusage(RUSAGE_SELF, &usage);
  return double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
         1e-6 * double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec);
}

/// Paces a sender at `rate` per second (none when 0).
class Pacer {
 public:
  explicit Pacer(double rate) : rate_(rate), start_(Clock::now()) {}
  void Wait(int i) const {
    if (rate_ <= 0) return;
    std::this_thread::sleep_until(start_ + std::chrono::nanoseconds(std::int64_t(i * 1e9 / rate_)));
  }

 private:
  double rate_;
  Clock::time_point start_;
};

/// The baseline: bare PUB/SUB, the same topic and envelope bytes, timestamp inside the payload.
Result RunRaw(const Load& load, const std::string& payload) {
  // One context (I/O thread) each, as a publishing and a subscribing process would have; the
  // server path has the same: the server's and the client's.
  zmq::context_t pub_context, sub_context;
  zmq::socket_t pub(pub_context, zmq::socket_type::pub), sub(sub_context, zmq::socket_type::sub);
  pub.set(zmq::sockopt::sndhwm, 0);
  sub.set(zmq::sockopt::rcvhwm, 0);
  pub.bind("tcp://127.0.0.1:*");
  sub.set(zmq::sockopt::subscribe, "");
  sub.connect(pub.get(zmq::sockopt::last_endpoint));
  // Wait until the subscription is live.
  sub.set(zmq::sockopt::rcvtimeo, 10);
  for (zmq::message_t probe;;) {
    (void)pub.send(zmq::str_buffer("probe"), zmq::send_flags::none);
    if (sub.recv(probe)) break;
  }
  sub.set(zmq::sockopt::rcvtimeo, 5000);
  Result result;
  Clock::time_point t0;
  std::thread sender([&] {
    const Pacer pacer(load.rate_per_s);
    t0 = Clock::now();
    for (int i = 0; i < load.events; ++i) {
      pacer.Wait(i);
      std::string body = payload;
      const std::int64_t now = scenarios::NowNs();
      std::memcpy(body.data(), &now, sizeof(now));
      std::array<zmq::const_buffer, 2> frames = {zmq::str_buffer("run/bench/event"),
                                                 zmq::buffer(body)};
      (void)zmq::send_multipart(pub, frames);
    }
  });
  std::vector<zmq::message_t> frames;
  while (result.received < std::uint64_t(load.events)) {
    frames.clear();
    if (!zmq::recv_multipart(sub, std::back_inserter(frames))) break;
    if (frames.size() != 2 || frames[0].to_string_view() == "probe") continue;
    std::int64_t sent;
    std::memcpy(&sent, frames[1].data(), sizeof(sent));
    result.latency_us.push_back(double(scenarios::NowNs() - sent) / 1e3);
    result.bytes += frames[1].size();
    ++result.received;
  }
  result.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  sender.join();
  return result;
}

/// A run that makes `load.events` events as fast as asked, then finishes. As with the Runner
/// under a server, the server writes each event to events.jsonl before publishing it.
streaming::RunFunction LoadRun(const Load& load, Clock::time_point* t0) {
  return [load, t0](const scenarios::ScenarioSpec& spec, const scenarios::RunOptions& options,
                    scenarios::EventSink& sink) -> Expected<scenarios::RunSummary> {
    fs::create_directories(options.output_dir);  // the server writes events.jsonl here
    scenarios::EventSink& out = sink;
    std::uint64_t seq = 0;
    const Pacer pacer(load.rate_per_s);
    *t0 = Clock::now();
    const std::string rationale(load.payload, 'r');
    for (int i = 0; i < load.events; ++i) {
      pacer.Wait(i);
      scenarios::EventBody body;
      if (load.volumes) {
        body = scenarios::PlanDecided{
            "P" + std::to_string(i), {{"Epirubicin"}, 0.5, 0.1}, 20, load.volume_path};
      } else {
        body = scenarios::ProposalMade{
            "P" + std::to_string(i), {"Epirubicin"}, {"Lipiodol"}, rationale};
      }
      MEWM_RETURN_IF_ERROR(
          out.Emit(Event{options.run_id, ++seq, scenarios::NowNs(), std::move(body)}));
    }
    const double emit_seconds = std::chrono::duration<double>(Clock::now() - *t0).count();
    MEWM_RETURN_IF_ERROR(out.Emit(Event{options.run_id, ++seq, scenarios::NowNs(),
                                        scenarios::RunFinished{0, 0, emit_seconds}}));
    return scenarios::RunSummary{options.run_id, options.output_dir, 0, 0, 0, false};
  };
}

/// The server path: a one-run server and a watching client in this process.
Expected<Result> RunServer(const Load& load, const std::string& dir, std::size_t* envelope_bytes) {
  Clock::time_point t0;
  streaming::ServerOptions options;
  options.control_endpoint = "tcp://127.0.0.1:*";
  options.event_endpoint = "tcp://127.0.0.1:*";
  options.send_hwm = 0;  // like the baseline: no high-water mark
  options.heartbeat_ms = 20;
  options.recover_runs = false;
  MEWM_TRY(auto server, streaming::Server::Create(options, LoadRun(load, &t0)));
  std::thread serve([&] { (void)server->Serve(); });
  streaming::ClientOptions client_options;
  client_options.control_endpoint = server->control_endpoint();
  client_options.event_endpoint = server->event_endpoint();
  client_options.receive_hwm = 0;
  MEWM_TRY(auto client, streaming::Client::Connect(client_options));
  Result result;
  Status submitted;
  bool finished = false;
  std::atomic<bool> live{false};
  streaming::WatchOptions watch;  // every run: the watcher is live before the run exists
  watch.stop = [&] { return finished || !submitted; };
  std::thread submit([&] {
    // Start the run once the watcher has seen a heartbeat: every event then arrives live.
    for (int i = 0; i < 10000 && !live; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    scenarios::ScenarioSpec spec;
    spec.name = "bench";
    scenarios::RunOptions run;
    run.output_dir = dir;
    run.run_id = "bench-1";
    auto id = server->SubmitLocal(spec, run);
    if (!id) submitted = id.error();
  });
  const Status watched = client->Watch(
      watch,
      [&](const streaming::RunEvent& e, const std::string& volume) {
        if (const auto* end = std::get_if<scenarios::RunFinished>(&e.event.body)) {
          result.sender_seconds = end->seconds;
          finished = true;
          return false;
        }
        result.latency_us.push_back(double(scenarios::NowNs() - e.event.timestamp_ns) / 1e3);
        result.bytes += load.volumes ? volume.size() : 0;
        ++result.received;
        return true;
      },
      [&](const streaming::ServerEvent&) { live = true; });
  result.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  submit.join();
  server->Stop();
  serve.join();
  MEWM_RETURN_IF_ERROR(watched);
  MEWM_RETURN_IF_ERROR(submitted);
  if (result.received != std::uint64_t(load.events) || client->stats().from_history > 0) {
    return MakeError(ErrorCode::kInternal, "the watcher missed live events (" +
                                               std::to_string(result.received) + " of " +
                                               std::to_string(load.events) + ")");
  }
  if (!load.volumes) {
    // The encoded size of one event, for the baseline's payload.
    scenarios::ProposalMade body{
        "P0", {"Epirubicin"}, {"Lipiodol"}, std::string(load.payload, 'r')};
    *envelope_bytes =
        streaming::EncodeEnvelope(streaming::RunEvent{Event{"bench-1", 1, 0, body}, "bench-1", {}})
            .size();
    result.bytes = result.received * *envelope_bytes;
  }
  return result;
}

}  // namespace

int RunStreamBench(int events, const std::string& json_path) {
  const fs::path dir =
      fs::temp_directory_path() / ("mewm-bench-stream-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  nlohmann::json out;
  std::printf("%-34s %12s %12s %10s %10s %10s %10s\n", "case", "events/s", "MB/s", "p50 us",
              "p99 us", "p99.9 us", "received");
  const auto row = [&](const std::string& name, const Result& r) {
    std::printf("%-34s %12.0f %12.1f %10.1f %10.1f %10.1f %10llu\n", name.c_str(), r.Rate(),
                r.MBps(), r.Percentile(0.5), r.Percentile(0.99), r.Percentile(0.999),
                static_cast<unsigned long long>(r.received));
    out[name] = {{"events_per_s", r.Rate()},
                 {"mb_per_s", r.MBps()},
                 {"p50_us", r.Percentile(0.5)},
                 {"p99_us", r.Percentile(0.99)},
                 {"p999_us", r.Percentile(0.999)},
                 {"received", r.received},
                 {"seconds", r.seconds}};
  };
  const auto fail = [&](const Error& e) {
    fs::remove_all(dir);
    return Fail(e);
  };

  // 1. Throughput of 1 KiB events, as fast as the sender can go. Loopback rates on 2 shared
  // cores swing by 2x from run to run, so the two paths alternate, 3 times each, and the
  // medians are compared; CPU time per event (all threads) is the steadier figure.
  Load burst{events, 880, 0.0, false, ""};  // an 880-character rationale: a 1 KiB envelope
  std::size_t envelope = 0;
  std::vector<Result> raw_runs, server_runs;
  for (int repeat = 0; repeat < 3; ++repeat) {
    const double cpu0 = CpuSeconds();
    auto server_burst = RunServer(burst, (dir / "burst").string(), &envelope);
    if (!server_burst) return fail(server_burst.error());
    server_burst->cpu_us_per_event = (CpuSeconds() - cpu0) * 1e6 / burst.events;
    server_runs.push_back(std::move(*server_burst));
    fs::remove_all(dir / "burst");
    const double cpu1 = CpuSeconds();
    raw_runs.push_back(RunRaw(burst, std::string(envelope, 'x')));
    raw_runs.back().cpu_us_per_event = (CpuSeconds() - cpu1) * 1e6 / burst.events;
  }
  const auto median = [](std::vector<Result> runs) {
    std::sort(runs.begin(), runs.end(),
              [](const Result& a, const Result& b) { return a.Rate() < b.Rate(); });
    return runs[runs.size() / 2];
  };
  const Result raw_burst = median(raw_runs), server_burst = median(server_runs);
  std::printf("1 KiB events (envelope %zu bytes), unpaced, median of 3:\n", envelope);
  row("raw PUB/SUB", raw_burst);
  row("server path", server_burst);
  const double throughput_ratio = server_burst.Rate() / raw_burst.Rate();
  std::printf(
      "  server / raw throughput: %.2f; CPU per event %.1f us (server path, all threads)"
      " vs %.1f us (raw)\n",
      throughput_ratio, server_burst.cpu_us_per_event, raw_burst.cpu_us_per_event);
  std::printf("  each repeat, raw vs server events/s:");
  for (int repeat = 0; repeat < 3; ++repeat) {
    std::printf(" %.0f/%.0f", raw_runs[repeat].Rate(), server_runs[repeat].Rate());
  }
  std::printf("\n");
  out["cpu_us_per_event"] = {{"raw", raw_burst.cpu_us_per_event},
                             {"server", server_burst.cpu_us_per_event}};

  // 2. Latency at 10k events/s.
  Load paced{std::min(events, 20000), 880, 10000.0, false, ""};
  auto server_paced = RunServer(paced, (dir / "paced").string(), &envelope);
  if (!server_paced) return fail(server_paced.error());
  const Result raw_paced = RunRaw(paced, std::string(envelope, 'x'));
  std::printf("1 KiB events at 10k/s:\n");
  row("raw PUB/SUB @10k/s", raw_paced);
  row("server path @10k/s", *server_paced);

  // 3. 4 MiB volume frames.
  const std::string volume_path = (dir / "volume.vdb").string();
  std::string volume(4u << 20, '\0');
  for (std::size_t i = 0; i < volume.size(); ++i) volume[i] = char(i * 2654435761u >> 24);
  if (auto written = WriteFileAtomic(volume_path, volume); !written) return fail(written.error());
  Load frames{200, volume.size(), 0.0, true, volume_path};
  auto server_frames = RunServer(frames, (dir / "frames").string(), &envelope);
  if (!server_frames) return fail(server_frames.error());
  const Result raw_frames = RunRaw(Load{200, volume.size(), 0.0, false, ""}, volume);
  std::printf("4 MiB volume frames:\n");
  row("raw PUB/SUB 4 MiB", raw_frames);
  row("server path 4 MiB (+SHA-256 x2)", *server_frames);
  std::printf("  server / raw MB/s: %.2f\n", server_frames->MBps() / raw_frames.MBps());

  out["throughput_ratio"] = throughput_ratio;
  out["volume_ratio"] = server_frames->MBps() / raw_frames.MBps();
  out["events"] = events;
  fs::remove_all(dir);
  if (!json_path.empty()) {
    if (auto w = WriteFileAtomic(json_path, out.dump(2) + "\n"); !w) return Fail(w.error());
  }
  return 0;
}

}  // namespace mewm::cli

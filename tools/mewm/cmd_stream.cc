// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The streaming commands: `mewm serve`, `submit`, `watch`, `status`, `cancel` and `keygen`
// (docs/PROTOCOL.md).
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>

#include "commands.h"
#include "mewm/core/file_util.h"
#include "mewm/core/text.h"
#include "mewm/streaming/client.h"
#include "mewm/streaming/server.h"
#include "terminal_sink.h"

namespace mewm::cli {
namespace {

namespace fs = std::filesystem;

std::atomic<bool> g_stop{false};
std::atomic<streaming::Server*> g_server{nullptr};

extern "C" void OnStopSignal(int) {
  g_stop.store(true);
  if (streaming::Server* server = g_server.load()) server->Stop();
  std::signal(SIGINT, SIG_DFL);  // a second Ctrl-C kills at once
  std::signal(SIGTERM, SIG_DFL);
}

void CatchStopSignals() {
  std::signal(SIGINT, OnStopSignal);
  std::signal(SIGTERM, OnStopSignal);
}

struct ClientFlags {
  std::string control = "tcp://127.0.0.1:5555";
  std::string events = "tcp://127.0.0.1:5556";
  std::string server_key, key;
  int timeout_ms = 5000;
};

void AddClientFlags(CLI::App& app, ClientFlags* flags) {
  app.add_option("--control", flags->control, "The server's control endpoint")
      ->capture_default_str();
  app.add_option("--events", flags->events, "The server's event endpoint")->capture_default_str();
  app.add_option("--server-key", flags->server_key,
                 "CURVE: the server's public key file (from `mewm keygen`)");
  app.add_option("--key", flags->key,
                 "CURVE: this client's key pair, BASE for BASE.key and BASE.pub (`mewm keygen`)");
  app.add_option("--timeout-ms", flags->timeout_ms, "How long to wait for a reply (ms, >= 1)")
      ->capture_default_str()
      ->check(CLI::Range(1, 24 * 3600 * 1000));
}

/// --results-root: a folder, or a path where one can be created (its nearest existing ancestor
/// is a writable folder). Checked when the flags are parsed, before anything starts.
std::string CheckResultsRoot(const std::string& value) {
  std::error_code ec;
  fs::path path = fs::absolute(value, ec);
  if (ec || value.empty()) return "'" + value + "' is not a usable path";
  if (fs::exists(path, ec)) {
    if (!fs::is_directory(path, ec)) return "'" + value + "' exists and is not a folder";
    if (::access(path.c_str(), W_OK | X_OK) != 0) return "folder '" + value + "' is not writable";
    return "";
  }
  for (fs::path parent = path.parent_path(); !parent.empty(); parent = parent.parent_path()) {
    if (!fs::exists(parent, ec)) {
      if (parent == parent.parent_path()) break;
      continue;
    }
    if (!fs::is_directory(parent, ec)) {
      return "cannot create '" + value + "': '" + parent.string() + "' is not a folder";
    }
    if (::access(parent.c_str(), W_OK | X_OK) != 0) {
      return "cannot create '" + value + "': '" + parent.string() + "' is not writable";
    }
    return "";
  }
  return "cannot create '" + value + "'";
}

Expected<std::unique_ptr<streaming::Client>> ConnectClient(const ClientFlags& flags) {
  streaming::ClientOptions options;
  options.control_endpoint = flags.control;
  options.event_endpoint = flags.events;
  options.request_timeout_ms = flags.timeout_ms;
  if (flags.server_key.empty() != flags.key.empty()) {
    return MakeError(ErrorCode::kInvalidArgument, "CURVE needs both --server-key and --key");
  }
  if (!flags.server_key.empty()) {
    MEWM_TRY(options.server_public_key, streaming::ReadCurveKey(flags.server_key));
    MEWM_TRY(options.public_key, streaming::ReadCurveKey(flags.key + ".pub"));
    MEWM_TRY(options.secret_key, streaming::ReadCurveKey(flags.key + ".key"));
  }
  return streaming::Client::Connect(options);
}

/// Exit code of a watched run: 0 finished, 3 finished with failed patients, 1 failed,
/// 4 cancelled.
int ExitCodeOf(const streaming::RunStatus& run) {
  switch (run.state) {
    case streaming::RunState::kFinished:
      return run.patients_failed > 0 ? 3 : 0;
    case streaming::RunState::kCancelled:
      return 4;
    case streaming::RunState::kFailed:
      return 1;
    default:
      return 0;
  }
}

/// Shows runs' events on the terminal (one display per run) or as JSON lines on stdout.
int WatchRuns(streaming::Client& client, const std::string& run_id, bool json) {
  std::map<std::string, std::unique_ptr<TerminalSink>> displays;
  if (run_id.empty() && !json) {
    std::fprintf(stderr, "watching every run (Ctrl-C to stop)\n");
  }
  streaming::WatchOptions options;
  options.run_id = run_id;
  options.stop = [] { return g_stop.load(); };
  CatchStopSignals();
  const Status watched =
      client.Watch(options, [&](const streaming::RunEvent& e, const std::string&) {
        if (json) {
          std::cout << scenarios::EventToJson(e.event) << "\n" << std::flush;
          return true;
        }
        auto& display = displays[e.event.run_id];
        if (!display) {
          display = std::make_unique<TerminalSink>(false);
          if (run_id.empty())
            std::fprintf(stderr, "== %s\n", EscapeControl(e.event.run_id).c_str());
        }
        (void)display->Emit(e.event);
        return true;
      });
  if (!watched) return Fail(watched.error());
  if (g_stop.load() || run_id.empty()) return 0;
  auto status = client.GetStatus(run_id);
  if (!status) return Fail(status.error());
  return ExitCodeOf(*status);
}

/// One run's line, with the server's text escaped (EscapeControl): a run's output folder is what a
/// submitter wrote, and the server is another party.
std::string Row(const streaming::RunStatus& run) {
  char line[512];
  std::snprintf(line, sizeof(line), "%-28s %-10s %3d/%-3d failed %-3d seq %-7llu %s",
                EscapeControl(run.run_id).c_str(), streaming::ToString(run.state),
                run.patients_done, run.patients_total, run.patients_failed,
                static_cast<unsigned long long>(run.last_seq),
                EscapeControl(run.output_dir).c_str());
  return line;
}

}  // namespace

Action RegisterServe(CLI::App& app, const BackendRegistry& backends) {
  auto o = std::make_shared<streaming::ServerOptions>();
  o->backends = &backends;
  auto no_volumes = std::make_shared<bool>(false);
  auto disk_gb = std::make_shared<double>(double(o->limits.max_disk_bytes) / 1e9);
  auto hours = std::make_shared<double>(o->limits.max_seconds / 3600.0);
  app.add_option("--control", o->control_endpoint, "Control (ROUTER) endpoint")
      ->capture_default_str();
  app.add_option("--events", o->event_endpoint, "Event (PUB) endpoint")->capture_default_str();
  app.add_option("--results-root", o->results_root,
                 "Every run writes under this folder (created if missing); scenario paths cannot "
                 "leave it")
      ->capture_default_str()
      ->check(CLI::Validator(CheckResultsRoot, "FOLDER", "a folder or a creatable path"));
  app.add_option("--scenario-base", o->scenario_base,
                 "Submitted scenarios' input files (models, manifests) must lie under this folder")
      ->capture_default_str()
      ->check(CLI::ExistingDirectory);
  app.add_option("--queue", o->queue_capacity, "Runs that may wait; more are rejected")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  app.add_option("--hwm", o->send_hwm, "PUB high-water mark per subscriber (messages; 0 = none)")
      ->capture_default_str()
      ->check(CLI::Range(0, 100000000));
  app.add_option("--heartbeat-ms", o->heartbeat_ms, "Heartbeat period when idle")
      ->capture_default_str()
      ->check(CLI::Range(1, 3600 * 1000));
  app.add_option("--max-request-bytes", o->max_request_bytes, "Larger requests get an error")
      ->capture_default_str()
      ->check(CLI::Range(std::size_t(1), o->hard_max_message_bytes));
  app.add_option("--max-patients", o->limits.max_patients,
                 "Admission: refuse a synthetic cohort of more patients (0 = no limit)")
      ->capture_default_str()
      ->check(CLI::Range(0, 100000000));
  app.add_option("--max-voxels", o->limits.max_voxels,
                 "Admission: refuse more CT voxels per synthetic patient (0 = no limit; 1 mm is "
                 "7.2 M, 0.5 mm 58 M)")
      ->capture_default_str();
  app.add_option("--max-beam-samples", o->limits.max_beam_samples,
                 "Admission: refuse a larger planner.beams x planner.samples (0 = no limit)")
      ->capture_default_str()
      ->check(CLI::Range(0, 100000000));
  app.add_option("--max-disk-gb", *disk_gb,
                 "Admission: refuse a run estimated to write more (GB; 0 = no limit)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1e9));
  app.add_option("--max-hours", *hours,
                 "Admission: refuse a run estimated to take longer (hours; 0 = no limit)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1e6));
  app.add_option("--metrics-port,--http-port", o->metrics_port,
                 "The HTTP port: Prometheus /metrics, /v2/health/live|ready, /v1/runs and the "
                 "runs' event streams (SSE) (0 = any free port; -1 = off)")
      ->capture_default_str()
      ->check(CLI::Range(-1, 65535));
  app.add_option("--metrics-address,--http-address", o->metrics_address,
                 "Address of the HTTP port (keep 127.0.0.1 unless a token protects it)")
      ->capture_default_str();
  app.add_option("--http-token-file", o->http_token_file,
                 "Every HTTP request must carry `Authorization: Bearer <token>` with the token in "
                 "this file (its first line; 16+ characters, e.g. `openssl rand -hex 32`)")
      ->check(CLI::ExistingFile);
  app.add_option("--http-cors-origin", o->http_cors_origins,
                 "Let browser pages of this origin (e.g. http://localhost:3000, or *) read /v1/ "
                 "and /v2/ (CORS: Access-Control-Allow-Origin, OPTIONS preflight allowing "
                 "Authorization and Last-Event-ID); repeatable; default none");
  app.add_option("--policy-endpoint", o->policy_endpoints,
                 "Submitted scenarios may use the openai policy with this endpoint (as written "
                 "in the scenario); repeatable; default none, which refuses that backend");
  app.add_option("--policy-key-env", o->policy_key_envs,
                 "The environment variable an allowed openai endpoint may get its bearer key "
                 "from; repeatable; default none");
  app.add_option("--max-event-streams", o->max_event_streams,
                 "Open SSE event streams at most; more get 503")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  app.add_option("--max-event-streams-per-peer", o->max_event_streams_per_peer,
                 "Open SSE event streams from one client address at most; more get 429 (behind "
                 "a reverse proxy, raise it to --max-event-streams)")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  app.add_option("--curve-key", o->curve_secret_file,
                 "CURVE: the server's secret key file (`mewm keygen BASE` writes BASE.key)");
  app.add_option("--curve-allow", o->curve_allowlist_file,
                 "CURVE: allowed client public keys, one z85 key per line");
  app.add_flag("--finish-on-shutdown", o->finish_on_shutdown,
               "On SIGINT/SIGTERM let the active run finish (default: cancel it)");
  app.add_flag("--no-volumes", *no_volumes, "Do not send the chosen plan's .vdb frames");
  return [o, no_volumes, disk_gb, hours]() -> int {
    o->publish_volumes = !*no_volumes;
    o->limits.max_disk_bytes = std::uint64_t(*disk_gb * 1e9);
    o->limits.max_seconds = *hours * 3600.0;
    auto server = streaming::Server::Create(*o);
    if (!server) return Fail(server.error());
    g_server.store(server->get());
    CatchStopSignals();
    std::cout << "mewm serve: control " << (*server)->control_endpoint() << ", events "
              << (*server)->event_endpoint() << ", results under " << o->results_root;
    if (!(*server)->public_key().empty()) std::cout << ", CURVE key " << (*server)->public_key();
    if ((*server)->metrics_port() >= 0) {
      std::cout << ", http http://" << o->metrics_address << ":" << (*server)->metrics_port()
                << " (/metrics, /v2/health/ready, /v1/runs"
                << (o->http_token_file.empty() ? "" : ", bearer token")
                << (o->http_cors_origins.empty() ? "" : ", CORS") << ")";
    }
    std::cout << std::endl;
    const Status served = (*server)->Serve();
    g_server.store(nullptr);
    if (!served) return Fail(served.error());
    std::cout << "mewm serve: closed" << std::endl;
    return 0;
  };
}

Action RegisterSubmit(CLI::App& app) {
  struct Options {
    ClientFlags client;
    std::string scenario, request_id;
    bool wait = false, json = false;
  };
  auto o = std::make_shared<Options>();
  app.add_option("SCENARIO", o->scenario,
                 "Scenario file (TOML); its relative paths resolve "
                 "under the server's scenario base")
      ->required();
  app.add_option("--request-id", o->request_id,
                 "Idempotency key: submitting again with it returns the same run");
  app.add_flag("--wait", o->wait, "Watch the run until it ends (exit code as `mewm watch`)");
  app.add_flag("--json", o->json, "With --wait: events as JSON lines on stdout");
  AddClientFlags(app, &o->client);
  return [o]() -> int {
    auto text = ReadFile(o->scenario);
    if (!text) return Fail(text.error());
    auto client = ConnectClient(o->client);
    if (!client) return Fail(client.error());
    // The server finds the scenario's folder under its scenario base by this path (relative to
    // the base, or absolute); the scenario's relative model paths resolve against that folder.
    const std::string path = fs::path(o->scenario).lexically_normal().string();
    auto submitted = (*client)->Submit({*text, o->request_id, path});
    if (!submitted) return Fail(submitted.error());
    std::cout << EscapeControl(submitted->run_id) << std::endl;
    if (!o->wait) return 0;
    return WatchRuns(**client, submitted->run_id, o->json);
  };
}

Action RegisterWatch(CLI::App& app) {
  struct Options {
    ClientFlags client;
    std::string run;
    bool json = false;
  };
  auto o = std::make_shared<Options>();
  app.add_option("--run", o->run,
                 "Watch one run from its first event until it ends (default: every active run)");
  app.add_flag("--json", o->json, "Events as JSON lines on stdout");
  AddClientFlags(app, &o->client);
  return [o]() -> int {
    auto client = ConnectClient(o->client);
    if (!client) return Fail(client.error());
    return WatchRuns(**client, o->run, o->json);
  };
}

Action RegisterStatus(CLI::App& app) {
  struct Options {
    ClientFlags client;
    std::string run;
  };
  auto o = std::make_shared<Options>();
  app.add_option("RUN", o->run, "One run (default: the server's health and every run)");
  AddClientFlags(app, &o->client);
  return [o]() -> int {
    auto client = ConnectClient(o->client);
    if (!client) return Fail(client.error());
    if (!o->run.empty()) {
      auto status = (*client)->GetStatus(o->run);
      if (!status) return Fail(status.error());
      std::cout << Row(*status) << "\n";
      if (!status->error.empty()) std::cout << "error: " << EscapeControl(status->error) << "\n";
      return 0;
    }
    auto health = (*client)->GetHealth();
    if (!health) return Fail(health.error());
    auto runs = (*client)->ListRuns();
    if (!runs) return Fail(runs.error());
    std::printf(
        "up %.0f s, queue %d/%d, active %s, published %llu, dropped %llu, bad requests "
        "%llu, rejected %llu, auth failures %llu\n",
        health->uptime_seconds, health->queue_depth, health->queue_capacity,
        health->active_run.empty() ? "-" : EscapeControl(health->active_run).c_str(),
        static_cast<unsigned long long>(health->events_published),
        static_cast<unsigned long long>(health->events_dropped),
        static_cast<unsigned long long>(health->bad_requests),
        static_cast<unsigned long long>(health->rejected_submits),
        static_cast<unsigned long long>(health->auth_failures));
    const streaming::AdmissionLimits& limits = health->limits;
    std::printf(
        "limits: patients %d, voxels %llu, beams x samples %d, disk %.1f GB, time %.1f h "
        "(0 = none)\n",
        limits.max_patients, static_cast<unsigned long long>(limits.max_voxels),
        limits.max_beam_samples, double(limits.max_disk_bytes) / 1e9, limits.max_seconds / 3600.0);
    for (const auto& model : health->models_loaded)
      std::printf("model %s\n", EscapeControl(model).c_str());
    for (const auto& stage : health->stages) {
      if (stage.count == 0) continue;
      std::printf("stage %-9s %8llu calls, mean %.4f s\n", EscapeControl(stage.stage).c_str(),
                  static_cast<unsigned long long>(stage.count),
                  stage.sum_seconds / double(stage.count));
    }
    for (const auto& run : *runs) std::printf("%s\n", Row(run).c_str());
    return 0;
  };
}

Action RegisterCancel(CLI::App& app) {
  struct Options {
    ClientFlags client;
    std::string run;
  };
  auto o = std::make_shared<Options>();
  app.add_option("RUN", o->run, "The run to cancel")->required();
  AddClientFlags(app, &o->client);
  return [o]() -> int {
    auto client = ConnectClient(o->client);
    if (!client) return Fail(client.error());
    auto status = (*client)->Cancel(o->run);
    if (!status) return Fail(status.error());
    std::cout << "cancel requested: " << Row(*status) << "\n";
    return 0;
  };
}

Action RegisterKeygen(CLI::App& app) {
  auto base = std::make_shared<std::string>();
  auto force = std::make_shared<bool>(false);
  app.add_option("BASE", *base, "Writes BASE.key (secret, created with mode 0600) and BASE.pub")
      ->required();
  app.add_flag("--force", *force, "Replace an existing key pair at BASE");
  return [base, force]() -> int {
    auto keys = streaming::GenerateCurveKeyPair();
    if (!keys) return Fail(keys.error());
    if (auto written = streaming::WriteCurveKeyPair(*keys, *base, *force); !written) {
      return Fail(written.error());
    }
    std::cout << *base << ".pub: " << keys->public_key << "\n";
    return 0;
  };
}

}  // namespace mewm::cli

// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// libFuzzer target for the server's request dispatch (`tools/dev.sh fuzz SECONDS dispatch`):
// every input is one control message answered by Server::HandleRequestForTest, the code behind
// the control socket: decoding, the request kinds, the submitted scenario TOML (parsing,
// validation, path confinement, admission limits) and queueing. An input starting with 'T' is
// the TOML of a Submit (the rest of the input), so the fuzzer mutates scenario text directly;
// any other input is the encoded request itself.
//
// The server has no sockets on the network (an inproc event endpoint, no control socket), its
// results root and scenario base are a temporary folder (the base links the shipped models, so
// valid submits are accepted), and its run function does nothing: no run executes. It is
// replaced every kInputsPerServer inputs, its folder emptied, so memory and disk stay bounded.
//
// Properties checked beyond "no crash, no sanitizer report": every reply decodes, and a reply to
// a decodable request echoes its request id.
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>

#include "mewm/streaming/protocol.h"
#include "mewm/streaming/server.h"

namespace {

namespace fs = std::filesystem;
using namespace mewm;
using namespace mewm::streaming;

constexpr int kInputsPerServer = 2000;

void Check(bool ok) {
  if (!ok) std::abort();
}

struct Harness {
  fs::path root;
  std::unique_ptr<Server> server;
  int inputs = 0;
  int generation = 0;

  Harness() {
    char pattern[] = "/tmp/mewm-dispatch-fuzz-XXXXXX";
    Check(::mkdtemp(pattern) != nullptr);
    root = pattern;
    fs::create_directories(root / "base" / "scenarios");
    fs::create_symlink(fs::path(MEWM_SOURCE_DIR) / "models", root / "base" / "models");
    Restart();
  }
  ~Harness() {
    server.reset();
    std::error_code ec;
    fs::remove_all(root, ec);
  }

  void Restart() {
    server.reset();
    std::error_code ec;
    fs::remove_all(root / "results", ec);
    ServerOptions options;
    options.control_endpoint = "";  // no socket: requests come in through HandleRequestForTest
    options.event_endpoint = "inproc://mewm-dispatch-fuzz-" + std::to_string(++generation);
    options.results_root = (root / "results").string();
    options.scenario_base = (root / "base").string();
    options.recover_runs = false;
    options.metrics_port = -1;
    options.linger_ms = 0;
    auto created =
        Server::Create(options, [](const scenarios::ScenarioSpec&, const scenarios::RunOptions& run,
                                   scenarios::EventSink&) {
          return Expected<scenarios::RunSummary>(
              scenarios::RunSummary{run.run_id, run.output_dir, 0, 0, 0, false});
        });
    Check(bool(created));
    server = std::move(*created);
    inputs = 0;
  }
};

Harness* harness = nullptr;

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  harness = new Harness();
  std::atexit([] { delete harness; });
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (++harness->inputs > kInputsPerServer) harness->Restart();
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  std::string request;
  if (!bytes.empty() && bytes.front() == 'T') {
    request = EncodeRequest(
        Request{"fuzz", "",
                SubmitRequest{std::string(bytes.substr(1)), "", "scenarios/fuzz/scenario.toml"}});
    bytes = request;
  }
  const std::string reply_bytes = harness->server->HandleRequestForTest(bytes);
  auto reply = DecodeReply(reply_bytes);
  Check(bool(reply));
  if (auto decoded = DecodeRequest(bytes); decoded && bytes.size() <= (1u << 20)) {
    Check(reply->request_id == decoded->request_id);
  }
  return 0;
}

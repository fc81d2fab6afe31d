// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Writes one valid message of every kind into a folder: the starting corpus of
// mewm_control_fuzz, so the fuzzer mutates real requests, replies and envelopes from the first
// second instead of discovering the Cap'n Proto layout by itself. `tools/dev.sh fuzz` runs it.
// Scenario files named after the folder (paths relative to the source tree, as
// scenarios/<name>/scenario.toml) add seeds for mewm_dispatch_fuzz: each as an encoded Submit and
// as raw TOML ('T' + text).
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "mewm/streaming/protocol.h"

using namespace mewm;
using namespace mewm::streaming;

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR [SCENARIO_FILE...]\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  std::vector<std::string> seeds;
  const scenarios::PlanScoreView score{{"Lipiodol", "Epirubicin"}, 0.4, 0.1};
  const std::vector<scenarios::EventBody> bodies = {
      scenarios::RunAccepted{"demo", "/r/demo-1", 1},
      scenarios::RunStarted{"demo", "/r/demo-1", 7, 4, 0},
      scenarios::PatientStarted{"P1", 0, 4},
      scenarios::ProposalMade{"P1", {"Epirubicin"}, {"Lipiodol"}, "rationale"},
      scenarios::CandidateEvaluated{"P1", "drug", 1, score, false},
      scenarios::BeamUpdated{"P1", "drug", 1, {score, score}},
      scenarios::PlanDecided{"P1", score, 20.5, "/r/x.vdb"},
      scenarios::PatientFinished{"P1", 10, 2, 10, 1.5},
      scenarios::PatientFailed{"P2", "error"},
      scenarios::RunFinished{3, 1, 9.5},
      scenarios::RunFailed{"error"},
      scenarios::RunCancelled{1},
      scenarios::Progress{"cohort", 1, 4}};
  std::uint64_t seq = 0;
  for (const auto& body : bodies) {
    RunEvent event{scenarios::Event{"demo-1", ++seq, 1700000000000000000, body}, "t", {}};
    if (std::holds_alternative<scenarios::PlanDecided>(body)) {
      event.volume = VolumeRef{4, Sha256("abcd"), "/r/x.vdb"};
    }
    seeds.push_back(EncodeEnvelope(event));
  }
  seeds.push_back(EncodeEnvelope(ServerEvent{1, 5, Heartbeat{"demo-1", 2, {{"demo-1", 9}}}}));
  seeds.push_back(EncodeEnvelope(ServerEvent{2, 6, ServerClosing{"shutdown", 1}}));
  for (const auto& body : std::vector<decltype(Request::body)>{
           SubmitRequest{"[run]\nname = \"x\"\n", "idem", "s/x.toml"}, CancelRequest{"demo-1"},
           StatusRequest{"demo-1"}, SnapshotRequest{"demo-1", 3, 10}, ListRunsRequest{},
           HealthRequest{}}) {
    seeds.push_back(EncodeRequest(Request{"r1", "t1", body}));
  }
  const RunStatus status{"demo-1", "demo", RunState::kRunning, 9, 4, 1, 0, "/r", "", "t"};
  Health health;
  health.models_loaded = {"policy:guideline"};
  health.stages = {{"dynamics", 2, 1.5}};
  for (const auto& body : std::vector<decltype(Reply::body)>{
           ErrorReply{ReplyError::kQueueFull, "full"}, Submitted{"demo-1", 0, false},
           CancelReply{status}, status, SnapshotReply{status, {seeds.front()}, true},
           RunList{{status}}, health}) {
    seeds.push_back(EncodeReply(Reply{"r1", body}));
  }
  for (int a = 2; a < argc; ++a) {
    std::ifstream in(argv[a], std::ios::binary);
    const std::string toml((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (!in.good() && !in.eof()) {
      std::fprintf(stderr, "cannot read %s\n", argv[a]);
      return 1;
    }
    seeds.push_back(EncodeRequest(Request{"r1", "t1", SubmitRequest{toml, "", argv[a]}}));
    seeds.push_back(EncodeRequest(Request{"r2", "", SubmitRequest{toml, "idem", argv[a]}}));
    seeds.push_back("T" + toml);
  }
  for (std::size_t i = 0; i < seeds.size(); ++i) {
    std::ofstream(dir + "/seed-" + std::to_string(i), std::ios::binary) << seeds[i];
  }
  std::printf("%zu seeds in %s\n", seeds.size(), dir.c_str());
  return 0;
}

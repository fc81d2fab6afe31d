// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/streaming/protocol.h"

#include <gtest/gtest.h>

#include <random>
#include <set>

namespace mewm::streaming {
namespace {

using scenarios::Event;

scenarios::PlanScoreView Score(std::vector<std::string> plan, double mean) {
  return {std::move(plan), mean, mean / 10};
}

/// One event of every kind the runner and the server make.
std::vector<scenarios::EventBody> EveryBody() {
  return {scenarios::RunAccepted{"demo", "/r/demo-1", 2},
          scenarios::Progress{"cohort", 3, 4},
          scenarios::RunStarted{"demo", "/r/demo-1", 7, 4, 1},
          scenarios::PatientStarted{"P001", 0, 4},
          scenarios::ProposalMade{"P001", {"Epirubicin", "Cisplatin"}, {"Lipiodol"}, "because"},
          scenarios::CandidateEvaluated{"P001", "drug", 1, Score({"Epirubicin"}, 0.5), true},
          scenarios::BeamUpdated{"P001", "drug", 1, {Score({"Epirubicin"}, 0.5), Score({}, 0.9)}},
          scenarios::PlanDecided{"P001", Score({"Lipiodol", "Epirubicin"}, 0.4), 21.5, "/x.vdb"},
          scenarios::PatientFinished{"P001", 100, 20, 100, 1.5},
          scenarios::PatientFailed{"P002", "no tumor"},
          scenarios::RunFinished{3, 1, 12.5},
          scenarios::RunFailed{"disk full"},
          scenarios::RunCancelled{2}};
}

TEST(ProtocolTest, EveryRunEventRoundTripsThroughItsEnvelope) {
  std::uint64_t seq = 0;
  for (const auto& body : EveryBody()) {
    RunEvent in{Event{"demo-1", ++seq, 1234567890123, body}, "trace-9", std::nullopt};
    if (std::holds_alternative<scenarios::PlanDecided>(body)) {
      in.volume = VolumeRef{5, Sha256("hello"), "/x.vdb"};
    }
    auto out = DecodeEnvelope(EncodeEnvelope(in));
    ASSERT_TRUE(out) << out.error().message;
    const auto& run = std::get<RunEvent>(*out);
    // The JSON form covers every field, so equal JSON means an equal event.
    EXPECT_EQ(scenarios::EventToJson(run.event), scenarios::EventToJson(in.event));
    EXPECT_EQ(run.trace_id, "trace-9");
    EXPECT_EQ(run.volume.has_value(), in.volume.has_value());
    if (in.volume) {
      EXPECT_EQ(run.volume->sha256, in.volume->sha256);
      EXPECT_EQ(run.volume->size_bytes, 5u);
    }
    EXPECT_EQ(TopicOf(*out), "run/demo-1/" + std::string(scenarios::EventTypeName(body)));
  }
}

TEST(ProtocolTest, TheWireSchemaAndTheEventDescriptionAgree) {
  // Both encodings come from mewm/run/events.h's description; the Cap'n Proto codec finds each
  // field by name. A field or event kind added on one side only fails here.
  const Status agree = CheckEventSchema();
  EXPECT_TRUE(agree) << agree.error().message;
}

TEST(ProtocolTest, EveryDescribedEventKindHasItsOwnUnionMember) {
  // The discriminant of each encoded kind, read back through the generated (not the dynamic)
  // reader, is distinct: no two event types share a member.
  std::set<unsigned> members;
  for (const auto& body : EveryBody()) {
    RunEvent in{Event{"demo-1", 1, 1, body}, "", std::nullopt};
    const std::string bytes = EncodeEnvelope(in);
    members.insert(std::uint8_t(bytes[18]) | std::uint8_t(bytes[19]) << 8);
  }
  EXPECT_EQ(members.size(), EveryBody().size());
  EXPECT_EQ(EveryBody().size(), std::variant_size_v<scenarios::EventBody>);
}

TEST(ProtocolTest, ServerEventsRoundTrip) {
  auto beat = DecodeEnvelope(
      EncodeEnvelope(ServerEvent{3, 99, Heartbeat{"demo-1", 2, {{"demo-1", 40}, {"old-2", 7}}}}));
  ASSERT_TRUE(beat);
  const auto& server = std::get<ServerEvent>(*beat);
  EXPECT_EQ(server.seq, 3u);
  const auto& heartbeat = std::get<Heartbeat>(server.body);
  EXPECT_EQ(heartbeat.active_run, "demo-1");
  ASSERT_EQ(heartbeat.recent_runs.size(), 2u);
  EXPECT_EQ(heartbeat.recent_runs[1].run_id, "old-2");
  EXPECT_EQ(heartbeat.recent_runs[1].last_seq, 7u);
  EXPECT_EQ(TopicOf(*beat), "server/heartbeat");
  auto closing = DecodeEnvelope(EncodeEnvelope(ServerEvent{4, 99, ServerClosing{"shutdown", 2}}));
  ASSERT_TRUE(closing);
  EXPECT_EQ(std::get<ServerClosing>(std::get<ServerEvent>(*closing).body).cancelled_runs, 2);
  EXPECT_EQ(TopicOf(*closing), "server/closing");
}

TEST(ProtocolTest, RequestsAndRepliesRoundTrip) {
  const std::vector<decltype(Request::body)> bodies = {
      SubmitRequest{"[run]\nname = \"x\"\n", "req-1", "scenarios/x.toml"},
      CancelRequest{"x-1"},
      StatusRequest{"x-1"},
      SnapshotRequest{"x-1", 17, 50},
      ListRunsRequest{},
      HealthRequest{}};
  for (const auto& body : bodies) {
    auto out = DecodeRequest(EncodeRequest(Request{"r1", "t1", body}));
    ASSERT_TRUE(out) << out.error().message;
    EXPECT_EQ(out->request_id, "r1");
    EXPECT_EQ(out->trace_id, "t1");
    EXPECT_EQ(out->body.index(), body.index());
  }
  auto snapshot = DecodeRequest(EncodeRequest(Request{"r", "", SnapshotRequest{"x-1", 17, 50}}));
  EXPECT_EQ(std::get<SnapshotRequest>(snapshot->body).after_seq, 17u);
  auto submit =
      DecodeRequest(EncodeRequest(Request{"r", "", SubmitRequest{"toml", "idem", "a/b.toml"}}));
  EXPECT_EQ(std::get<SubmitRequest>(submit->body).scenario_path, "a/b.toml");

  RunStatus status{"x-1", "x", RunState::kRunning, 40, 4, 2, 1, "/r", "", "t"};
  Health health;
  health.queue_depth = 2;
  health.models_loaded = {"policy:guideline"};
  health.stages = {{"dynamics", 3, 1.5}};
  const std::vector<decltype(Reply::body)> replies = {ErrorReply{ReplyError::kQueueFull, "full"},
                                                      Submitted{"x-1", 2, true},
                                                      CancelReply{status},
                                                      status,
                                                      SnapshotReply{status, {"a", "bc"}, true},
                                                      RunList{{status, status}},
                                                      health};
  for (const auto& body : replies) {
    auto out = DecodeReply(EncodeReply(Reply{"r9", body}));
    ASSERT_TRUE(out) << out.error().message;
    EXPECT_EQ(out->request_id, "r9");
    ASSERT_EQ(out->body.index(), body.index());
  }
  auto status_out = DecodeReply(EncodeReply(Reply{"r", status}));
  const auto& s = std::get<RunStatus>(status_out->body);
  EXPECT_EQ(s.state, RunState::kRunning);
  EXPECT_EQ(s.last_seq, 40u);
  EXPECT_EQ(s.patients_failed, 1);
  auto snapshot_out =
      DecodeReply(EncodeReply(Reply{"r", SnapshotReply{status, {"a", "bc"}, true}}));
  EXPECT_EQ(std::get<SnapshotReply>(snapshot_out->body).events,
            (std::vector<std::string>{"a", "bc"}));
  auto health_out = DecodeReply(EncodeReply(Reply{"r", health}));
  EXPECT_EQ(std::get<Health>(health_out->body).stages.front().sum_seconds, 1.5);
  // A count past INT_MAX on the wire (uint32 4294967295 here) is refused, not shown as -1.
  RunStatus hostile = status;
  hostile.patients_done = -1;
  for (const auto& body : std::vector<decltype(Reply::body)>{
           hostile, CancelReply{hostile}, SnapshotReply{hostile, {}, true}, RunList{{hostile}}}) {
    auto refused = DecodeReply(EncodeReply(Reply{"r", body}));
    ASSERT_FALSE(refused);
    EXPECT_EQ(refused.error().code, ErrorCode::kCorruptData);
    EXPECT_NE(refused.error().message.find("patientsDone 4294967295 is out of range"),
              std::string::npos)
        << refused.error().message;
  }
  // So is every other count a client shows: health, submitted, heartbeat, closing, run events.
  Health deep = health;
  deep.queue_capacity = -1;
  const std::vector<std::pair<std::string, std::string>> hostile_replies = {
      {EncodeReply(Reply{"r", deep}), "queueCapacity"},
      {EncodeReply(Reply{"r", Submitted{"x-1", -1, false}}), "queuePosition"}};
  for (const auto& [bytes, field] : hostile_replies) {
    auto refused = DecodeReply(bytes);
    ASSERT_FALSE(refused) << field;
    EXPECT_EQ(refused.error().code, ErrorCode::kCorruptData);
    EXPECT_NE(refused.error().message.find(field), std::string::npos) << refused.error().message;
  }
  const std::vector<std::string> hostile_events = {
      EncodeEnvelope(ServerEvent{3, 99, Heartbeat{"r-1", -1, {}}}),
      EncodeEnvelope(ServerEvent{4, 99, ServerClosing{"shutdown", -1}}),
      EncodeEnvelope(
          RunEvent{Event{"r-1", 1, 1, scenarios::RunAccepted{"s", "o", -1}}, "", std::nullopt})};
  for (const std::string& bytes : hostile_events) {
    auto refused = DecodeEnvelope(bytes);
    ASSERT_FALSE(refused);
    EXPECT_EQ(refused.error().code, ErrorCode::kCorruptData) << refused.error().message;
    EXPECT_NE(refused.error().message.find("out of range"), std::string::npos)
        << refused.error().message;
  }
}

TEST(ProtocolTest, DecodesFromUnalignedBuffers) {
  const std::string bytes = EncodeRequest(Request{"r", "", StatusRequest{"x-1"}});
  for (std::size_t offset = 1; offset < 8; ++offset) {
    std::string shifted(offset, '\0');
    shifted += bytes;
    auto out = DecodeRequest(std::string_view(shifted).substr(offset));
    ASSERT_TRUE(out) << "offset " << offset << ": " << out.error().message;
    EXPECT_EQ(std::get<StatusRequest>(out->body).run_id, "x-1");
  }
}

TEST(ProtocolTest, RejectsEveryTruncationAndRandomBytesWithoutCrashing) {
  const std::string valid = EncodeRequest(Request{"r", "t", SubmitRequest{"[run]", "id", ""}});
  for (std::size_t n = 0; n < valid.size(); ++n) {
    auto out = DecodeRequest(std::string_view(valid).substr(0, n));
    EXPECT_FALSE(out) << "a request cut to " << n << " bytes decoded";
  }
  std::mt19937 rng(7);
  int rejected = 0;
  for (int i = 0; i < 3000; ++i) {
    std::string junk(8 * (1 + rng() % 16), '\0');
    for (char& c : junk) c = char(rng());
    const bool request_ok = bool(DecodeRequest(junk));
    const bool envelope_ok = bool(DecodeEnvelope(junk));
    const bool reply_ok = bool(DecodeReply(junk));
    rejected += !request_ok + !envelope_ok + !reply_ok;
  }
  // Random words can form a valid tiny message now and then; nearly all must be refused.
  EXPECT_GT(rejected, 3 * 3000 * 9 / 10);
  auto odd = DecodeRequest("1234567");
  ASSERT_FALSE(odd);
  EXPECT_EQ(odd.error().code, ErrorCode::kCorruptData);
}

TEST(ProtocolTest, RejectsOtherSchemaVersions) {
  for (std::uint16_t version : {std::uint16_t(0), std::uint16_t(kSchemaVersion + 1)}) {
    auto out = DecodeRequest(EncodeRequest(Request{"r", "", HealthRequest{}}, version));
    ASSERT_FALSE(out);
    EXPECT_EQ(out.error().code, ErrorCode::kMismatch);
    EXPECT_NE(out.error().message.find("schema version"), std::string::npos);
  }
}

TEST(ProtocolTest, TraversalLimitStopsOversizedContent) {
  SnapshotReply big;
  big.events.assign(20000, std::string(64, 'x'));
  const std::string bytes = EncodeReply(Reply{"r", big});
  DecodeLimits tight;
  tight.traversal_words = 1000;
  auto out = DecodeReply(bytes, tight);
  ASSERT_FALSE(out);
  EXPECT_EQ(out.error().code, ErrorCode::kCorruptData);
  EXPECT_TRUE(DecodeReply(bytes));  // the default limits allow it
}

TEST(ProtocolTest, RefusesListsThatClaimMoreElementsThanTheMessageHolds) {
  // Found by the fuzzer: 64 bytes whose run list names millions of empty statuses.
  const unsigned char amplified[] = {
      0x00, 0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
      0x00, 0x03, 0x00, 0x01, 0x00, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x09, 0x00,
      0x00, 0x00, 0x1a, 0x00, 0x00, 0x00, 0x09, 0x00, 0x00, 0x00, 0x00, 0x00, 0x7e,
      0x00, 0x00, 0x0b, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x03,
      0x08, 0x00, 0x00, 0x00, 0x74, 0x31, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00};
  auto out = DecodeReply(std::string(reinterpret_cast<const char*>(amplified), sizeof(amplified)));
  ASSERT_FALSE(out);
  EXPECT_NE(out.error().message.find("list longer than its message"), std::string::npos)
      << out.error().message;
  // Long lists that really are in the message still decode.
  RunList runs;
  runs.runs.resize(5000);
  auto many = DecodeReply(EncodeReply(Reply{"r", runs}));
  ASSERT_TRUE(many) << many.error().message;
  EXPECT_EQ(std::get<RunList>(many->body).runs.size(), 5000u);
}

TEST(ProtocolTest, RunEventOfANewerKindKeepsItsSeqAndIsMarkedUnknown) {
  std::string bytes = EncodeEnvelope(
      RunEvent{Event{"run-1", 5, 7, scenarios::Progress{"cohort", 1, 2}}, "t", std::nullopt});
  // The event union's discriminant is the second 16-bit field of the root struct, which starts
  // after the segment table and the root pointer (bytes 16 + 2). Layouts never move (additive
  // schema evolution), so a later schema's member 99 would sit exactly here.
  ASSERT_GE(bytes.size(), 20u);
  ASSERT_EQ(std::uint8_t(bytes[18]) | std::uint8_t(bytes[19]) << 8, 12);  // progress
  bytes[18] = 99;
  auto out = DecodeEnvelope(bytes);
  ASSERT_TRUE(out) << out.error().message;
  const auto& run = std::get<RunEvent>(*out);
  EXPECT_TRUE(run.unknown_kind);
  EXPECT_EQ(run.event.run_id, "run-1");
  EXPECT_EQ(run.event.seq, 5u);
  EXPECT_EQ(TopicOf(*out), "run/run-1/unknown");
  // An unknown request kind is still an error: a server cannot answer what it does not know.
  std::string request = EncodeRequest(Request{"r", "", HealthRequest{}});
  ASSERT_EQ(std::uint8_t(request[18]), 5);  // health, the union's sixth member
  request[18] = 77;
  auto unknown = DecodeRequest(request);
  ASSERT_FALSE(unknown);
  EXPECT_EQ(unknown.error().code, ErrorCode::kCorruptData);
  EXPECT_NE(unknown.error().message.find("newer schema"), std::string::npos);
}

TEST(ProtocolTest, Sha256MatchesTheStandardVector) {
  EXPECT_EQ(ToHex(Sha256("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

}  // namespace
}  // namespace mewm::streaming

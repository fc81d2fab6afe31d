// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The wire protocol (streaming/schema/mewm.capnp, docs/PROTOCOL.md) as plain C++ values, and the
// functions that encode and decode them. Cap'n Proto stays inside this module.
//
// Every decoder takes untrusted bytes: any alignment, any size, any content. It applies
// traversal and nesting limits and returns kCorruptData for a malformed message and kMismatch for
// a schema version it does not speak; it never aborts.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "mewm/core/expected.h"
#include "mewm/core/sha256.h"
#include "mewm/run/events.h"

namespace mewm::streaming {

/// The schema version this build speaks (wire::schemaVersion).
inline constexpr std::uint16_t kSchemaVersion = 1;

/// Limits for decoding untrusted messages.
struct DecodeLimits {
  std::uint64_t traversal_words = 4u << 20;  ///< 32 MiB of pointed-to data
  int nesting = 32;
};

// --- Events -----------------------------------------------------------------------------------

/// A `.vdb` sent as the frame after the envelope.
struct VolumeRef {
  std::uint64_t size_bytes = 0;
  std::string sha256;  ///< 32 raw bytes
  std::string path;    ///< where the server wrote it
};

/// A run's event as published on `run/<id>/<type>`.
struct RunEvent {
  scenarios::Event event;  ///< run id, seq, timestamp and body
  std::string trace_id;
  std::optional<VolumeRef> volume;
  /// An event kind newer than this build (schema evolution): run id, seq and timestamp are valid,
  /// the body is not. Clients keep counting seq past it and do not show it.
  bool unknown_kind = false;
};

struct RunSeq {
  std::string run_id;
  std::uint64_t last_seq = 0;
};
struct Heartbeat {
  std::string active_run;
  int queue_depth = 0;
  /// Last seq of each run that published in the last minute: reveals a missed tail.
  std::vector<RunSeq> recent_runs;
};
struct ServerClosing {
  std::string reason;
  int cancelled_runs = 0;
};
/// A server event, published on `server/<type>`, with its own sequence.
struct ServerEvent {
  std::uint64_t seq = 0;
  std::int64_t timestamp_ns = 0;
  std::variant<Heartbeat, ServerClosing> body;
};

using Envelope = std::variant<RunEvent, ServerEvent>;

/// Checks that the wire schema and the events' one description (mewm/run/events.h) agree: every
/// event type has its union member, every described field its schema field of a fitting type,
/// and no event's schema struct has a field the description lacks. kMismatch names the first
/// difference. The codec below relies on it (ProtocolTest checks it).
Status CheckEventSchema();
std::string EncodeEnvelope(const Envelope& envelope);
Expected<Envelope> DecodeEnvelope(std::string_view bytes, const DecodeLimits& limits = {});

/// "run/<id>/<type>" or "server/<type>": the PUB topic of an envelope.
std::string TopicOf(const Envelope& envelope);
/// The topic prefix that selects every event of one run ("run/<id>/").
std::string RunTopicPrefix(const std::string& run_id);

/// Lower-case hex SHA-256 is for humans; the wire carries the 32 raw bytes Sha256 returns.
using mewm::Sha256;
using mewm::ToHex;

// --- Control requests ---------------------------------------------------------------------------

struct SubmitRequest {
  std::string scenario_toml;
  std::string client_request_id;  ///< idempotency key; "" = none
  /// Relative path of the scenario file under the server's scenario base; its relative model
  /// paths resolve against that file's folder. "" = the scenario base itself.
  std::string scenario_path;
};
struct CancelRequest {
  std::string run_id;
};
struct StatusRequest {
  std::string run_id;
};
struct SnapshotRequest {
  std::string run_id;
  std::uint64_t after_seq = 0;
  std::uint32_t max_events = 0;  ///< 0 = the server's page size
};
struct ListRunsRequest {};
struct HealthRequest {};

struct Request {
  std::string request_id;
  std::string trace_id;
  std::variant<SubmitRequest, CancelRequest, StatusRequest, SnapshotRequest, ListRunsRequest,
               HealthRequest>
      body;
};

/// `version` is for tests of version handling; clients leave it.
std::string EncodeRequest(const Request& request, std::uint16_t version = kSchemaVersion);
Expected<Request> DecodeRequest(std::string_view bytes, const DecodeLimits& limits = {});

// --- Replies ------------------------------------------------------------------------------------

enum class RunState { kQueued, kRunning, kFinished, kFailed, kCancelled };
const char* ToString(RunState state);
bool IsEnded(RunState state);

struct RunStatus {
  std::string run_id;
  std::string scenario;
  RunState state = RunState::kQueued;
  std::uint64_t last_seq = 0;
  int patients_total = 0, patients_done = 0, patients_failed = 0;
  std::string output_dir;
  std::string error;
  std::string trace_id;
};

enum class ReplyError {
  kMalformed,
  kTooLarge,
  kWrongVersion,
  kInvalidScenario,
  kQueueFull,
  kUnknownRun,
  kShuttingDown,
  kForbiddenPath,
  kInternal,
  kNotCancellable,
  kOverLimit,  ///< a submit over an admission limit (the message names the limit)
};
const char* ToString(ReplyError code);

struct ErrorReply {
  ReplyError code = ReplyError::kInternal;
  std::string message;
};
struct Submitted {
  std::string run_id;
  int queue_position = 0;
  bool duplicate = false;
};
struct CancelReply {
  RunStatus run;
};
struct SnapshotReply {
  RunStatus run;
  std::vector<std::string> events;  ///< encoded envelopes, seq ascending
  bool more = false;
};
struct RunList {
  std::vector<RunStatus> runs;
};
struct StageStats {
  std::string stage;
  std::uint64_t count = 0;
  double sum_seconds = 0.0;
};
/// Admission limits for submitted scenarios (`mewm serve --max-*`, docs/PROTOCOL.md); a submit
/// over any of them is refused with kOverLimit naming the limit. 0 = no limit. The defaults admit
/// the shipped scenarios and refuse, for example, 100000 patients or a 0.5 mm grid.
struct AdmissionLimits {
  int max_patients = 1000;                ///< synthetic cohort size
  std::uint64_t max_voxels = 32'000'000;  ///< CT voxels per synthetic patient (1 mm: 7.2 M)
  int max_beam_samples = 256;             ///< planner beams x samples (shipped: 20)
  std::uint64_t max_disk_bytes = 100'000'000'000;  ///< estimated cohort + results on disk
  double max_seconds = 48 * 3600.0;                ///< estimated wall time of one run
};

struct Health {
  double uptime_seconds = 0.0;
  int queue_depth = 0, queue_capacity = 0;
  std::string active_run;
  std::vector<std::string> models_loaded;
  std::uint64_t events_published = 0, events_dropped = 0, bad_requests = 0, rejected_submits = 0,
                auth_failures = 0;
  std::vector<StageStats> stages;
  AdmissionLimits limits;  ///< the server's; all 0 (none) from a server that predates them
};

struct Reply {
  std::string request_id;
  std::variant<ErrorReply, Submitted, CancelReply, RunStatus, SnapshotReply, RunList, Health> body;
};

std::string EncodeReply(const Reply& reply);
Expected<Reply> DecodeReply(std::string_view bytes, const DecodeLimits& limits = {});

}  // namespace mewm::streaming

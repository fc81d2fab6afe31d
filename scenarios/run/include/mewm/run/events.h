// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Typed events of a run, emitted by the Runner to an EventSink: the JSON-lines file, the terminal
// display, and (streaming module) the ZeroMQ publisher. Each event carries the run id, a per-run
// sequence number that increases by exactly 1, and a wall-clock timestamp.
#pragma once

#include <cstdint>
#include <fstream>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "mewm/core/expected.h"

namespace mewm::scenarios {

struct PlanScoreView {
  std::vector<std::string> plan;  ///< canonical items
  double risk_mean = 0.0;
  double risk_std = 0.0;
};

/// Written by the server when it queues a submitted run (before any runner event).
struct RunAccepted {
  std::string scenario;
  std::string output_dir;
  int queue_position = 0;  ///< 0 = runs next
};
struct RunStarted {
  std::string scenario;  ///< scenario name
  std::string output_dir;
  std::uint64_t seed = 0;
  int patients = 0;  ///< patients this run will plan (after sharding and resume)
  int skipped = 0;   ///< patients already finished (resume) or belonging to other shards
};
struct PatientStarted {
  std::string patient_id;
  int index = 0;  ///< 0-based within this run
  int total = 0;
};
struct ProposalMade {
  std::string patient_id;
  std::vector<std::string> drugs, embolics;
  std::string rationale;
};
struct CandidateEvaluated {
  std::string patient_id;
  std::string stage;  ///< "root", "drug", "embolic" or "exhaustive"
  int step = 0;
  PlanScoreView score;
  bool memo_hit = false;
};
struct BeamUpdated {
  std::string patient_id;
  std::string stage;
  int step = 0;
  std::vector<PlanScoreView> beams;  ///< best first
};
struct PlanDecided {
  std::string patient_id;
  PlanScoreView best;
  double median_months = -1.0;  ///< of the mean survival curve; -1 when it never reaches 0.5
  std::string volume_path;      ///< the chosen plan's simulated post-treatment .vdb
};
struct PatientFinished {
  std::string patient_id;
  std::int64_t simulations = 0, memo_hits = 0, model_evaluations = 0;
  double seconds = 0.0;
};
struct PatientFailed {
  std::string patient_id;
  std::string error;
};
struct RunFinished {
  int finished = 0, failed = 0;
  double seconds = 0.0;
};
struct RunFailed {
  std::string error;
};
struct RunCancelled {
  int finished = 0;
};
/// Work before planning starts, e.g. generating a synthetic cohort ("cohort", done, total).
struct Progress {
  std::string stage;
  int done = 0;
  int total = 0;
};

using EventBody = std::variant<RunStarted, PatientStarted, ProposalMade, CandidateEvaluated,
                               BeamUpdated, PlanDecided, PatientFinished, PatientFailed,
                               RunFinished, RunFailed, RunCancelled, RunAccepted, Progress>;

// --- The one description of every event -----------------------------------------------------
//
// Each event body (and PlanScoreView, which events nest) describes itself once, in EventFields:
// its type name and its fields in order. Both encodings come from that description:
// - JSON (EventToJson, EventFromJson): {"run_id", "seq", "timestamp_ns", "type"} and then every
//   field under its name, in the described order;
// - Cap'n Proto (mewm::streaming's protocol): the event union's member named by the type in
//   camelCase (plan_decided -> planDecided), and in it each field by its camelCase name
//   (patient_id -> patientId). CheckEventSchema() (streaming) proves that the schema has every
//   described field and nothing more.
// Adding an event kind: its struct and its EventFields here, an EventBody alternative, and a
// union member in streaming/schema/mewm.capnp. Adding a field: the member, its entry here, and
// the schema field.

/// A described field: its name (the JSON key; its camelCase form is the schema's field) and
/// the member it reads and writes.
template <typename Struct, typename Member>
struct FieldOf {
  const char* name;
  Member Struct::*member;
};

/// Specialised for every event body and nested struct: `kType` (the event's type name; nullptr
/// for nested structs) and `kFields` (a tuple of FieldOf).
template <typename T>
struct EventFields;

#define MEWM_FIELD(Struct, member) \
  ::mewm::scenarios::FieldOf<Struct, decltype(Struct::member)> { #member, &Struct::member }

#define MEWM_DESCRIBE(Struct, type_name, ...)                     \
  template <>                                                     \
  struct EventFields<Struct> {                                    \
    static constexpr const char* kType = type_name;               \
    static constexpr auto kFields = std::make_tuple(__VA_ARGS__); \
  }

MEWM_DESCRIBE(PlanScoreView, nullptr, MEWM_FIELD(PlanScoreView, plan),
              MEWM_FIELD(PlanScoreView, risk_mean), MEWM_FIELD(PlanScoreView, risk_std));
MEWM_DESCRIBE(RunStarted, "run_started", MEWM_FIELD(RunStarted, scenario),
              MEWM_FIELD(RunStarted, output_dir), MEWM_FIELD(RunStarted, seed),
              MEWM_FIELD(RunStarted, patients), MEWM_FIELD(RunStarted, skipped));
MEWM_DESCRIBE(PatientStarted, "patient_started", MEWM_FIELD(PatientStarted, patient_id),
              MEWM_FIELD(PatientStarted, index), MEWM_FIELD(PatientStarted, total));
MEWM_DESCRIBE(ProposalMade, "proposal", MEWM_FIELD(ProposalMade, patient_id),
              MEWM_FIELD(ProposalMade, drugs), MEWM_FIELD(ProposalMade, embolics),
              MEWM_FIELD(ProposalMade, rationale));
MEWM_DESCRIBE(CandidateEvaluated, "candidate_evaluated", MEWM_FIELD(CandidateEvaluated, patient_id),
              MEWM_FIELD(CandidateEvaluated, stage), MEWM_FIELD(CandidateEvaluated, step),
              MEWM_FIELD(CandidateEvaluated, score), MEWM_FIELD(CandidateEvaluated, memo_hit));
MEWM_DESCRIBE(BeamUpdated, "beam_updated", MEWM_FIELD(BeamUpdated, patient_id),
              MEWM_FIELD(BeamUpdated, stage), MEWM_FIELD(BeamUpdated, step),
              MEWM_FIELD(BeamUpdated, beams));
MEWM_DESCRIBE(PlanDecided, "plan_decided", MEWM_FIELD(PlanDecided, patient_id),
              MEWM_FIELD(PlanDecided, best), MEWM_FIELD(PlanDecided, median_months),
              MEWM_FIELD(PlanDecided, volume_path));
MEWM_DESCRIBE(PatientFinished, "patient_finished", MEWM_FIELD(PatientFinished, patient_id),
              MEWM_FIELD(PatientFinished, simulations), MEWM_FIELD(PatientFinished, memo_hits),
              MEWM_FIELD(PatientFinished, model_evaluations), MEWM_FIELD(PatientFinished, seconds));
MEWM_DESCRIBE(PatientFailed, "patient_failed", MEWM_FIELD(PatientFailed, patient_id),
              MEWM_FIELD(PatientFailed, error));
MEWM_DESCRIBE(RunFinished, "run_finished", MEWM_FIELD(RunFinished, finished),
              MEWM_FIELD(RunFinished, failed), MEWM_FIELD(RunFinished, seconds));
MEWM_DESCRIBE(RunFailed, "run_failed", MEWM_FIELD(RunFailed, error));
MEWM_DESCRIBE(RunCancelled, "run_cancelled", MEWM_FIELD(RunCancelled, finished));
MEWM_DESCRIBE(RunAccepted, "run_accepted", MEWM_FIELD(RunAccepted, scenario),
              MEWM_FIELD(RunAccepted, output_dir), MEWM_FIELD(RunAccepted, queue_position));
MEWM_DESCRIBE(Progress, "progress", MEWM_FIELD(Progress, stage), MEWM_FIELD(Progress, done),
              MEWM_FIELD(Progress, total));

#undef MEWM_DESCRIBE
#undef MEWM_FIELD

namespace detail {
template <typename T, typename Fn, std::size_t... I>
void ForEachField(T& value, Fn& fn, std::index_sequence<I...> /*unused*/) {
  constexpr const auto& fields = EventFields<std::remove_const_t<T>>::kFields;
  (fn(I, std::get<I>(fields).name, value.*(std::get<I>(fields).member)), ...);
}
template <typename Fn, std::size_t... I>
void ForEachEventType(Fn& fn, std::index_sequence<I...> /*unused*/) {
  (fn(std::integral_constant<std::size_t, I>{}), ...);
}
}  // namespace detail

/// The number of described fields of T.
template <typename T>
constexpr std::size_t kFieldCount = std::tuple_size_v<decltype(EventFields<T>::kFields)>;

/// Calls `fn(index, name, member)` for each described field of `value` (const or not), in order.
template <typename T, typename Fn>
void ForEachField(T& value, Fn&& fn) {
  detail::ForEachField(value, fn, std::make_index_sequence<kFieldCount<std::remove_const_t<T>>>{});
}

/// Calls `fn(std::integral_constant<std::size_t, I>)` for each alternative I of EventBody.
template <typename Fn>
void ForEachEventType(Fn&& fn) {
  detail::ForEachEventType(fn, std::make_index_sequence<std::variant_size_v<EventBody>>{});
}

/// True for run_finished, run_failed and run_cancelled: nothing follows them in a run.
bool IsTerminal(const EventBody& body);

struct Event {
  std::string run_id;
  std::uint64_t seq = 0;          ///< 1, 2, 3, ... within a run
  std::int64_t timestamp_ns = 0;  ///< since the Unix epoch
  EventBody body;
};

/// The current time in the unit of Event::timestamp_ns (ns since the Unix epoch, wall clock).
std::int64_t NowNs();

/// Snake-case type name, e.g. "candidate_evaluated".
const char* EventTypeName(const EventBody& body);
/// One line of JSON (no newline): {"run_id", "seq", "timestamp_ns", "type", ...fields}.
std::string EventToJson(const Event& event);
/// Parses EventToJson's output; kParse / kCorruptData for anything else.
Expected<Event> EventFromJson(const std::string& line);

class EventSink {
 public:
  virtual ~EventSink() = default;
  /// Delivers one event. A sink that fails makes the runner stop (durability comes first).
  virtual Status Emit(const Event& event) = 0;
};

/// Appends each event as a JSON line and flushes it, so a crash loses at most the current line.
class JsonlSink final : public EventSink {
 public:
  /// Opens (appends to) the file; kIo when it cannot.
  static Expected<std::unique_ptr<JsonlSink>> Open(const std::string& path);
  Status Emit(const Event& event) override;

 private:
  explicit JsonlSink(std::string path) : path_(std::move(path)) {}
  std::string path_;
  std::ofstream out_;
  std::mutex mutex_;
};

/// Sends each event to several sinks in order; the first failure is returned.
class FanoutSink final : public EventSink {
 public:
  void Add(EventSink* sink) { sinks_.push_back(sink); }
  Status Emit(const Event& event) override;

 private:
  std::vector<EventSink*> sinks_;
};

/// Reads an events.jsonl file (all lines must parse).
Expected<std::vector<Event>> ReadEvents(const std::string& path);

}  // namespace mewm::scenarios

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

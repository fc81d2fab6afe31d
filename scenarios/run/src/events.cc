// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/run/events.h"

#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "mewm/core/file_util.h"

namespace mewm::scenarios {

using nlohmann::json;

NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(PlanScoreView, plan, risk_mean, risk_std)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(RunStarted, scenario, output_dir, seed, patients, skipped)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(PatientStarted, patient_id, index, total)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(ProposalMade, patient_id, drugs, embolics, rationale)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(CandidateEvaluated, patient_id, stage, step, score, memo_hit)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(BeamUpdated, patient_id, stage, step, beams)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(PlanDecided, patient_id, best, median_months, volume_path)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(PatientFinished, patient_id, simulations, memo_hits,
                                   model_evaluations, seconds)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(PatientFailed, patient_id, error)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(RunFinished, finished, failed, seconds)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(RunFailed, error)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(RunCancelled, finished)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(RunAccepted, scenario, output_dir, queue_position)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Progress, stage, done, total)

namespace {

constexpr const char* kTypeNames[] = {
    "run_started",   "patient_started",  "proposal",       "candidate_evaluated", "beam_updated",
    "plan_decided",  "patient_finished", "patient_failed", "run_finished",        "run_failed",
    "run_cancelled", "run_accepted",     "progress"};
static_assert(std::size(kTypeNames) == std::variant_size_v<EventBody>);

/// Builds the alternative with index I from JSON when its name matches.
template <std::size_t I = 0>
bool BodyFromJson(const std::string& type, const json& j, EventBody* body) {
  if constexpr (I < std::variant_size_v<EventBody>) {
    if (type == kTypeNames[I]) {
      *body = j.get<std::variant_alternative_t<I, EventBody>>();
      return true;
    }
    return BodyFromJson<I + 1>(type, j, body);
  } else {
    return false;
  }
}

/// Appends `text` as a JSON string. The same output as nlohmann's dump for valid UTF-8, several
/// times faster on long text (runs of plain characters are copied at once); an invalid UTF-8
/// byte becomes U+FFFD instead of an exception, so a model's odd output cannot stop a run.
void AppendJsonString(const std::string& text, std::string* out) {
  out->push_back('"');
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  const std::size_t n = text.size();
  std::size_t i = 0;
  while (i < n) {
    std::size_t plain = i;
    while (plain < n && p[plain] >= 0x20 && p[plain] < 0x80 && p[plain] != '"' &&
           p[plain] != '\\') {
      ++plain;
    }
    out->append(text, i, plain - i);
    i = plain;
    if (i == n) break;
    const unsigned char c = p[i];
    if (c < 0x80) {
      switch (c) {
        case '"':
          out->append("\\\"");
          break;
        case '\\':
          out->append("\\\\");
          break;
        case '\b':
          out->append("\\b");
          break;
        case '\f':
          out->append("\\f");
          break;
        case '\n':
          out->append("\\n");
          break;
        case '\r':
          out->append("\\r");
          break;
        case '\t':
          out->append("\\t");
          break;
        default: {
          char escaped[8];
          std::snprintf(escaped, sizeof(escaped), "\\u%04x", unsigned(c));
          out->append(escaped);
        }
      }
      ++i;
      continue;
    }
    // A multi-byte UTF-8 sequence: copied when well formed.
    const std::size_t length = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 ? 2 : 0;
    bool valid = length > 0 && c <= 0xF4 && i + length <= n;
    for (std::size_t k = 1; valid && k < length; ++k) valid = (p[i + k] & 0xC0) == 0x80;
    if (valid && length == 3) {
      valid = !(c == 0xE0 && p[i + 1] < 0xA0) && !(c == 0xED && p[i + 1] >= 0xA0);
    }
    if (valid && length == 4) {
      valid = !(c == 0xF0 && p[i + 1] < 0x90) && !(c == 0xF4 && p[i + 1] >= 0x90);
    }
    if (valid) {
      out->append(text, i, length);
      i += length;
    } else {
      out->append("\xEF\xBF\xBD");  // U+FFFD
      ++i;
    }
  }
  out->push_back('"');
}

/// nlohmann's compact dump, with strings written by AppendJsonString.
void AppendJson(const json& j, std::string* out) {
  switch (j.type()) {
    case json::value_t::object: {
      out->push_back('{');
      bool first = true;
      for (const auto& [key, value] : j.items()) {
        if (!first) out->push_back(',');
        first = false;
        AppendJsonString(key, out);
        out->push_back(':');
        AppendJson(value, out);
      }
      out->push_back('}');
      break;
    }
    case json::value_t::array: {
      out->push_back('[');
      for (std::size_t k = 0; k < j.size(); ++k) {
        if (k > 0) out->push_back(',');
        AppendJson(j[k], out);
      }
      out->push_back(']');
      break;
    }
    case json::value_t::string:
      AppendJsonString(j.get_ref<const std::string&>(), out);
      break;
    default:
      out->append(j.dump());  // numbers, booleans, null: nlohmann's own formatting
  }
}

}  // namespace

std::int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

const char* EventTypeName(const EventBody& body) { return kTypeNames[body.index()]; }

bool IsTerminal(const EventBody& body) {
  return std::holds_alternative<RunFinished>(body) || std::holds_alternative<RunFailed>(body) ||
         std::holds_alternative<RunCancelled>(body);
}

std::string EventToJson(const Event& event) {
  json j = std::visit([](const auto& b) { return json(b); }, event.body);
  j["run_id"] = event.run_id;
  j["seq"] = event.seq;
  j["timestamp_ns"] = event.timestamp_ns;
  j["type"] = EventTypeName(event.body);
  std::string line;
  line.reserve(256);
  AppendJson(j, &line);
  return line;
}

Expected<Event> EventFromJson(const std::string& line) {
  json j;
  try {
    j = json::parse(line);
  } catch (const std::exception& e) {
    return MakeError(ErrorCode::kParse, std::string("event is not JSON: ") + e.what());
  }
  try {
    Event event;
    event.run_id = j.at("run_id").get<std::string>();
    event.seq = j.at("seq").get<std::uint64_t>();
    event.timestamp_ns = j.at("timestamp_ns").get<std::int64_t>();
    const std::string type = j.at("type").get<std::string>();
    if (!BodyFromJson(type, j, &event.body)) {
      return MakeError(ErrorCode::kCorruptData, "unknown event type '" + type + "'");
    }
    return event;
  } catch (const std::exception& e) {
    return MakeError(ErrorCode::kCorruptData, std::string("malformed event: ") + e.what());
  }
}

Expected<std::unique_ptr<JsonlSink>> JsonlSink::Open(const std::string& path) {
  std::unique_ptr<JsonlSink> sink(new JsonlSink(path));
  sink->out_.open(path, std::ios::app);
  if (!sink->out_) return MakeError(ErrorCode::kIo, "cannot open '" + path + "' for appending");
  return sink;
}

Status JsonlSink::Emit(const Event& event) {
  std::lock_guard<std::mutex> lock(mutex_);
  out_ << EventToJson(event) << '\n';
  out_.flush();
  if (!out_) return MakeError(ErrorCode::kIo, "cannot write to '" + path_ + "'");
  return {};
}

Status FanoutSink::Emit(const Event& event) {
  for (EventSink* sink : sinks_) MEWM_RETURN_IF_ERROR(sink->Emit(event));
  return {};
}

Expected<std::vector<Event>> ReadEvents(const std::string& path) {
  MEWM_TRY(const std::string text, ReadFile(path));
  std::vector<Event> events;
  std::size_t start = 0;
  int line = 0;
  while (start < text.size()) {
    std::size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    ++line;
    if (end > start) {
      auto event = EventFromJson(text.substr(start, end - start));
      if (!event) {
        // A last line without its newline was cut off by a crash: everything before it stands.
        if (end == text.size() && text.back() != '\n') break;
        return event.error().WithContext(path + ":" + std::to_string(line));
      }
      events.push_back(std::move(*event));
    }
    start = end + 1;
  }
  return events;
}

}  // namespace mewm::scenarios

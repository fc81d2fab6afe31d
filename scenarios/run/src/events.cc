// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/run/events.h"

#include <array>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <type_traits>

#include "mewm/core/file_util.h"

namespace mewm::scenarios {

using nlohmann::json;

namespace {

template <std::size_t... I>
constexpr std::array<const char*, sizeof...(I)> TypeNames(std::index_sequence<I...> /*unused*/) {
  return {EventFields<std::variant_alternative_t<I, EventBody>>::kType...};
}
constexpr auto kTypeNames = TypeNames(std::make_index_sequence<std::variant_size_v<EventBody>>{});

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
    if (valid && c == 0xC2 && p[i + 1] <= 0x9F) {
      // A C1 control (U+0080 to U+009F), escaped as C0 controls are: some terminals obey it as
      // they do ESC [, and `mewm watch --json` prints these lines on one.
      char escaped[8];
      std::snprintf(escaped, sizeof(escaped), "\\u%04x", unsigned(p[i + 1]));
      out->append(escaped);
      i += length;
    } else if (valid) {
      out->append(text, i, length);
      i += length;
    } else {
      out->append("\xEF\xBF\xBD");  // U+FFFD
      ++i;
    }
  }
  out->push_back('"');
}

// --- JSON from the description: each value as nlohmann's compact dump writes it -------------

void AppendValue(const std::string& text, std::string* out) { AppendJsonString(text, out); }
void AppendValue(bool value, std::string* out) { out->append(value ? "true" : "false"); }
void AppendValue(double value, std::string* out) { out->append(json(value).dump()); }
template <typename Int, typename = std::enable_if_t<std::is_integral_v<Int>>>
void AppendValue(Int value, std::string* out) {
  out->append(std::to_string(value));
}
template <typename T>
void AppendValue(const std::vector<T>& values, std::string* out);
template <typename T, typename = decltype(EventFields<T>::kFields)>
void AppendValue(const T& value, std::string* out);

/// Appends `,"name":value` for every described field of `value`.
template <typename T>
void AppendFields(const T& value, std::string* out) {
  ForEachField(value, [out](std::size_t /*index*/, const char* name, const auto& member) {
    out->append(",\"");
    out->append(name);  // described names are plain snake_case: nothing to escape
    out->append("\":");
    AppendValue(member, out);
  });
}

template <typename T>
void AppendValue(const std::vector<T>& values, std::string* out) {
  out->push_back('[');
  for (std::size_t k = 0; k < values.size(); ++k) {
    if (k > 0) out->push_back(',');
    AppendValue(values[k], out);
  }
  out->push_back(']');
}

template <typename T, typename>
void AppendValue(const T& value, std::string* out) {
  const std::size_t open = out->size();
  AppendFields(value, out);
  if (out->size() > open) {
    (*out)[open] = '{';  // in place of the first field's comma
  } else {
    out->push_back('{');
  }
  out->push_back('}');
}

// --- and back ---------------------------------------------------------------------------------

template <typename T>
void ReadValue(const json& j, T* value);

/// Reads every described field of `value` from the object `j`; nlohmann's exceptions name what
/// is missing or does not fit.
template <typename T>
void ReadFields(const json& j, T* value) {
  if (!j.is_object()) throw std::invalid_argument("expected an object");
  ForEachField(*value, [&j](std::size_t /*index*/, const char* name, auto& member) {
    ReadValue(j.at(name), &member);
  });
}

template <typename T>
struct IsVector : std::false_type {};
template <typename T>
struct IsVector<std::vector<T>> : std::true_type {};

template <typename T>
void ReadValue(const json& j, T* value) {
  if constexpr (std::is_same_v<T, std::string> || std::is_arithmetic_v<T>) {
    j.get_to(*value);
  } else if constexpr (IsVector<T>::value) {
    if (!j.is_array()) throw std::invalid_argument("expected an array");
    value->resize(j.size());
    for (std::size_t k = 0; k < j.size(); ++k) ReadValue(j[k], &(*value)[k]);
  } else {
    ReadFields(j, value);
  }
}

/// Builds the alternative named `type` from `j`; false when no alternative has that name.
bool BodyFromJson(const std::string& type, const json& j, EventBody* body) {
  bool found = false;
  ForEachEventType([&](auto index) {
    if (found || type != kTypeNames[index]) return;
    std::variant_alternative_t<decltype(index)::value, EventBody> alternative;
    ReadFields(j, &alternative);
    *body = std::move(alternative);
    found = true;
  });
  return found;
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
  std::string line;
  line.reserve(256);
  line.append("{\"run_id\":");
  AppendJsonString(event.run_id, &line);
  line.append(",\"seq\":");
  AppendValue(event.seq, &line);
  line.append(",\"timestamp_ns\":");
  AppendValue(event.timestamp_ns, &line);
  line.append(",\"type\":\"");
  line.append(EventTypeName(event.body));
  line.push_back('"');
  std::visit([&line](const auto& body) { AppendFields(body, &line); }, event.body);
  line.push_back('}');
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

// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/streaming/protocol.h"

#include <capnp/dynamic.h>
#include <capnp/message.h>
#include <capnp/schema.h>
#include <capnp/serialize.h>
#include <kj/debug.h>
#include <kj/exception.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <type_traits>
#include <utility>
#include <vector>

#include "mewm.capnp.h"

namespace mewm::streaming {
namespace {

namespace w = wire;
using scenarios::Event;

static_assert(kSchemaVersion == w::SCHEMA_VERSION, "protocol.h and mewm.capnp disagree");

// --- small helpers ------------------------------------------------------------------------------

capnp::Text::Reader T(const std::string& s) { return capnp::Text::Reader(s.c_str(), s.size()); }
std::string S(capnp::Text::Reader r) { return std::string(r.cStr(), r.size()); }
capnp::Data::Reader D(const std::string& s) {
  return capnp::Data::Reader(reinterpret_cast<const kj::byte*>(s.data()), s.size());
}
std::string S(capnp::Data::Reader r) {
  return std::string(reinterpret_cast<const char*>(r.begin()), r.size());
}

// Cap'n Proto lets a list of all-default structs or empty texts take almost no bytes, so a
// 64-byte message could name millions of elements and be decoded into millions of C++ objects.
// A list may not have more elements than the message has words: every element this schema's
// encoder writes takes at least one. Read() sets the bound for the message being decoded.
thread_local std::size_t t_max_list_elements = 0;

template <typename List>
List Bounded(List list) {
  if (list.size() > t_max_list_elements) {
    KJ_FAIL_REQUIRE("list longer than its message", list.size(), t_max_list_elements);
  }
  return list;
}

void SetTexts(capnp::List<capnp::Text>::Builder list, const std::vector<std::string>& items) {
  for (unsigned i = 0; i < items.size(); ++i) list.set(i, T(items[i]));
}
std::vector<std::string> Texts(capnp::List<capnp::Text>::Reader list) {
  std::vector<std::string> out;
  out.reserve(list.size());
  for (auto t : Bounded(list)) out.push_back(S(t));
  return out;
}

std::string Serialize(capnp::MessageBuilder& message) {
  kj::Array<capnp::word> words = capnp::messageToFlatArray(message);
  auto bytes = words.asBytes();
  return std::string(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
}

/// Reads a flat message from untrusted bytes of any alignment and runs `fn(reader)` under
/// Cap'n Proto's limits; every exception becomes kCorruptData.
template <typename Root, typename Fn>
auto Read(std::string_view bytes, const DecodeLimits& limits, const char* what, Fn&& fn)
    -> decltype(fn(std::declval<typename Root::Reader>())) {
  if (bytes.empty() || bytes.size() % sizeof(capnp::word) != 0) {
    return MakeError(ErrorCode::kCorruptData, std::string(what) + " of " +
                                                  std::to_string(bytes.size()) +
                                                  " bytes is not a Cap'n Proto message");
  }
  // zmq frames are often not 8-byte aligned (TOOLCHAIN.md): copy those into aligned words.
  kj::Array<capnp::word> copy;
  const capnp::word* words = reinterpret_cast<const capnp::word*>(bytes.data());
  if (reinterpret_cast<std::uintptr_t>(bytes.data()) % alignof(capnp::word) != 0) {
    copy = kj::heapArray<capnp::word>(bytes.size() / sizeof(capnp::word));
    std::memcpy(copy.begin(), bytes.data(), bytes.size());
    words = copy.begin();
  }
  capnp::ReaderOptions options;
  options.traversalLimitInWords = limits.traversal_words;
  options.nestingLimit = limits.nesting;
  t_max_list_elements = bytes.size() / sizeof(capnp::word);
  try {
    capnp::FlatArrayMessageReader reader(
        kj::ArrayPtr<const capnp::word>(words, bytes.size() / sizeof(capnp::word)), options);
    return fn(reader.getRoot<Root>());
  } catch (const kj::Exception& e) {
    return MakeError(ErrorCode::kCorruptData,
                     std::string("malformed ") + what + ": " + e.getDescription().cStr());
  } catch (const std::exception& e) {
    return MakeError(ErrorCode::kCorruptData, std::string("malformed ") + what + ": " + e.what());
  }
}

Status CheckVersion(std::uint16_t version, const char* what) {
  if (version == 0 || version > kSchemaVersion) {
    return MakeError(ErrorCode::kMismatch, std::string(what) + " has schema version " +
                                               std::to_string(version) + "; this build speaks 1.." +
                                               std::to_string(kSchemaVersion));
  }
  return {};
}

Unexpected Unknown(const char* what, unsigned which) {
  return MakeError(ErrorCode::kCorruptData, std::string("unknown ") + what + " kind " +
                                                std::to_string(which) + " (newer schema?)");
}

// --- run events, from their one description (mewm/run/events.h) ---------------------------------
//
// The Cap'n Proto side of each event is found by name: the union member is the event's type in
// camelCase, and each field the described field's name in camelCase. The lookups happen once;
// encoding and decoding then go through Cap'n Proto's dynamic API with the found fields.

/// "patient_id" -> "patientId".
std::string CamelCase(const char* snake) {
  std::string out;
  for (const char* p = snake; *p != '\0'; ++p) {
    if (*p == '_' && p[1] != '\0') {
      out.push_back(char(std::toupper(static_cast<unsigned char>(*++p))));
    } else {
      out.push_back(*p);
    }
  }
  return out;
}

/// The schema's fields for Desc's described fields, in the description's order, looked up in
/// `schema` on the first call (a described type always maps to the same schema struct).
template <typename Desc>
const std::vector<capnp::StructSchema::Field>& SchemaFields(capnp::StructSchema schema) {
  static const std::vector<capnp::StructSchema::Field> fields = [schema] {
    std::vector<capnp::StructSchema::Field> out;
    Desc probe{};
    scenarios::ForEachField(probe, [&](std::size_t, const char* name, const auto&) {
      out.push_back(schema.getFieldByName(CamelCase(name)));
    });
    return out;
  }();
  return fields;
}

/// The event union (Envelope.event) and, for each EventBody alternative, its member.
struct EventUnion {
  capnp::StructSchema group;
  std::vector<capnp::StructSchema::Field> member_of;  ///< by EventBody index
  std::vector<int> alternative_of;                    ///< by union member index; -1 = none
};

const EventUnion& Events() {
  static const EventUnion events = [] {
    EventUnion u;
    u.group = capnp::Schema::from<w::Envelope>().getFieldByName("event").getType().asStruct();
    u.alternative_of.assign(u.group.getFields().size(), -1);
    scenarios::ForEachEventType([&](auto index) {
      using Body = std::variant_alternative_t<decltype(index)::value, scenarios::EventBody>;
      u.member_of.push_back(u.group.getFieldByName(CamelCase(scenarios::EventFields<Body>::kType)));
      u.alternative_of[u.member_of.back().getIndex()] = int(index);
    });
    return u;
  }();
  return events;
}

template <typename V>
struct IsVector : std::false_type {};
template <typename V>
struct IsVector<std::vector<V>> : std::true_type {};

template <typename Desc>
void WriteFields(capnp::DynamicStruct::Builder b, const Desc& value);

void SetItem(capnp::DynamicList::Builder list, unsigned i, const std::string& text) {
  list.set(i, T(text));
}
template <typename Desc>
void SetItem(capnp::DynamicList::Builder list, unsigned i, const Desc& value) {
  WriteFields(list[i].as<capnp::DynamicStruct>(), value);
}

/// Sets `field` of `b` from a described member.
template <typename V>
void SetValue(capnp::DynamicStruct::Builder b, capnp::StructSchema::Field field, const V& value) {
  if constexpr (std::is_same_v<V, std::string>) {
    b.set(field, T(value));
  } else if constexpr (std::is_same_v<V, bool> || std::is_floating_point_v<V>) {
    b.set(field, value);
  } else if constexpr (std::is_integral_v<V>) {
    // Counts are unsigned on the wire: the same conversion the generated setters would make.
    switch (field.getType().which()) {
      case capnp::schema::Type::UINT32:
        b.set(field, std::uint32_t(value));
        break;
      case capnp::schema::Type::UINT64:
        b.set(field, std::uint64_t(value));
        break;
      default:
        b.set(field, std::int64_t(value));
    }
  } else if constexpr (IsVector<V>::value) {
    auto list = b.init(field, unsigned(value.size())).template as<capnp::DynamicList>();
    for (unsigned i = 0; i < value.size(); ++i) SetItem(list, i, value[i]);
  } else {
    WriteFields(b.init(field).template as<capnp::DynamicStruct>(), value);
  }
}

template <typename Desc>
void WriteFields(capnp::DynamicStruct::Builder b, const Desc& value) {
  const auto& fields = SchemaFields<Desc>(b.getSchema());
  scenarios::ForEachField(value, [&](std::size_t i, const char*, const auto& member) {
    SetValue(b, fields[i], member);
  });
}

template <typename Desc>
void ReadFields(capnp::DynamicStruct::Reader r, Desc* value);

/// Reads a described member from `r`; Cap'n Proto throws on a value that does not fit.
template <typename V>
void GetValue(capnp::DynamicValue::Reader r, V* value) {
  if constexpr (std::is_same_v<V, std::string>) {
    *value = S(r.as<capnp::Text>());
  } else if constexpr (std::is_same_v<V, bool> || std::is_floating_point_v<V>) {
    *value = r.as<V>();
  } else if constexpr (std::is_integral_v<V>) {
    // A uint32 count past INT_MAX would read as negative in an int (a client showed -1).
    const auto out_of_range = [](const std::string& number) {
      return std::range_error("the number " + number + " is out of range for its field");
    };
    if (r.getType() == capnp::DynamicValue::UINT) {
      const std::uint64_t wide = r.as<std::uint64_t>();
      if (wide > std::uint64_t(std::numeric_limits<V>::max())) {
        throw out_of_range(std::to_string(wide));
      }
      *value = V(wide);
    } else {
      const std::int64_t wide = r.as<std::int64_t>();
      if (wide < std::int64_t(std::numeric_limits<V>::min()) ||
          (wide > 0 && std::uint64_t(wide) > std::uint64_t(std::numeric_limits<V>::max()))) {
        throw out_of_range(std::to_string(wide));
      }
      *value = V(wide);
    }
  } else if constexpr (IsVector<V>::value) {
    auto list = Bounded(r.as<capnp::DynamicList>());
    value->resize(list.size());
    for (unsigned i = 0; i < list.size(); ++i) GetValue(list[i], &(*value)[i]);
  } else {
    ReadFields(r.as<capnp::DynamicStruct>(), value);
  }
}

template <typename Desc>
void ReadFields(capnp::DynamicStruct::Reader r, Desc* value) {
  const auto& fields = SchemaFields<Desc>(r.getSchema());
  scenarios::ForEachField(*value, [&](std::size_t i, const char*, auto& member) {
    GetValue(r.get(fields[i]), &member);
  });
}

void WriteRunBody(w::Envelope::Event::Builder b, const scenarios::EventBody& body) {
  auto event = capnp::toDynamic(b);
  const auto member = Events().member_of[body.index()];
  std::visit(
      [&](const auto& value) {
        WriteFields(event.init(member).template as<capnp::DynamicStruct>(), value);
      },
      body);
}

Expected<scenarios::EventBody> ReadRunBody(w::Envelope::Event::Reader r) {
  auto event = capnp::toDynamic(r);
  const auto& events = Events();
  int alternative = -1;
  KJ_IF_MAYBE (member, event.which()) {
    alternative = events.alternative_of[member->getIndex()];
  }
  if (alternative < 0) {
    return MakeError(ErrorCode::kUnsupported, "event kind " + std::to_string(unsigned(r.which())) +
                                                  " is newer than this build");
  }
  scenarios::EventBody body;
  scenarios::ForEachEventType([&](auto index) {
    if (int(index) != alternative) return;
    std::variant_alternative_t<decltype(index)::value, scenarios::EventBody> value;
    ReadFields(event.get(events.member_of[index]).template as<capnp::DynamicStruct>(), &value);
    body = std::move(value);
  });
  return body;
}

// --- the description against the schema -------------------------------------------------------

template <typename Desc>
Status CheckStruct(capnp::StructSchema schema, const std::string& where);

/// Checks that a field of `type` can hold a described member of type V.
template <typename V>
Status CheckType(capnp::Type type, const std::string& where) {
  using K = capnp::schema::Type;
  bool fits = false;
  if constexpr (std::is_same_v<V, std::string>) {
    fits = type.isText();
  } else if constexpr (std::is_same_v<V, bool>) {
    fits = type.isBool();
  } else if constexpr (std::is_floating_point_v<V>) {
    fits = type.isFloat64();
  } else if constexpr (std::is_integral_v<V>) {
    const auto k = type.which();
    fits = k == K::INT32 || k == K::INT64 || k == K::UINT32 || k == K::UINT64;
  } else if constexpr (IsVector<V>::value) {
    if (type.isList())
      return CheckType<typename V::value_type>(type.asList().getElementType(), where);
  } else {
    if (type.isStruct()) return CheckStruct<V>(type.asStruct(), where);
  }
  if (fits) return {};
  return MakeError(ErrorCode::kMismatch,
                   where + " has a schema type that cannot hold its described member");
}

/// Every described field of Desc has its camelCase field in `schema`, of a fitting type, and the
/// schema has no field the description lacks.
template <typename Desc>
Status CheckStruct(capnp::StructSchema schema, const std::string& where) {
  Status status;
  unsigned described = 0;
  Desc probe{};
  scenarios::ForEachField(probe, [&](std::size_t, const char* name, const auto& member) {
    ++described;
    if (!status) return;
    const std::string camel = CamelCase(name);
    KJ_IF_MAYBE (field, schema.findFieldByName(camel)) {
      status = CheckType<std::decay_t<decltype(member)>>(field->getType(), where + "." + camel);
    } else {
      status = MakeError(ErrorCode::kMismatch, where + " has no field '" + camel +
                                                   "' for the described field '" + name + "'");
    }
  });
  if (!status) return status;
  if (schema.getFields().size() != described) {
    return MakeError(ErrorCode::kMismatch,
                     where + " has " + std::to_string(schema.getFields().size()) +
                         " fields in the schema but " + std::to_string(described) +
                         " in the description (mewm/run/events.h)");
  }
  return {};
}

}  // namespace

Status CheckEventSchema() {
  const auto group =
      capnp::Schema::from<w::Envelope>().getFieldByName("event").getType().asStruct();
  std::vector<bool> covered(group.getFields().size(), false);
  Status status;
  scenarios::ForEachEventType([&](auto index) {
    using Body = std::variant_alternative_t<decltype(index)::value, scenarios::EventBody>;
    if (!status) return;
    const std::string member = CamelCase(scenarios::EventFields<Body>::kType);
    KJ_IF_MAYBE (field, group.findFieldByName(member)) {
      covered[field->getIndex()] = true;
      status = CheckType<Body>(field->getType(), "Envelope.event." + member);
    } else {
      status = MakeError(ErrorCode::kMismatch,
                         std::string("event type '") + scenarios::EventFields<Body>::kType +
                             "' has no member '" + member + "' in the Envelope.event union");
    }
  });
  if (!status) return status;
  for (auto field : group.getFields()) {
    const std::string name = field.getProto().getName().cStr();
    if (!covered[field.getIndex()] && name != "heartbeat" && name != "serverClosing") {
      return MakeError(ErrorCode::kMismatch, "the Envelope.event union's member '" + name +
                                                 "' is no described event (mewm/run/events.h)");
    }
  }
  return {};
}

namespace {

// --- run status ---------------------------------------------------------------------------------

void SetStatus(w::RunStatus::Builder b, const RunStatus& s) {
  b.setRunId(T(s.run_id));
  b.setScenario(T(s.scenario));
  b.setState(static_cast<w::RunState>(s.state));
  b.setLastSeq(s.last_seq);
  b.setPatientsTotal(std::uint32_t(s.patients_total));
  b.setPatientsDone(std::uint32_t(s.patients_done));
  b.setPatientsFailed(std::uint32_t(s.patients_failed));
  b.setOutputDir(T(s.output_dir));
  b.setError(T(s.error));
  b.setTraceId(T(s.trace_id));
}
/// A uint32 count of the wire as an int. Past INT_MAX it would read as negative (a client showed
/// "queue -1/-1"), so it is kCorruptData naming the field.
Expected<int> Count(const char* what, std::uint32_t count) {
  if (count > std::uint32_t(std::numeric_limits<int>::max())) {
    return MakeError(ErrorCode::kCorruptData,
                     std::string(what) + " " + std::to_string(count) + " is out of range");
  }
  return int(count);
}

Expected<RunStatus> ReadStatus(w::RunStatus::Reader r) {
  const auto state = unsigned(r.getState());
  if (state > unsigned(RunState::kCancelled)) return Unknown("run state", state);
  MEWM_TRY(const int total, Count("run status: patientsTotal", r.getPatientsTotal()));
  MEWM_TRY(const int done, Count("run status: patientsDone", r.getPatientsDone()));
  MEWM_TRY(const int failed, Count("run status: patientsFailed", r.getPatientsFailed()));
  return RunStatus{
      S(r.getRunId()), S(r.getScenario()),  RunState(state), r.getLastSeq(),   total, done,
      failed,          S(r.getOutputDir()), S(r.getError()), S(r.getTraceId())};
}

}  // namespace

// --- envelopes ----------------------------------------------------------------------------------

std::string EncodeEnvelope(const Envelope& envelope) {
  // Most events fit in 2 KiB: a small first segment saves zeroing the default 8 KiB one.
  capnp::MallocMessageBuilder message(256);
  auto b = message.initRoot<w::Envelope>();
  b.setSchemaVersion(kSchemaVersion);
  if (const auto* run = std::get_if<RunEvent>(&envelope)) {
    b.setRunId(T(run->event.run_id));
    b.setSeq(run->event.seq);
    b.setTimestampNs(run->event.timestamp_ns);
    b.setTraceId(T(run->trace_id));
    if (run->volume) {
      auto v = b.initVolume();
      v.setSizeBytes(run->volume->size_bytes);
      v.setSha256(D(run->volume->sha256));
      v.setPath(T(run->volume->path));
    }
    WriteRunBody(b.getEvent(), run->event.body);
  } else {
    const auto& server = std::get<ServerEvent>(envelope);
    b.setSeq(server.seq);
    b.setTimestampNs(server.timestamp_ns);
    if (const auto* beat = std::get_if<Heartbeat>(&server.body)) {
      auto x = b.getEvent().initHeartbeat();
      x.setActiveRun(T(beat->active_run));
      x.setQueueDepth(std::uint32_t(beat->queue_depth));
      auto runs = x.initRecentRuns(unsigned(beat->recent_runs.size()));
      for (unsigned i = 0; i < beat->recent_runs.size(); ++i) {
        runs[i].setRunId(T(beat->recent_runs[i].run_id));
        runs[i].setLastSeq(beat->recent_runs[i].last_seq);
      }
    } else {
      const auto& closing = std::get<ServerClosing>(server.body);
      auto x = b.getEvent().initServerClosing();
      x.setReason(T(closing.reason));
      x.setCancelledRuns(std::uint32_t(closing.cancelled_runs));
    }
  }
  return Serialize(message);
}

Expected<Envelope> DecodeEnvelope(std::string_view bytes, const DecodeLimits& limits) {
  return Read<w::Envelope>(
      bytes, limits, "event envelope", [](w::Envelope::Reader r) -> Expected<Envelope> {
        MEWM_RETURN_IF_ERROR(CheckVersion(r.getSchemaVersion(), "event envelope"));
        const auto event = r.getEvent();
        using W = w::Envelope::Event::Which;
        if (event.which() == W::HEARTBEAT || event.which() == W::SERVER_CLOSING) {
          ServerEvent server;
          server.seq = r.getSeq();
          server.timestamp_ns = r.getTimestampNs();
          if (event.which() == W::HEARTBEAT) {
            auto x = event.getHeartbeat();
            MEWM_TRY(const int depth, Count("heartbeat: queueDepth", x.getQueueDepth()));
            Heartbeat beat{S(x.getActiveRun()), depth, {}};
            for (auto run : Bounded(x.getRecentRuns())) {
              beat.recent_runs.push_back({S(run.getRunId()), run.getLastSeq()});
            }
            server.body = std::move(beat);
          } else {
            auto x = event.getServerClosing();
            MEWM_TRY(const int cancelled,
                     Count("server closing: cancelledRuns", x.getCancelledRuns()));
            server.body = ServerClosing{S(x.getReason()), cancelled};
          }
          return Envelope(std::move(server));
        }
        RunEvent run;
        run.event.run_id = S(r.getRunId());
        run.event.seq = r.getSeq();
        run.event.timestamp_ns = r.getTimestampNs();
        run.trace_id = S(r.getTraceId());
        if (run.event.run_id.empty() || run.event.seq == 0) {
          return MakeError(ErrorCode::kCorruptData, "run event without a run id or seq");
        }
        if (r.hasVolume()) {
          auto v = r.getVolume();
          run.volume = VolumeRef{v.getSizeBytes(), S(v.getSha256()), S(v.getPath())};
          if (run.volume->sha256.size() != 32) {
            return MakeError(ErrorCode::kCorruptData, "volume sha256 is not 32 bytes");
          }
        }
        auto body = ReadRunBody(event);
        if (body) {
          run.event.body = std::move(*body);
        } else if (body.error().code == ErrorCode::kUnsupported) {
          run.unknown_kind = true;  // added by a later schema: skipped, not fatal
        } else {
          return body.error();
        }
        return Envelope(std::move(run));
      });
}

std::string RunTopicPrefix(const std::string& run_id) { return "run/" + run_id + "/"; }

std::string TopicOf(const Envelope& envelope) {
  if (const auto* run = std::get_if<RunEvent>(&envelope)) {
    return RunTopicPrefix(run->event.run_id) +
           (run->unknown_kind ? "unknown" : scenarios::EventTypeName(run->event.body));
  }
  const auto& server = std::get<ServerEvent>(envelope);
  return std::holds_alternative<Heartbeat>(server.body) ? "server/heartbeat" : "server/closing";
}

// --- requests -----------------------------------------------------------------------------------

std::string EncodeRequest(const Request& request, std::uint16_t version) {
  capnp::MallocMessageBuilder message;
  auto b = message.initRoot<w::Request>();
  b.setSchemaVersion(version);
  b.setRequestId(T(request.request_id));
  b.setTraceId(T(request.trace_id));
  auto body = b.getBody();
  if (const auto* submit = std::get_if<SubmitRequest>(&request.body)) {
    auto s = body.initSubmit();
    s.setScenarioToml(T(submit->scenario_toml));
    s.setClientRequestId(T(submit->client_request_id));
    s.setScenarioPath(T(submit->scenario_path));
  } else if (const auto* cancel = std::get_if<CancelRequest>(&request.body)) {
    body.initCancel().setRunId(T(cancel->run_id));
  } else if (const auto* status = std::get_if<StatusRequest>(&request.body)) {
    body.initStatus().setRunId(T(status->run_id));
  } else if (const auto* snapshot = std::get_if<SnapshotRequest>(&request.body)) {
    auto s = body.initSnapshot();
    s.setRunId(T(snapshot->run_id));
    s.setAfterSeq(snapshot->after_seq);
    s.setMaxEvents(snapshot->max_events);
  } else if (std::holds_alternative<ListRunsRequest>(request.body)) {
    body.setListRuns();
  } else {
    body.setHealth();
  }
  return Serialize(message);
}

Expected<Request> DecodeRequest(std::string_view bytes, const DecodeLimits& limits) {
  return Read<w::Request>(bytes, limits, "request", [](w::Request::Reader r) -> Expected<Request> {
    MEWM_RETURN_IF_ERROR(CheckVersion(r.getSchemaVersion(), "request"));
    Request request;
    request.request_id = S(r.getRequestId());
    request.trace_id = S(r.getTraceId());
    const auto body = r.getBody();
    using W = w::Request::Body::Which;
    switch (body.which()) {
      case W::SUBMIT:
        request.body = SubmitRequest{S(body.getSubmit().getScenarioToml()),
                                     S(body.getSubmit().getClientRequestId()),
                                     S(body.getSubmit().getScenarioPath())};
        break;
      case W::CANCEL:
        request.body = CancelRequest{S(body.getCancel().getRunId())};
        break;
      case W::STATUS:
        request.body = StatusRequest{S(body.getStatus().getRunId())};
        break;
      case W::SNAPSHOT: {
        auto s = body.getSnapshot();
        request.body = SnapshotRequest{S(s.getRunId()), s.getAfterSeq(), s.getMaxEvents()};
        break;
      }
      case W::LIST_RUNS:
        request.body = ListRunsRequest{};
        break;
      case W::HEALTH:
        request.body = HealthRequest{};
        break;
      default:
        return Unknown("request", unsigned(body.which()));
    }
    return request;
  });
}

// --- replies ------------------------------------------------------------------------------------

const char* ToString(RunState state) {
  static const char* kNames[] = {"queued", "running", "finished", "failed", "cancelled"};
  return kNames[int(state)];
}
bool IsEnded(RunState state) {
  return state == RunState::kFinished || state == RunState::kFailed ||
         state == RunState::kCancelled;
}

const char* ToString(ReplyError code) {
  static const char* kNames[] = {"malformed",        "too_large",      "wrong_version",
                                 "invalid_scenario", "queue_full",     "unknown_run",
                                 "shutting_down",    "forbidden_path", "internal",
                                 "not_cancellable",  "over_limit"};
  return kNames[int(code)];
}

std::string EncodeReply(const Reply& reply) {
  capnp::MallocMessageBuilder message;
  auto b = message.initRoot<w::Reply>();
  b.setSchemaVersion(kSchemaVersion);
  b.setRequestId(T(reply.request_id));
  auto body = b.getBody();
  if (const auto* error = std::get_if<ErrorReply>(&reply.body)) {
    auto e = body.initError();
    e.setCode(static_cast<w::ErrorCode>(error->code));
    e.setMessage(T(error->message));
  } else if (const auto* submitted = std::get_if<Submitted>(&reply.body)) {
    auto s = body.initSubmitted();
    s.setRunId(T(submitted->run_id));
    s.setQueuePosition(std::uint32_t(submitted->queue_position));
    s.setDuplicate(submitted->duplicate);
  } else if (const auto* cancelled = std::get_if<CancelReply>(&reply.body)) {
    SetStatus(body.initCancelled(), cancelled->run);
  } else if (const auto* status = std::get_if<RunStatus>(&reply.body)) {
    SetStatus(body.initStatus(), *status);
  } else if (const auto* snapshot = std::get_if<SnapshotReply>(&reply.body)) {
    auto s = body.initSnapshot();
    SetStatus(s.initRun(), snapshot->run);
    auto events = s.initEvents(unsigned(snapshot->events.size()));
    for (unsigned i = 0; i < snapshot->events.size(); ++i) events.set(i, D(snapshot->events[i]));
    s.setMore(snapshot->more);
  } else if (const auto* list = std::get_if<RunList>(&reply.body)) {
    auto runs = body.initRuns(unsigned(list->runs.size()));
    for (unsigned i = 0; i < list->runs.size(); ++i) SetStatus(runs[i], list->runs[i]);
  } else {
    const auto& h = std::get<Health>(reply.body);
    auto x = body.initHealth();
    x.setUptimeSeconds(h.uptime_seconds);
    x.setQueueDepth(std::uint32_t(h.queue_depth));
    x.setQueueCapacity(std::uint32_t(h.queue_capacity));
    x.setActiveRun(T(h.active_run));
    SetTexts(x.initModelsLoaded(unsigned(h.models_loaded.size())), h.models_loaded);
    x.setEventsPublished(h.events_published);
    x.setEventsDropped(h.events_dropped);
    x.setBadRequests(h.bad_requests);
    x.setRejectedSubmits(h.rejected_submits);
    x.setAuthFailures(h.auth_failures);
    auto stages = x.initStages(unsigned(h.stages.size()));
    for (unsigned i = 0; i < h.stages.size(); ++i) {
      stages[i].setStage(T(h.stages[i].stage));
      stages[i].setCount(h.stages[i].count);
      stages[i].setSumSeconds(h.stages[i].sum_seconds);
    }
    auto limits = x.initLimits();
    limits.setMaxPatients(std::uint32_t(std::max(0, h.limits.max_patients)));
    limits.setMaxVoxels(h.limits.max_voxels);
    limits.setMaxBeamSamples(std::uint32_t(std::max(0, h.limits.max_beam_samples)));
    limits.setMaxDiskBytes(h.limits.max_disk_bytes);
    limits.setMaxSeconds(h.limits.max_seconds);
  }
  return Serialize(message);
}

Expected<Reply> DecodeReply(std::string_view bytes, const DecodeLimits& limits) {
  return Read<w::Reply>(bytes, limits, "reply", [](w::Reply::Reader r) -> Expected<Reply> {
    MEWM_RETURN_IF_ERROR(CheckVersion(r.getSchemaVersion(), "reply"));
    Reply reply;
    reply.request_id = S(r.getRequestId());
    const auto body = r.getBody();
    using W = w::Reply::Body::Which;
    switch (body.which()) {
      case W::ERROR: {
        const auto code = unsigned(body.getError().getCode());
        if (code > unsigned(ReplyError::kOverLimit)) return Unknown("error code", code);
        reply.body = ErrorReply{ReplyError(code), S(body.getError().getMessage())};
        break;
      }
      case W::SUBMITTED: {
        auto s = body.getSubmitted();
        MEWM_TRY(const int position, Count("submitted: queuePosition", s.getQueuePosition()));
        reply.body = Submitted{S(s.getRunId()), position, s.getDuplicate()};
        break;
      }
      case W::CANCELLED: {
        MEWM_TRY(RunStatus run, ReadStatus(body.getCancelled()));
        reply.body = CancelReply{std::move(run)};
        break;
      }
      case W::STATUS: {
        MEWM_TRY(RunStatus run, ReadStatus(body.getStatus()));
        reply.body = std::move(run);
        break;
      }
      case W::SNAPSHOT: {
        auto s = body.getSnapshot();
        SnapshotReply snapshot;
        MEWM_TRY(snapshot.run, ReadStatus(s.getRun()));
        for (auto e : Bounded(s.getEvents())) snapshot.events.push_back(S(e));
        snapshot.more = s.getMore();
        reply.body = std::move(snapshot);
        break;
      }
      case W::RUNS: {
        RunList list;
        for (auto run : Bounded(body.getRuns())) {
          MEWM_TRY(RunStatus status, ReadStatus(run));
          list.runs.push_back(std::move(status));
        }
        reply.body = std::move(list);
        break;
      }
      case W::HEALTH: {
        auto x = body.getHealth();
        Health h;
        h.uptime_seconds = x.getUptimeSeconds();
        MEWM_TRY(h.queue_depth, Count("health: queueDepth", x.getQueueDepth()));
        MEWM_TRY(h.queue_capacity, Count("health: queueCapacity", x.getQueueCapacity()));
        h.active_run = S(x.getActiveRun());
        h.models_loaded = Texts(x.getModelsLoaded());
        h.events_published = x.getEventsPublished();
        h.events_dropped = x.getEventsDropped();
        h.bad_requests = x.getBadRequests();
        h.rejected_submits = x.getRejectedSubmits();
        h.auth_failures = x.getAuthFailures();
        for (auto s : Bounded(x.getStages())) {
          h.stages.push_back({S(s.getStage()), s.getCount(), s.getSumSeconds()});
        }
        // An older server sends no limits: every field reads 0 (none).
        const auto admission = x.getLimits();
        h.limits.max_patients = int(std::min<std::uint32_t>(admission.getMaxPatients(), INT32_MAX));
        h.limits.max_voxels = admission.getMaxVoxels();
        h.limits.max_beam_samples =
            int(std::min<std::uint32_t>(admission.getMaxBeamSamples(), INT32_MAX));
        h.limits.max_disk_bytes = admission.getMaxDiskBytes();
        h.limits.max_seconds = admission.getMaxSeconds();
        reply.body = std::move(h);
        break;
      }
      default:
        return Unknown("reply", unsigned(body.which()));
    }
    return reply;
  });
}

}  // namespace mewm::streaming

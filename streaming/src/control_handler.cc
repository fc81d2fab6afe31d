// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "control_handler.h"

#include <algorithm>
#include <filesystem>
#include <iterator>
#include <optional>
#include <vector>
#include <zmq_addon.hpp>

#include "mewm/core/file_util.h"
#include "mewm/core/text.h"
#include "mewm/streaming/admission.h"
#include "mewm/world/cohort.h"
#include "zmq_util.h"

namespace mewm::streaming {
namespace {

namespace fs = std::filesystem;

Reply Fail(const std::string& request_id, ReplyError code, std::string message) {
  return Reply{request_id, ErrorReply{code, std::move(message)}};
}

/// Why a submit is refused.
struct Refusal {
  ReplyError code;
  std::string message;
};

/// Resolves a scenario path inside `root` (the results root or the scenario base, named by
/// `root_name`); kInvalidArgument when it would leave it. Inside means inside once normalised and
/// the symbolic links of its existing parts resolved (IsPathInside). The message is the same
/// whatever lies at the path, so a refusal tells nothing about files outside the root.
Expected<fs::path> Confine(const fs::path& root, const char* root_name, const std::string& path,
                           const std::string& key) {
  // A NUL would cut the path short where the system opens it, after the check read it whole.
  if (HasControlCharacter(path)) {
    return MakeError(ErrorCode::kInvalidArgument,
                     key + " = \"" + EscapeControl(path) + "\" holds a control character");
  }
  const fs::path p(path);
  for (const auto& part : p) {
    if (part == "..") {
      return MakeError(ErrorCode::kInvalidArgument,
                       key + " = \"" + path + "\" may not contain '..'");
    }
  }
  const fs::path inside = p.is_absolute() ? p.lexically_normal() : (root / p).lexically_normal();
  if (!IsPathInside(inside.string(), root.string())) {
    return MakeError(ErrorCode::kInvalidArgument, key + " = \"" + path +
                                                      "\" is outside the server's " + root_name +
                                                      " " + ResolvedPath(root.string()));
  }
  return inside;
}

/// The check every input file passes, the scenario's keys and a manifest's rows alike: inside
/// the scenario base `base` (Confine), or Confine's error.
std::function<Status(const scenarios::ScenarioPath&)> InputConfinement(fs::path base) {
  return [base = std::move(base)](const scenarios::ScenarioPath& input) -> Status {
    auto inside = Confine(base, "scenario base",
                          fs::absolute(input.path).lexically_normal().string(), input.key);
    if (!inside) return inside.error();
    return {};
  };
}

/// Parses a submitted scenario with its input files confined to the scenario base `base`, checked
/// as the parser meets them (before it looks at or reads them) and once more after, then checks
/// the admission limits. The spec, or why it is refused.
std::optional<Refusal> ParseSubmitted(const SubmitRequest& submit, const ServerOptions& options,
                                      const fs::path& base, scenarios::ScenarioSpec* spec) {
  fs::path folder = base;
  if (!submit.scenario_path.empty()) {
    auto file = Confine(base, "scenario base", submit.scenario_path, "scenario path");
    if (!file) return Refusal{ReplyError::kForbiddenPath, file.error().message};
    folder = file->parent_path();
  }
  const auto confine_input = InputConfinement(base);
  bool forbidden = false;
  scenarios::ParseOptions parse;
  parse.backends = options.backends;
  parse.check_input = [&](const scenarios::ScenarioPath& input) {
    Status inside = confine_input(input);
    forbidden = forbidden || !inside;
    return inside;
  };
  const std::string origin =
      submit.scenario_path.empty() ? "submitted scenario" : submit.scenario_path;
  auto parsed = scenarios::ParseScenario(submit.scenario_toml, origin, folder.string(), parse);
  if (!parsed) {
    return Refusal{forbidden ? ReplyError::kForbiddenPath : ReplyError::kInvalidScenario,
                   parsed.error().message};
  }
  if (parsed->policy_backend == "openai") {
    const auto listed = [](const std::vector<std::string>& list, const std::string& value) {
      return std::find(list.begin(), list.end(), value) != list.end();
    };
    const policy::OpenAiOptions& openai = parsed->openai;
    if (!listed(options.policy_endpoints, openai.endpoint)) {
      return Refusal{ReplyError::kForbiddenPath,
                     "policy.endpoint = \"" + openai.endpoint +
                         "\" is not one this server may call (mewm serve --policy-endpoint)"};
    }
    if (!openai.api_key_env.empty() && !listed(options.policy_key_envs, openai.api_key_env)) {
      return Refusal{ReplyError::kForbiddenPath,
                     "policy.api_key_env = \"" + openai.api_key_env +
                         "\" is not a variable this server may send (mewm serve --policy-key-env)"};
    }
  }
  if (auto admitted = CheckAdmission(EstimateCost(*parsed), options.limits); !admitted) {
    return Refusal{ReplyError::kOverLimit, admitted.error().message};
  }
  for (const scenarios::ScenarioPath& input : parsed->InputPaths()) {  // every one, once more
    if (Status inside = confine_input(input); !inside) {
      return Refusal{ReplyError::kForbiddenPath, inside.error().message};
    }
  }
  *spec = std::move(*parsed);
  return std::nullopt;
}

/// Outputs: everything under the results root `root`, cohorts only in <root>/cohorts/ (the rule
/// of scenarios::SyntheticCohortDir) and runs anywhere else. Sets the spec's synthetic cohort
/// folder and *output, the folder the run's own folder goes in.
std::optional<Refusal> ConfineOutputs(const fs::path& root, scenarios::ScenarioSpec& spec,
                                      fs::path* output) {
  const fs::path cohorts = root / "cohorts";
  for (const scenarios::ScenarioPath& out : spec.OutputPaths()) {
    if (auto inside = Confine(root, "results root", out.path, out.key); !inside) {
      return Refusal{ReplyError::kForbiddenPath, inside.error().message};
    }
  }
  auto confined = Confine(root, "results root", spec.output, "run.output");
  if (!confined) return Refusal{ReplyError::kForbiddenPath, confined.error().message};
  if (IsPathInside(confined->string(), cohorts.string())) {
    return Refusal{ReplyError::kForbiddenPath, "run.output = \"" + spec.output + "\" is inside " +
                                                   ResolvedPath(cohorts.string()) +
                                                   ", where only cohorts live"};
  }
  if (spec.cohort.source == scenarios::CohortSpec::Source::kSynthetic) {
    auto cohort = scenarios::SyntheticCohortDir(spec, confined->string(), root.string());
    if (!cohort) return Refusal{ReplyError::kForbiddenPath, cohort.error().message};
    spec.cohort.dir = *cohort;
    // A run generates its cohort there unless the folder holds this very cohort, and other runs
    // read the cohort already there: a peer naming another run's cohort with another n or seed
    // replaced it, truth included, and that run's evaluation silently used the wrong truth.
    std::error_code ec;
    if (fs::exists(fs::path(*cohort) / "manifest.json", ec) &&
        !scenarios::IsCohortOf(*cohort, scenarios::ScenarioCohortOptions(spec.cohort),
                               spec.actions)) {
      return Refusal{ReplyError::kForbiddenPath,
                     "cohort.dir '" + *cohort +
                         "' holds another cohort (other n, seed or spacing), which other runs "
                         "may read; name a folder of its own"};
    }
  }
  const auto below =
      fs::path(ResolvedPath(confined->string())).lexically_relative(ResolvedPath(root.string()));
  if (std::distance(below.begin(), below.end()) > kMaxRunOutputDepth) {
    return Refusal{ReplyError::kForbiddenPath,
                   "run.output = \"" + spec.output + "\" is more than " +
                       std::to_string(kMaxRunOutputDepth) +
                       " folders below the results root, where a restarted server would not "
                       "find the run"};
  }
  *output = std::move(*confined);
  return std::nullopt;
}

/// Every path derived for the run, checked as written (run.name is confined by the parser, this
/// guards the derivations): its folder and log outside cohorts/, its cohort inside.
std::optional<Refusal> ConfineDerived(const fs::path& root, const RunSetup& setup) {
  const fs::path cohorts = root / "cohorts";
  for (const std::string& derived : {setup.out, EventLogPath(setup.out)}) {
    if (!IsPathInside(derived, root.string()) || IsPathInside(derived, cohorts.string())) {
      return Refusal{ReplyError::kForbiddenPath, "the run's folder '" + derived + "' would leave " +
                                                     ResolvedPath(root.string()) +
                                                     " or enter its cohorts/"};
    }
  }
  if (setup.spec.cohort.source == scenarios::CohortSpec::Source::kSynthetic &&
      !IsPathInside(setup.spec.cohort.dir, cohorts.string())) {
    return Refusal{ReplyError::kForbiddenPath, "the run's cohort '" + setup.spec.cohort.dir +
                                                   "' would leave " +
                                                   ResolvedPath(cohorts.string())};
  }
  return std::nullopt;
}

}  // namespace

ControlHandler::ControlHandler(const ServerOptions& options, RunQueue& runs, EventLog& log,
                               std::function<Health()> health)
    : options_(options), runs_(runs), log_(log), health_(std::move(health)) {}

Reply ControlHandler::Handle(std::string_view bytes) {
  const char* kind = "undecodable";
  Reply reply = Dispatch(bytes, &kind);
  const auto* error = std::get_if<ErrorReply>(&reply.body);
  ++(*counts_.Lock())[{kind, error ? ToString(error->code) : "ok"}];
  return reply;
}

void ControlHandler::ServeSocket(zmq::socket_t& socket) {
  for (;;) {
    std::vector<zmq::message_t> frames;
    if (!TryReceive(socket, &frames)) return;
    if (frames.size() < 2) continue;  // an identity alone: nothing to answer
    // [identity, "", request] from DEALER/REQ clients; [identity, request] is accepted too.
    const bool delimited = frames.size() >= 3 && frames[1].size() == 0;
    const std::size_t first = delimited ? 2 : 1;
    Reply reply;
    if (frames.size() != first + 1) {
      bad_requests_.fetch_add(1, std::memory_order_relaxed);
      reply = Fail("", ReplyError::kMalformed,
                   "a request is one frame (after the empty delimiter), got " +
                       std::to_string(frames.size() - first));
    } else {
      reply = Handle(frames[first].to_string_view());
    }
    const std::string encoded = EncodeReply(reply);
    (void)socket.send(frames[0], zmq::send_flags::sndmore | zmq::send_flags::dontwait);
    if (delimited) (void)socket.send(zmq::message_t(), zmq::send_flags::sndmore);
    (void)socket.send(zmq::buffer(encoded), zmq::send_flags::dontwait);
  }
}

Reply ControlHandler::Dispatch(std::string_view bytes, const char** kind) {
  if (bytes.size() > options_.max_request_bytes) {
    bad_requests_.fetch_add(1, std::memory_order_relaxed);
    return Fail("", ReplyError::kTooLarge,
                "request of " + std::to_string(bytes.size()) + " bytes is over the limit of " +
                    std::to_string(options_.max_request_bytes));
  }
  auto request = DecodeRequest(bytes);
  if (!request) {
    bad_requests_.fetch_add(1, std::memory_order_relaxed);
    return Fail("",
                request.error().code == ErrorCode::kMismatch ? ReplyError::kWrongVersion
                                                             : ReplyError::kMalformed,
                request.error().message);
  }
  const std::string& rid = request->request_id;
  static constexpr const char* kKinds[] = {"submit",   "cancel", "status",
                                           "snapshot", "list",   "health"};
  static_assert(std::variant_size_v<decltype(request->body)> == std::size(kKinds));
  *kind = kKinds[request->body.index()];
  if (const auto* x = std::get_if<SubmitRequest>(&request->body)) {
    return HandleSubmit(*request, *x);
  }
  if (const auto* x = std::get_if<CancelRequest>(&request->body)) {
    return HandleCancel(*request, x->run_id);
  }
  if (const auto* x = std::get_if<SnapshotRequest>(&request->body)) {
    return HandleSnapshot(*request, *x);
  }
  if (const auto* x = std::get_if<StatusRequest>(&request->body)) {
    auto run = runs_.Find(x->run_id);
    if (!run) return Fail(rid, ReplyError::kUnknownRun, "no run '" + x->run_id + "'");
    return Reply{rid, run->GetStatus()};
  }
  if (std::holds_alternative<ListRunsRequest>(request->body)) {
    return Reply{rid, RunList{runs_.Statuses()}};
  }
  return Reply{rid, health_()};
}

Reply ControlHandler::HandleSubmit(const Request& request, const SubmitRequest& submit) {
  const auto reject = [&](ReplyError code, std::string message) {
    rejected_.fetch_add(1, std::memory_order_relaxed);
    return Fail(request.request_id, code, std::move(message));
  };
  const auto refuse = [&](Refusal refusal) {
    return reject(refusal.code, std::move(refusal.message));
  };
  auto earlier = runs_.Admit(submit.client_request_id);
  if (!earlier) return reject(ReplyError::kShuttingDown, earlier.error().message);
  if (*earlier) return Reply{request.request_id, **earlier};

  RunSetup setup;
  const fs::path base = fs::absolute(options_.scenario_base).lexically_normal();
  if (auto refused = ParseSubmitted(submit, options_, base, &setup.spec)) return refuse(*refused);
  const fs::path root = fs::absolute(options_.results_root).lexically_normal();
  fs::path output;
  if (auto refused = ConfineOutputs(root, setup.spec, &output)) return refuse(*refused);
  auto reserved = runs_.ReserveId(setup.spec.name);
  if (!reserved) return reject(ReplyError::kQueueFull, reserved.error().message);
  const int position = reserved->second;
  setup.id = std::move(reserved->first);
  setup.trace_id = request.trace_id.empty() ? setup.id : request.trace_id;
  setup.out = (output / setup.id).string();
  if (auto refused = ConfineDerived(root, setup)) return refuse(*refused);
  setup.options.resume = true;  // continue the log that starts with run_accepted
  // A manifest's rows name more files; the runner checks them on the worker thread, where
  // reading the CSV cannot hold up the control socket.
  setup.options.check_input = InputConfinement(base);
  setup.options.backends = options_.backends;

  auto run = std::make_shared<RunRecord>(std::move(setup));
  std::error_code ec;
  fs::create_directories(run->out, ec);
  if (ec) {
    return Fail(request.request_id, ReplyError::kInternal,
                "cannot create '" + run->out + "': " + ec.message());
  }
  if (auto accepted = log_.Append(run, scenarios::RunAccepted{run->spec.name, run->out, position});
      !accepted) {
    return Fail(request.request_id, ReplyError::kInternal, accepted.error().message);
  }
  const std::string id = run->id;
  runs_.Push(std::move(run), submit.client_request_id);
  return Reply{request.request_id, Submitted{id, position, false}};
}

Reply ControlHandler::HandleCancel(const Request& request, const std::string& id) {
  CancelOutcome outcome = runs_.Cancel(id);
  switch (outcome.kind) {
    case CancelOutcome::Kind::kUnknownRun:
      return Fail(request.request_id, ReplyError::kUnknownRun, "no run '" + id + "'");
    case CancelOutcome::Kind::kLogFailed:
      return Fail(request.request_id, ReplyError::kInternal, std::move(outcome.error));
    case CancelOutcome::Kind::kAlreadyEnded:
      return Fail(request.request_id, ReplyError::kNotCancellable,
                  "run '" + id + "' already ended (" + ToString(outcome.status.state) + ")");
    case CancelOutcome::Kind::kDequeued:
    case CancelOutcome::Kind::kFlagged:
      break;
  }
  return Reply{request.request_id, CancelReply{std::move(outcome.status)}};
}

Reply ControlHandler::HandleSnapshot(const Request& request, const SnapshotRequest& snapshot) {
  auto run = runs_.Find(snapshot.run_id);
  if (!run) {
    return Fail(request.request_id, ReplyError::kUnknownRun, "no run '" + snapshot.run_id + "'");
  }
  SnapshotReply reply;
  reply.run = run->GetStatus();
  const auto page_size = std::uint64_t(options_.snapshot_page);
  const std::uint64_t limit = snapshot.max_events == 0
                                  ? page_size
                                  : std::min<std::uint64_t>(snapshot.max_events, page_size);
  auto page = ReadHistory(*run, snapshot.after_seq, limit, UINT64_MAX);
  if (!page) return Fail(request.request_id, ReplyError::kInternal, page.error().message);
  reply.more = page->more;
  const std::string& text = page->text;
  for (std::size_t start = 0, end = text.find('\n'); end != std::string::npos;
       start = end + 1, end = text.find('\n', start)) {
    auto event = scenarios::EventFromJson(text.substr(start, end - start));
    if (!event) return Fail(request.request_id, ReplyError::kInternal, event.error().message);
    reply.events.push_back(EncodeEnvelope(RunEvent{std::move(*event), run->trace_id, {}}));
  }
  return Reply{request.request_id, std::move(reply)};
}

}  // namespace mewm::streaming

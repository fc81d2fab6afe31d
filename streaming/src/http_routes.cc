// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "http_routes.h"

#include <charconv>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <utility>

#include "event_log.h"

namespace mewm::streaming {
namespace {

nlohmann::json StatusJson(const RunStatus& s) {
  return {{"run_id", s.run_id},
          {"scenario", s.scenario},
          {"state", ToString(s.state)},
          {"last_seq", s.last_seq},
          {"patients_total", s.patients_total},
          {"patients_done", s.patients_done},
          {"patients_failed", s.patients_failed},
          {"output_dir", s.output_dir},
          {"error", s.error},
          {"trace_id", s.trace_id}};
}

/// Compact JSON; bytes that are not UTF-8 (a request path, a model's error) become U+FFFD, where
/// nlohmann's default threw and `GET /\xff` ended the server.
std::string Dump(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string ErrorJson(const std::string& message) {
  return Dump(nlohmann::json{{"error", message}});
}

/// The seq a client resumes after: Last-Event-ID (the header EventSource sends on reconnect), else
/// the `last_event_id` query parameter, else 0 (from the first event). nullopt when malformed.
std::optional<std::uint64_t> ResumeAfter(const HttpRequest& request) {
  std::string raw;
  if (const std::string* header = request.Header("last-event-id")) {
    raw = *header;
  } else if (auto query = request.Query("last_event_id")) {
    raw = *query;
  }
  if (raw.empty()) return 0;
  std::uint64_t value = 0;
  const auto [end, ec] = std::from_chars(raw.data(), raw.data() + raw.size(), value);
  if (ec != std::errc() || end != raw.data() + raw.size() || raw[0] == '+' || raw[0] == '-') {
    return std::nullopt;
  }
  return value;
}

/// A request's route (the label of mewm_http_requests_total; "other" for no endpoint), and for
/// /v1/runs/<id>[/events] the run id and whether the events are asked for.
struct Route {
  std::string name = "other", run_id;
  bool events = false;
};

Route RouteOf(const std::string& path) {
  static const std::string kRunsPrefix = "/v1/runs/", kEvents = "/events";
  Route route;
  if (path == "/metrics" || path == "/v2/health/live" || path == "/v2/health/ready" ||
      path == "/v1/runs") {
    route.name = path;
  } else if (path.compare(0, kRunsPrefix.size(), kRunsPrefix) == 0) {
    std::string id = path.substr(kRunsPrefix.size());
    bool events = false;
    if (id.size() > kEvents.size() &&
        id.compare(id.size() - kEvents.size(), kEvents.size(), kEvents) == 0) {
      id.resize(id.size() - kEvents.size());
      events = true;
    }
    if (!id.empty() && id.find('/') == std::string::npos) {
      route.name = events ? "/v1/runs/{id}/events" : "/v1/runs/{id}";
      route.run_id = std::move(id);
      route.events = events;
    }
  }
  return route;
}

}  // namespace

HttpRoutes::HttpRoutes(const RunQueue& runs, const std::atomic<bool>& serving,
                       std::function<std::string()> metrics)
    : runs_(runs), serving_(serving), metrics_(std::move(metrics)) {}

HttpResponse HttpRoutes::Handle(const HttpRequest& request) const {
  const Route route = RouteOf(request.path);
  if (route.name == "other") {
    return JsonResponse(404, ErrorJson("no such endpoint: " + request.path), route.name);
  }
  if (request.method != "GET") {
    HttpResponse response =
        JsonResponse(405, ErrorJson(request.method + " is not allowed here; use GET"), route.name);
    response.headers.emplace_back("Allow", "GET");
    return response;
  }
  if (route.name == "/metrics") {
    HttpResponse response;
    response.content_type = "text/plain; version=0.0.4; charset=utf-8";
    response.body = metrics_();
    response.route = route.name;
    return response;
  }
  if (route.name == "/v2/health/live") return JsonResponse(200, R"({"live":true})", route.name);
  if (route.name == "/v2/health/ready") return Ready(route.name);
  if (route.name == "/v1/runs") return Runs(route.name);
  return Run(request, route.name, route.run_id, route.events);
}

HttpResponse HttpRoutes::Ready(const std::string& route) const {
  const QueueView queue = runs_.View();
  const bool room = queue.depth < queue.capacity;
  const bool started = serving_.load();
  const bool ready = started && queue.accepting && room;
  nlohmann::json body = {{"ready", ready},
                         {"accepting", queue.accepting},
                         {"queue_depth", queue.depth},
                         {"queue_capacity", queue.capacity},
                         {"active_run", queue.active_run},
                         {"models_loaded", queue.models_loaded}};
  if (!started) {
    body["reason"] = "starting: the control socket is not served yet";
  } else if (!queue.accepting) {
    body["reason"] = "shutting down";
  } else if (!room) {
    body["reason"] = "the run queue is full";
  }
  return JsonResponse(ready ? 200 : 503, Dump(body), route);
}

HttpResponse HttpRoutes::Runs(const std::string& route) const {
  nlohmann::json runs = nlohmann::json::array();
  for (const RunStatus& status : runs_.Statuses()) runs.push_back(StatusJson(status));
  return JsonResponse(200, Dump(nlohmann::json{{"runs", std::move(runs)}}), route);
}

HttpResponse HttpRoutes::Run(const HttpRequest& request, const std::string& route,
                             const std::string& id, bool events) const {
  auto run = runs_.Find(id);
  if (!run) return JsonResponse(404, ErrorJson("no run '" + id + "'"), route);
  const RunStatus status = run->GetStatus();
  if (!events) return JsonResponse(200, Dump(StatusJson(status)), route);
  const auto after = ResumeAfter(request);
  if (!after) {
    return JsonResponse(
        400, ErrorJson("Last-Event-ID (or last_event_id) must be a decimal event seq"), route);
  }
  if (*after > status.last_seq) {
    return JsonResponse(
        400,
        ErrorJson("Last-Event-ID " + std::to_string(*after) + " is beyond the run's last event " +
                  std::to_string(status.last_seq)),
        route);
  }
  if (IsEnded(status.state) && *after == status.last_seq) {
    HttpResponse done;  // the run ended and nothing follows: EventSource stops reconnecting
    done.status = 204;
    done.route = route;
    return done;
  }
  HttpResponse response;
  response.stream = OpenEventStream(std::move(run), *after);
  response.route = route;
  return response;
}

}  // namespace mewm::streaming

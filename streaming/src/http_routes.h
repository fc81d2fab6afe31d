// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// What the HTTP port serves (docs/PROTOCOL.md "HTTP"), read through the run queue's views and
// the event log's streams: /metrics (text made by the server), /v2/health/live and /ready,
// /v1/runs, /v1/runs/<id> and /v1/runs/<id>/events (Server-Sent Events with Last-Event-ID
// resume). Runs on the HTTP loop's thread (mewm/streaming/http_server.h).
#pragma once

#include <atomic>
#include <functional>
#include <string>

#include "mewm/streaming/http_server.h"
#include "run_queue.h"

namespace mewm::streaming {

class HttpRoutes {
 public:
  /// `serving`: the control socket is being served (readiness); `metrics`: the Prometheus text.
  HttpRoutes(const RunQueue& runs, const std::atomic<bool>& serving,
             std::function<std::string()> metrics);

  HttpResponse Handle(const HttpRequest& request) const;

 private:
  HttpResponse Ready(const std::string& route) const;
  HttpResponse Runs(const std::string& route) const;
  HttpResponse Run(const HttpRequest& request, const std::string& route, const std::string& id,
                   bool events) const;

  const RunQueue& runs_;
  const std::atomic<bool>& serving_;
  const std::function<std::string()> metrics_;
};

}  // namespace mewm::streaming

// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "metrics.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstring>
#include <sstream>
#include <thread>

namespace mewm::streaming {
namespace {

/// A sample value in the Prometheus text format, exactly: the shortest decimal that reads back as
/// the same double (std::to_chars), NaN and +Inf/-Inf as the format spells them.
std::string Number(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  char text[64];
  const auto result = std::to_chars(text, text + sizeof(text), value);
  return std::string(text, result.ptr);
}
std::string Number(std::uint64_t value) { return std::to_string(value); }
std::string Number(int value) { return std::to_string(value); }

}  // namespace

void LatencyHistogram::Observe(double seconds) {
  for (std::size_t i = 0; i < kBounds.size(); ++i) {
    if (seconds <= kBounds[i]) {
      buckets_[i].fetch_add(1, std::memory_order_relaxed);
      break;
    }
  }
  count_.fetch_add(1, std::memory_order_relaxed);
  sum_ns_.fetch_add(std::uint64_t(seconds * 1e9), std::memory_order_relaxed);
}

std::uint64_t LatencyHistogram::cumulative(std::size_t i) const {
  std::uint64_t total = 0;
  for (std::size_t k = 0; k <= i; ++k) total += buckets_[k].load(std::memory_order_relaxed);
  return total;
}

void StageMetrics::Observe(const char* stage, double seconds) {
  for (std::size_t i = 0; i < kStages.size(); ++i) {
    if (std::strcmp(stage, kStages[i]) == 0) histograms[i].Observe(seconds);
  }
}

std::vector<StageStats> StageMetrics::Stats() const {
  std::vector<StageStats> out;
  for (std::size_t i = 0; i < kStages.size(); ++i) {
    out.push_back({kStages[i], histograms[i].count(), histograms[i].sum()});
  }
  return out;
}

std::string RenderPrometheus(const Health& health, const StageMetrics& stages) {
  std::ostringstream out;
  const auto metric = [&](const char* name, const char* type, const char* help, auto value) {
    out << "# HELP " << name << ' ' << help << "\n# TYPE " << name << ' ' << type << '\n'
        << name << ' ' << Number(value) << '\n';
  };
  metric("mewm_uptime_seconds", "gauge", "Seconds since the server started.",
         health.uptime_seconds);
  metric("mewm_queue_depth", "gauge", "Runs waiting in the queue.", health.queue_depth);
  metric("mewm_queue_capacity", "gauge", "Capacity of the run queue.", health.queue_capacity);
  metric("mewm_active_runs", "gauge", "Runs executing now.", health.active_run.empty() ? 0 : 1);
  metric("mewm_events_published_total", "counter", "Events sent on the PUB socket.",
         health.events_published);
  metric("mewm_events_dropped_total", "counter",
         "Events not sent because a subscriber was at its high-water mark.", health.events_dropped);
  metric("mewm_bad_requests_total", "counter",
         "Malformed, oversized or wrong-version control requests.", health.bad_requests);
  metric("mewm_rejected_submits_total", "counter", "Submissions rejected (queue full, invalid).",
         health.rejected_submits);
  metric("mewm_auth_failures_total", "counter", "CURVE clients refused by the allowlist.",
         health.auth_failures);
  out << "# HELP mewm_stage_seconds Latency of one call of each pipeline stage.\n"
      << "# TYPE mewm_stage_seconds histogram\n";
  for (std::size_t s = 0; s < StageMetrics::kStages.size(); ++s) {
    const LatencyHistogram& h = stages.histograms[s];
    const std::string label = std::string("stage=\"") + StageMetrics::kStages[s] + "\"";
    for (std::size_t i = 0; i < LatencyHistogram::kBounds.size(); ++i) {
      out << "mewm_stage_seconds_bucket{" << label << ",le=\""
          << Number(LatencyHistogram::kBounds[i]) << "\"} " << h.cumulative(i) << '\n';
    }
    out << "mewm_stage_seconds_bucket{" << label << ",le=\"+Inf\"} " << h.count() << '\n'
        << "mewm_stage_seconds_sum{" << label << "} " << Number(h.sum()) << '\n'
        << "mewm_stage_seconds_count{" << label << "} " << h.count() << '\n';
  }
  return out.str();
}

// --- the HTTP endpoint ----------------------------------------------------------------------
//
// One thread and poll(2): every connection is a non-blocking socket with a deadline, so a client
// that connects and stalls holds no thread and delays nobody. A connection is closed when its
// response is sent (HTTP/1.1 with `Connection: close`), when its deadline passes, or when it is the
// oldest of more than kMaxConnections (then the newest is served instead).

namespace {

using Clock = std::chrono::steady_clock;

constexpr std::size_t kMaxConnections = 64;
constexpr std::size_t kMaxRequestBytes = 8192;                 ///< request line and headers
constexpr auto kConnectionDeadline = std::chrono::seconds(2);  ///< read, answer and write

struct Connection {
  int fd = -1;
  Clock::time_point deadline;
  std::string request;
  std::string response;  ///< non-empty once answered
  std::size_t sent = 0;
};

std::string HttpResponse(int status, const char* reason, const std::string& type,
                         const std::string& body) {
  return "HTTP/1.1 " + std::to_string(status) + " " + reason + "\r\nContent-Type: " + type +
         "\r\nContent-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" +
         body;
}

}  // namespace

struct MetricsServer::Impl {
  int listen_fd = -1;
  int wake[2] = {-1, -1};  ///< a byte on wake[1] stops the loop
  int port = -1;
  std::function<std::string()> render;
  std::thread thread;
  std::vector<Connection> connections;

  ~Impl() {
    for (Connection& c : connections) ::close(c.fd);
    for (int fd : {listen_fd, wake[0], wake[1]}) {
      if (fd >= 0) ::close(fd);
    }
  }

  /// The reply to a complete request head.
  std::string Answer(const std::string& head) const {
    const std::size_t line_end = head.find("\r\n");
    const std::string line = head.substr(0, line_end);
    const std::size_t sp1 = line.find(' '), sp2 = line.find(' ', sp1 + 1);
    if (sp1 == std::string::npos || sp2 == std::string::npos) {
      return HttpResponse(400, "Bad Request", "text/plain", "bad request line\n");
    }
    const std::string method = line.substr(0, sp1);
    std::string target = line.substr(sp1 + 1, sp2 - sp1 - 1);
    target = target.substr(0, target.find('?'));
    if (target != "/metrics") return HttpResponse(404, "Not Found", "text/plain", "try /metrics\n");
    if (method != "GET") {
      return HttpResponse(405, "Method Not Allowed", "text/plain", "GET /metrics only\n");
    }
    return HttpResponse(200, "OK", "text/plain; version=0.0.4", render());
  }

  void Accept() {
    for (;;) {
      const int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) return;  // EAGAIN: all taken; anything else: try again on the next wake-up
      if (connections.size() >= kMaxConnections) {
        // Full: the oldest connection (the longest stalled) makes room for the newest.
        ::close(connections.front().fd);
        connections.erase(connections.begin());
      }
      connections.push_back({fd, Clock::now() + kConnectionDeadline, {}, {}, 0});
    }
  }

  /// Reads or writes what the socket allows; false when the connection is done.
  bool Serve(Connection& c, short revents) {
    if (c.response.empty() && (revents & (POLLIN | POLLHUP | POLLERR))) {
      char buffer[4096];
      for (;;) {
        const ssize_t n = ::recv(c.fd, buffer, sizeof(buffer), 0);
        if (n == 0) return false;  // the client left before asking
        if (n < 0) {
          if (errno == EINTR) continue;
          if (errno == EAGAIN || errno == EWOULDBLOCK) break;
          return false;
        }
        c.request.append(buffer, std::size_t(n));
        if (c.request.size() > kMaxRequestBytes) break;
      }
      const std::size_t end = c.request.find("\r\n\r\n");
      if (end != std::string::npos) {
        c.response = Answer(c.request.substr(0, end));
      } else if (c.request.size() > kMaxRequestBytes) {
        c.response =
            HttpResponse(431, "Request Header Fields Too Large", "text/plain",
                         "request head over " + std::to_string(kMaxRequestBytes) + " bytes\n");
      } else {
        return true;  // wait for the rest
      }
    }
    while (!c.response.empty() && c.sent < c.response.size()) {
      const ssize_t n =
          ::send(c.fd, c.response.data() + c.sent, c.response.size() - c.sent, MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EINTR) continue;
        return errno == EAGAIN || errno == EWOULDBLOCK;  // the rest when it drains
      }
      c.sent += std::size_t(n);
    }
    return c.response.empty() || c.sent < c.response.size();
  }

  void Loop() {
    std::vector<pollfd> fds;
    for (;;) {
      fds.clear();
      fds.push_back({wake[0], POLLIN, 0});
      fds.push_back({listen_fd, POLLIN, 0});
      auto next = Clock::now() + std::chrono::seconds(1);
      for (const Connection& c : connections) {
        fds.push_back({c.fd, short(c.response.empty() ? POLLIN : POLLOUT), 0});
        next = std::min(next, c.deadline);
      }
      const auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(next - Clock::now());
      const int ready =
          ::poll(fds.data(), fds.size(), int(std::max<std::int64_t>(0, wait.count())));
      if (ready < 0 && errno != EINTR) return;
      if (fds[0].revents != 0) return;  // Stop
      // Connections first (their pollfd slots match the list), then new ones.
      const auto now = Clock::now();
      std::vector<Connection> kept;
      kept.reserve(connections.size());
      for (std::size_t i = 0; i < connections.size(); ++i) {
        Connection& c = connections[i];
        const short revents = ready > 0 ? fds[i + 2].revents : short(0);
        const bool open = (revents == 0 || Serve(c, revents)) && now < c.deadline;
        if (open) {
          kept.push_back(std::move(c));
        } else {
          ::close(c.fd);
        }
      }
      connections.swap(kept);
      if (ready > 0 && (fds[1].revents & POLLIN)) Accept();
    }
  }
};

MetricsServer::MetricsServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

MetricsServer::~MetricsServer() {
  const char byte = 0;
  (void)!::write(impl_->wake[1], &byte, 1);
  if (impl_->thread.joinable()) impl_->thread.join();
}

int MetricsServer::port() const { return impl_->port; }

Expected<std::unique_ptr<MetricsServer>> MetricsServer::Start(const std::string& address, int port,
                                                              std::function<std::string()> render) {
  const auto fail = [&](const std::string& why) {
    return MakeError(ErrorCode::kIo, "cannot serve metrics on " + address + ":" +
                                         std::to_string(port) + ": " + why);
  };
  if (port < 0 || port > 65535) return fail("the port must be in [0, 65535]");
  auto impl = std::make_unique<Impl>();
  impl->render = std::move(render);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  if (const int rc = ::getaddrinfo(address.c_str(), std::to_string(port).c_str(), &hints, &found);
      rc != 0) {
    return fail(::gai_strerror(rc));
  }
  std::string why = "no address";
  for (addrinfo* a = found; a != nullptr && impl->listen_fd < 0; a = a->ai_next) {
    const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) continue;
    const int on = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
    if (::bind(fd, a->ai_addr, a->ai_addrlen) == 0 && ::listen(fd, 128) == 0) {
      impl->listen_fd = fd;
    } else {
      why = std::strerror(errno) + std::string(" (port in use?)");
      ::close(fd);
    }
  }
  ::freeaddrinfo(found);
  if (impl->listen_fd < 0) return fail(why);
  sockaddr_storage bound{};
  socklen_t length = sizeof(bound);
  if (::getsockname(impl->listen_fd, reinterpret_cast<sockaddr*>(&bound), &length) != 0) {
    return fail(std::strerror(errno));
  }
  impl->port = bound.ss_family == AF_INET6
                   ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                   : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  if (::pipe2(impl->wake, O_CLOEXEC | O_NONBLOCK) != 0) return fail(std::strerror(errno));
  Impl* raw = impl.get();
  impl->thread = std::thread([raw] { raw->Loop(); });
  return std::unique_ptr<MetricsServer>(new MetricsServer(std::move(impl)));
}

}  // namespace mewm::streaming

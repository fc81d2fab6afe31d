// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// An HTTP/1.1 server on one thread and poll(2), every socket non-blocking: the server's HTTP port
// (docs/PROTOCOL.md "HTTP") and `mewm turing serve`. A request's head (and its body, where
// HttpLimits::max_body_bytes allows one) must arrive within a deadline, however slowly a client
// sends; an answer is written while the client takes it, and closed. Short requests (metrics,
// health, run status) are answered and closed within a deadline; event streams (Server-Sent Events)
// stay open and are fed by pulling from a source only when the client has taken what it was sent,
// so a slow reader costs a bounded buffer and never holds up the loop, the other clients or a run.
// A stream whose client takes nothing for the stall timeout is dropped and counted. With a token,
// every request must carry `Authorization: Bearer <token>` (compared in constant time) or gets 401.
// With CORS origins (HttpLimits::cors_origins), browser pages of those origins may read /v1/ and
// /v2/.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mewm/core/expected.h"
#include "mewm/core/mutex_guarded.h"
#include "mewm/core/regular_file.h"

namespace mewm::streaming {

struct HttpRequest {
  std::string method, target, path, query;  ///< path and query split at the first '?'
  std::vector<std::pair<std::string, std::string>> headers;  ///< names in lower case
  /// The body, as Content-Length announced it; empty unless HttpLimits::max_body_bytes > 0.
  std::string body;
  /// The first header of that (lower-case) name, or nullptr.
  const std::string* Header(std::string_view name) const;
  /// A query parameter (percent-decoded), or nullopt.
  std::optional<std::string> Query(std::string_view name) const;
};

/// A stream the loop pulls from when its client has room.
class StreamSource {
 public:
  virtual ~StreamSource() = default;
  /// Appends the next whole SSE messages (about `budget` bytes, at least one message when one is
  /// ready) to *out and counts the events in *events. Returns false once the stream is complete:
  /// nothing follows what it appended now.
  virtual bool Pull(std::string* out, std::size_t budget, std::uint64_t* events) = 0;
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
  /// Set: a `text/event-stream` response whose body comes from the source (`body` unused).
  std::unique_ptr<StreamSource> stream;
  /// Set (and `stream` not): the body is this file (`body` unused), its size the Content-Length.
  /// It is read in pieces as the client takes them, so an answer never holds a whole file in
  /// memory; a file that shrinks meanwhile ends the answer short of its Content-Length.
  std::optional<RegularFile> file;
  /// The route's name in mewm_http_requests_total (a path template, never a run id).
  std::string route = "other";
};

struct HttpLimits {
  std::size_t max_connections = 64;  ///< open short requests; the oldest makes room
  std::size_t max_streams = 32;      ///< open event streams; more get 503
  /// Open event streams from one client address (an IPv6 client's /64), at most; more from it
  /// get 429. A client that opens streams and never reads them costs the server no data
  /// (nothing piles up while the run is quiet), so without this one address could hold every
  /// stream slot. Behind a reverse proxy every client shares its address: raise it to
  /// max_streams there.
  std::size_t max_streams_per_peer = 8;
  std::size_t max_request_bytes = 8192;
  /// Request bodies, at most (Content-Length; a chunked body is refused 411). 0 = bodies are not
  /// read (the head is answered; what follows it is ignored).
  std::size_t max_body_bytes = 0;
  std::size_t stream_buffer_bytes = 256 * 1024;  ///< unsent bytes per stream, at most (about)
  /// A request's head and body must arrive by then; its answer is closed when the client has
  /// taken nothing of it for this long.
  std::chrono::milliseconds request_deadline{2000};
  std::chrono::milliseconds stall_timeout{30000};
  std::chrono::milliseconds keepalive{15000};  ///< an SSE comment after this long idle
  std::string token;                           ///< "" = no authentication
  /// CORS (opt-in): origins ("https://host[:port]", or "*" for any) whose browser pages may read
  /// /v1/ and /v2/. Their requests get Access-Control-Allow-Origin and Vary: Origin, and an
  /// OPTIONS preflight there is answered (204, allowing GET with the Authorization and
  /// Last-Event-ID headers) before the token check, as browsers send it without credentials.
  /// Empty = no CORS headers, and OPTIONS is the handler's (405).
  std::vector<std::string> cors_origins;
};

/// kInvalidArgument unless `origin` is "*" or scheme://host[:port] (http or https, no path, no
/// trailing slash), as a browser sends it in the Origin header.
Status CheckCorsOrigin(const std::string& origin);

/// What the port did, for the metrics. Owned by the caller, shared with the loop thread.
struct HttpCounters {
  std::atomic<std::uint64_t> streams_open{0}, streams_dropped{0}, streams_rejected{0},
      sse_events{0}, sse_bytes{0}, auth_failures{0};
  /// Requests answered, by route and status code.
  std::map<std::pair<std::string, int>, std::uint64_t> Requests() const;
  void Count(const std::string& route, int status);

 private:
  MutexGuarded<std::map<std::pair<std::string, int>, std::uint64_t>> requests_;
};

/// The status line's reason phrase.
const char* HttpReason(int status);
/// A complete short response (Connection: close).
HttpResponse JsonResponse(int status, std::string body, std::string route);
/// Constant-time comparison of a presented token with the expected one (their SHA-256 digests).
bool TokenMatches(std::string_view presented, std::string_view expected);
/// Reads a bearer token from a file: its first non-blank line, trimmed; at least 16 characters
/// with no spaces or control characters (kInvalidArgument), else kIo when unreadable.
Expected<std::string> ReadTokenFile(const std::string& path);

class HttpServer {
 public:
  using Handler = std::function<HttpResponse(const HttpRequest&)>;
  /// Binds address:port (0 = any free port); kIo when it cannot.
  static Expected<std::unique_ptr<HttpServer>> Start(const std::string& address, int port,
                                                     HttpLimits limits, Handler handler,
                                                     HttpCounters* counters);
  ~HttpServer();
  int port() const;
  /// New data may be ready for the streams: the loop pulls them. Cheap without open streams.
  void Notify();

 private:
  struct Impl;
  explicit HttpServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace mewm::streaming

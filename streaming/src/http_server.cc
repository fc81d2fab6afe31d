// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/streaming/http_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <thread>

#include "mewm/core/file_util.h"
#include "mewm/core/log.h"
#include "mewm/core/sha256.h"

namespace mewm::streaming {
namespace {

using Clock = std::chrono::steady_clock;

std::string Lower(std::string_view text) {
  std::string out(text);
  for (char& c : out) c = char(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string Trim(std::string_view text) {
  const auto first = text.find_first_not_of(" \t");
  if (first == std::string_view::npos) return "";
  return std::string(text.substr(first, text.find_last_not_of(" \t") + 1 - first));
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string PercentDecode(std::string_view text) {
  std::string out;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '%' && i + 2 < text.size() && HexDigit(text[i + 1]) >= 0 &&
        HexDigit(text[i + 2]) >= 0) {
      out += char(HexDigit(text[i + 1]) * 16 + HexDigit(text[i + 2]));
      i += 2;
    } else {
      out += text[i] == '+' ? ' ' : text[i];
    }
  }
  return out;
}

std::string Head(int status, const std::string& content_type, std::size_t length,
                 const std::vector<std::pair<std::string, std::string>>& headers, bool stream) {
  std::string head = "HTTP/1.1 " + std::to_string(status) + " " + HttpReason(status) +
                     "\r\nContent-Type: " + content_type + "\r\n";
  if (stream) {
    head += "Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\n";
  } else {
    head += "Content-Length: " + std::to_string(length) + "\r\n";
  }
  for (const auto& [name, value] : headers) head += name + ": " + value + "\r\n";
  return head + "Connection: close\r\n\r\n";
}

/// False when the first bytes of a request head cannot begin an HTTP/1.x request: a method that
/// is not a token of at most 16 characters (a TLS hello, random bytes), or a control character
/// other than CR, LF and tab. Lets binary input be answered 400 at once, where waiting for the
/// blank line that ends a head would only end at the request deadline, with no answer.
bool CanStartHttp(const std::string& in) {
  const auto token = [](unsigned char ch) {
    return std::isalnum(ch) != 0 || std::strchr("!#$%&'*+-.^_`|~", ch) != nullptr;
  };
  std::size_t method = 0;
  while (method < in.size() && in[method] != ' ') {
    if (method >= 16 || !token(static_cast<unsigned char>(in[method]))) return false;
    ++method;
  }
  for (const char ch : in) {
    const auto u = static_cast<unsigned char>(ch);
    if ((u < 0x20 && ch != '\r' && ch != '\n' && ch != '\t') || u == 0x7f) return false;
  }
  return true;
}

HttpResponse Plain(int status, std::string body, std::string route = "-") {
  HttpResponse response;
  response.status = status;
  response.body = std::move(body);
  response.route = std::move(route);
  return response;
}

/// Where the request head in `in` ends: the position of its empty line, with *next the first
/// byte after that line; npos while it has not come. Lines end in CRLF or, as RFC 9112 lets a
/// recipient accept, in a bare LF (`printf 'GET /metrics HTTP/1.0\n\n' | nc` went unanswered).
std::size_t HeadEnd(const std::string& in, std::size_t* next) {
  for (std::size_t lf = in.find('\n'); lf != std::string::npos; lf = in.find('\n', lf + 1)) {
    if (lf + 1 < in.size() && in[lf + 1] == '\n') {
      *next = lf + 2;
      return lf;
    }
    if (lf + 2 < in.size() && in[lf + 1] == '\r' && in[lf + 2] == '\n') {
      *next = lf + 3;
      return lf;
    }
  }
  return std::string::npos;
}

/// The next line of `head` from `start`, without its CRLF or LF; *end is where its LF is (npos
/// for the last line).
std::string HeadLine(const std::string& head, std::size_t start, std::size_t* end) {
  *end = head.find('\n', start);
  std::string line = head.substr(start, *end == std::string::npos ? *end : *end - start);
  if (!line.empty() && line.back() == '\r') line.pop_back();
  return line;
}

/// Parses a request head (HeadEnd's part of the input); nullopt when it is not HTTP/1.x.
std::optional<HttpRequest> ParseHead(const std::string& head) {
  HttpRequest request;
  std::size_t line_end = 0;
  const std::string line = HeadLine(head, 0, &line_end);
  const std::size_t sp1 = line.find(' ');
  const std::size_t sp2 = sp1 == std::string::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp1 == 0 || sp2 == std::string::npos || line.find(' ', sp2 + 1) != std::string::npos) {
    return std::nullopt;
  }
  request.method = line.substr(0, sp1);
  request.target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  const std::string version = line.substr(sp2 + 1);
  if (version != "HTTP/1.1" && version != "HTTP/1.0") return std::nullopt;
  if (request.target.empty() || request.target[0] != '/') return std::nullopt;
  for (char c : request.method) {
    if (!std::isupper(static_cast<unsigned char>(c))) return std::nullopt;
  }
  for (char c : request.target) {
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) return std::nullopt;
  }
  const std::size_t q = request.target.find('?');
  request.path = request.target.substr(0, q);
  request.query = q == std::string::npos ? "" : request.target.substr(q + 1);
  while (line_end != std::string::npos) {
    const std::string field = HeadLine(head, line_end + 1, &line_end);
    if (field.empty()) continue;
    const std::size_t colon = field.find(':');
    if (colon == std::string::npos || colon == 0) return std::nullopt;
    for (char c : field.substr(0, colon)) {
      if (std::isspace(static_cast<unsigned char>(c)) ||
          std::iscntrl(static_cast<unsigned char>(c)))
        return std::nullopt;
    }
    request.headers.emplace_back(Lower(field.substr(0, colon)), Trim(field.substr(colon + 1)));
  }
  return request;
}

/// Reads what is waiting (so close() sends FIN, not RST, which could discard the response's
/// tail at the client), then closes.
void Finish(int fd) {
  char buffer[4096];
  for (int i = 0; i < 16 && ::recv(fd, buffer, sizeof(buffer), MSG_DONTWAIT) > 0; ++i) {
  }
  ::shutdown(fd, SHUT_WR);
  ::close(fd);
}

/// Who a client is, for the per-peer stream limit: its IPv4 address (also when it reaches a
/// dual-stack socket), or the /64 network of its IPv6 address, since one IPv6 host is commonly
/// given a whole /64 and could otherwise take a new address for every stream.
std::string PeerAddress(const sockaddr_storage& from) {
  char text[INET6_ADDRSTRLEN] = {};
  if (from.ss_family == AF_INET) {
    const auto& v4 = reinterpret_cast<const sockaddr_in&>(from);
    if (::inet_ntop(AF_INET, &v4.sin_addr, text, sizeof(text)) != nullptr) return text;
  } else if (from.ss_family == AF_INET6) {
    in6_addr address = reinterpret_cast<const sockaddr_in6&>(from).sin6_addr;
    if (IN6_IS_ADDR_V4MAPPED(&address)) {
      if (::inet_ntop(AF_INET, &address.s6_addr[12], text, sizeof(text)) != nullptr) return text;
    } else {
      std::fill(std::begin(address.s6_addr) + 8, std::end(address.s6_addr), std::uint8_t(0));
      if (::inet_ntop(AF_INET6, &address, text, sizeof(text)) != nullptr) {
        return std::string(text) + "/64";
      }
    }
  }
  return "";
}

struct Connection {
  int fd = -1;
  std::string peer;  ///< the client's address, without its port ("" when unknown)
  /// Short requests: the request read by then, and each part of the answer taken by the next.
  Clock::time_point deadline;
  std::string in;
  std::optional<HttpRequest> awaiting_body;  ///< its head read, `body_length` bytes to come
  std::size_t body_length = 0;
  std::string out;
  std::size_t sent = 0;
  bool answered = false;
  bool read_closed = false;  ///< the client closed its side after its request
  std::unique_ptr<StreamSource> stream;
  bool stream_done = false;
  std::optional<RegularFile> file;  ///< a short answer's body still to read (HttpResponse::file)
  std::uint64_t file_left = 0;      ///< bytes of it not yet read
  Clock::time_point last_progress, last_write;
  std::size_t pending() const { return out.size() - sent; }
};

}  // namespace

const std::string* HttpRequest::Header(std::string_view name) const {
  for (const auto& [key, value] : headers) {
    if (key == name) return &value;
  }
  return nullptr;
}

std::optional<std::string> HttpRequest::Query(std::string_view name) const {
  std::size_t start = 0;
  while (start <= query.size() && !query.empty()) {
    std::size_t end = query.find('&', start);
    if (end == std::string::npos) end = query.size();
    const std::string_view pair = std::string_view(query).substr(start, end - start);
    const std::size_t eq = pair.find('=');
    if (PercentDecode(pair.substr(0, eq)) == name) {
      return eq == std::string_view::npos ? std::string() : PercentDecode(pair.substr(eq + 1));
    }
    start = end + 1;
  }
  return std::nullopt;
}

std::map<std::pair<std::string, int>, std::uint64_t> HttpCounters::Requests() const {
  return *requests_.Lock();
}

void HttpCounters::Count(const std::string& route, int status) {
  ++(*requests_.Lock())[{route, status}];
}

const char* HttpReason(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 204:
      return "No Content";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 409:
      return "Conflict";
    case 411:
      return "Length Required";
    case 413:
      return "Content Too Large";
    case 415:
      return "Unsupported Media Type";
    case 429:
      return "Too Many Requests";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 503:
      return "Service Unavailable";
    default:
      return "Unknown";
  }
}

HttpResponse JsonResponse(int status, std::string body, std::string route) {
  HttpResponse response;
  response.status = status;
  response.content_type = "application/json";
  response.body = std::move(body);
  response.body += '\n';
  response.route = std::move(route);
  return response;
}

Status CheckCorsOrigin(const std::string& origin) {
  if (origin == "*") return {};
  const auto bad = [&] {
    return MakeError(ErrorCode::kInvalidArgument,
                     "CORS origin '" + origin +
                         "' must be * or scheme://host[:port], as a browser sends it (e.g. "
                         "http://localhost:3000; no path, no trailing slash)");
  };
  std::size_t host = 0;
  if (origin.rfind("http://", 0) == 0) {
    host = 7;
  } else if (origin.rfind("https://", 0) == 0) {
    host = 8;
  } else {
    return bad();
  }
  if (host >= origin.size()) return bad();
  for (std::size_t i = host; i < origin.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(origin[i]);
    if (!(std::isalnum(c) || c == '.' || c == '-' || c == ':' || c == '[' || c == ']')) {
      return bad();
    }
  }
  return {};
}

bool TokenMatches(std::string_view presented, std::string_view expected) {
  // Digests of equal length: the comparison's time tells nothing about the token or its length.
  const std::string a = Sha256(presented), b = Sha256(expected);
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

Expected<std::string> ReadTokenFile(const std::string& path) {
  MEWM_TRY(const std::string text, ReadFile(path));
  std::size_t start = 0;
  while (start < text.size()) {
    std::size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string line = Trim(std::string_view(text).substr(start, end - start));
    if (!line.empty() && line.back() == '\r') line.pop_back();
    start = end + 1;
    if (line.empty() || line[0] == '#') continue;
    for (char c : line) {
      if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) {
        return MakeError(ErrorCode::kInvalidArgument,
                         "'" + path + "': the token may not contain spaces or control characters");
      }
    }
    if (line.size() < 16) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "'" + path + "': the token must be at least 16 characters (got " +
                           std::to_string(line.size()) + "); `openssl rand -hex 32` makes one");
    }
    return line;
  }
  return MakeError(ErrorCode::kInvalidArgument, "'" + path + "' holds no token");
}

struct HttpServer::Impl {
  int listen_fd = -1;
  int wake[2] = {-1, -1};  ///< a byte on wake[1] wakes the loop (Notify, or stop)
  int port = -1;
  HttpLimits limits;
  Handler handler;
  HttpCounters* counters = nullptr;
  std::atomic<bool> stop{false};
  std::thread thread;
  std::vector<Connection> connections;
  std::map<std::string, std::size_t> peer_streams;  ///< open event streams by client address

  ~Impl() {
    for (Connection& c : connections) ::close(c.fd);
    for (int fd : {listen_fd, wake[0], wake[1]}) {
      if (fd >= 0) ::close(fd);
    }
  }

  void Wake() {
    const char byte = 0;
    (void)!::write(wake[1], &byte, 1);  // a full pipe already wakes the loop
  }

  /// The Access-Control-Allow-Origin value for a request from `origin` ("" = none).
  std::string AllowedOrigin(const std::string* origin) const {
    if (origin == nullptr) return "";
    for (const std::string& allowed : limits.cors_origins) {
      if (allowed == "*") return "*";
      if (allowed == *origin) return allowed;
    }
    return "";
  }

  /// The answer to a complete request, with the CORS headers where they apply.
  HttpResponse Answer(const std::optional<HttpRequest>& request) {
    if (!request) return Plain(400, "not an HTTP/1.x request\n");
    const bool cors = !limits.cors_origins.empty() &&
                      (request->path.rfind("/v1/", 0) == 0 || request->path.rfind("/v2/", 0) == 0);
    if (!cors) return Authorized(*request);
    const std::string allowed = AllowedOrigin(request->Header("origin"));
    HttpResponse response;
    if (request->method == "OPTIONS") {
      // A preflight: answered here, before the token check (browsers send it without one).
      if (allowed.empty()) {
        response = Plain(403, "this origin may not read the HTTP port (--http-cors-origin)\n",
                         "preflight");
      } else {
        response = Plain(204, "", "preflight");
        response.headers.emplace_back("Access-Control-Allow-Methods", "GET, OPTIONS");
        response.headers.emplace_back("Access-Control-Allow-Headers",
                                      "Authorization, Last-Event-ID");
        response.headers.emplace_back("Access-Control-Max-Age", "600");
      }
    } else {
      response = Authorized(*request);
    }
    if (!allowed.empty()) response.headers.emplace_back("Access-Control-Allow-Origin", allowed);
    response.headers.emplace_back("Vary", "Origin");  // the answer depends on the Origin header
    return response;
  }

  /// The handler's answer, or 401 when a token is required and the request lacks it.
  HttpResponse Authorized(const HttpRequest& request) {
    if (!limits.token.empty()) {
      const std::string* auth = request.Header("authorization");
      const bool ok = auth != nullptr && auth->size() > 7 &&
                      Lower(auth->substr(0, 7)) == "bearer " &&
                      TokenMatches(Trim(auth->substr(7)), limits.token);
      if (!ok) {
        counters->auth_failures.fetch_add(1, std::memory_order_relaxed);
        HttpResponse refused =
            Plain(401, "a bearer token is required (Authorization: Bearer ...)\n");
        refused.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"mewm\"");
        return refused;
      }
    }
    // A handler's exception must not end the process (the loop's thread would terminate it).
    try {
      return handler(request);
    } catch (const std::exception& e) {
      LogError("HTTP handler failed on " + request.method + " " + request.path + ": " + e.what());
      return Plain(500, "internal error; the server's log says why\n");
    }
  }

  /// Turns the response into bytes on the connection (a stream keeps its source).
  void Respond(Connection& c, HttpResponse response) {
    if (response.stream) {
      const auto mine = peer_streams.find(c.peer);
      if (counters->streams_open.load(std::memory_order_relaxed) >= limits.max_streams) {
        response = StreamRefused(std::move(response), 503,
                                 "too many event streams open (" +
                                     std::to_string(limits.max_streams) + "); try again later\n");
      } else if (mine != peer_streams.end() && mine->second >= limits.max_streams_per_peer) {
        response = StreamRefused(std::move(response), 429,
                                 "too many event streams open from " + c.peer + " (" +
                                     std::to_string(limits.max_streams_per_peer) +
                                     "); close one, or try again later\n");
      }
    }
    counters->Count(response.route, response.status);
    c.answered = true;
    if (response.stream) {
      c.out = Head(response.status, "text/event-stream; charset=utf-8", 0, response.headers, true);
      c.stream = std::move(response.stream);
      c.deadline = Clock::time_point::max();
      c.last_progress = c.last_write = Clock::now();
      counters->streams_open.fetch_add(1, std::memory_order_relaxed);
      ++peer_streams[c.peer];
    } else if (response.file) {
      c.file_left = response.file->size();
      c.out = Head(response.status, response.content_type, std::size_t(c.file_left),
                   response.headers, false);
      c.file = std::move(response.file);
    } else {
      c.out = Head(response.status, response.content_type, response.body.size(), response.headers,
                   false) +
              response.body;
    }
    c.sent = 0;
  }

  /// Tops up a stream's buffer, or a file answer's, when it is below half full.
  void Refill(Connection& c) {
    const bool more = c.stream ? !c.stream_done : c.file.has_value();
    if (!more || c.pending() >= limits.stream_buffer_bytes / 2) return;
    if (c.sent > 0) {
      c.out.erase(0, c.sent);
      c.sent = 0;
    }
    const std::size_t room = limits.stream_buffer_bytes - c.out.size();
    if (c.stream) {
      std::uint64_t events = 0;
      c.stream_done = !c.stream->Pull(&c.out, room, &events);
      counters->sse_events.fetch_add(events, std::memory_order_relaxed);
      return;
    }
    const std::size_t want = std::size_t(std::min<std::uint64_t>(room, c.file_left));
    const std::size_t had = c.out.size();
    c.out.resize(had + want);
    const Expected<std::size_t> got = c.file->Read(c.out.data() + had, want);
    if (!got) LogWarn("HTTP answer cut short: " + got.error().message);
    const std::size_t n = got ? *got : 0;
    c.out.resize(had + n);
    c.file_left -= n;
    // Done, or the file ended early (shrunk) or failed: the client gets what was read, then the
    // close, short of the Content-Length it was promised.
    if (c.file_left == 0 || n == 0) c.file.reset();
  }

  /// Pulls from a stream (or a file) while its client has room and sends what the socket takes;
  /// false when the connection is done (answered and sent, the stream complete, or the peer gone).
  bool Pump(Connection& c, Clock::time_point now) {
    if (!c.answered) return true;
    for (int turn = 0; turn < 8; ++turn) {  // a bounded share of the loop per connection
      Refill(c);
      if (c.pending() == 0) break;
      const ssize_t n = ::send(c.fd, c.out.data() + c.sent, c.pending(), MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        return false;
      }
      c.sent += std::size_t(n);
      c.last_progress = c.last_write = now;
      if (!c.stream) c.deadline = now + limits.request_deadline;  // it is taking the answer
      if (c.stream) counters->sse_bytes.fetch_add(std::uint64_t(n), std::memory_order_relaxed);
    }
    // What is ready stays buffered, so poll waits for the socket (POLLOUT), not for a wake-up.
    Refill(c);
    if (c.pending() == 0) {
      c.last_progress = now;  // nothing waits on the client: it is not stalling
      if (!c.stream || c.stream_done) return false;
      if (now - c.last_write >= limits.keepalive) {
        c.out += ": keepalive\n\n";  // sent on the next turn; keeps proxies from timing out
      }
      return true;
    }
    if (c.stream && now - c.last_progress >= limits.stall_timeout) {
      counters->streams_dropped.fetch_add(1, std::memory_order_relaxed);
      return false;  // it resumes with Last-Event-ID when it reads again
    }
    return true;
  }

  /// Reads what the socket has; false when the connection is done.
  bool Read(Connection& c) {
    char buffer[4096];
    for (;;) {
      const ssize_t n = ::recv(c.fd, buffer, sizeof(buffer), 0);
      if (n == 0) {
        // A stream's client that closes has left; a short request's client may close its side
        // after asking (a half-close) and still read the answer.
        c.read_closed = true;
        return c.answered && !c.stream;
      }
      if (n < 0) {
        if (errno == EINTR) continue;
        return errno == EAGAIN || errno == EWOULDBLOCK;
      }
      if (c.answered) continue;  // input after the request is ignored
      c.in.append(buffer, std::size_t(n));
      if (c.awaiting_body) {
        if (c.in.size() >= c.body_length) AnswerWithBody(c);
        continue;
      }
      std::size_t next = 0;
      const std::size_t end = HeadEnd(c.in, &next);
      if (end != std::string::npos) {
        std::optional<HttpRequest> request = ParseHead(c.in.substr(0, end));
        c.in.erase(0, next);
        if (limits.max_body_bytes > 0 && request && Announced(c, *request)) {
          c.awaiting_body = std::move(request);
          if (c.in.size() >= c.body_length) AnswerWithBody(c);
          continue;
        }
        if (!c.answered) Respond(c, Answer(request));
        c.in.clear();
        c.in.shrink_to_fit();
      } else if (!CanStartHttp(c.in)) {
        Respond(c, Plain(400, "not an HTTP/1.x request\n"));
      } else if (c.in.size() > limits.max_request_bytes) {
        Respond(c, Plain(431, "request head over " + std::to_string(limits.max_request_bytes) +
                                  " bytes\n"));
      }
    }
  }

  /// With bodies allowed: true when `request` announces one to wait for (its length in
  /// c.body_length); false when it has none, or when it was refused here (c answered).
  bool Announced(Connection& c, const HttpRequest& request) {
    if (request.Header("transfer-encoding") != nullptr) {
      // A chunked body has no length to check before it is read: refused, as RFC 9112 allows.
      Respond(c, Plain(411, "send the body with a Content-Length\n"));
      return false;
    }
    const std::string* length = request.Header("content-length");
    if (length == nullptr) return false;
    const bool digits =
        !length->empty() && length->size() <= 12 &&
        std::all_of(length->begin(), length->end(), [](char ch) { return ch >= '0' && ch <= '9'; });
    if (!digits) {
      Respond(c, Plain(400, "Content-Length must be a number\n"));
      return false;
    }
    c.body_length = std::stoull(*length);
    if (c.body_length > limits.max_body_bytes) {
      Respond(c,
              Plain(413, "the body is over " + std::to_string(limits.max_body_bytes) + " bytes\n"));
      return false;
    }
    return c.body_length > 0;
  }

  void AnswerWithBody(Connection& c) {
    c.awaiting_body->body = c.in.substr(0, c.body_length);
    const std::optional<HttpRequest> request = std::move(c.awaiting_body);
    c.awaiting_body.reset();
    c.in.clear();
    c.in.shrink_to_fit();
    Respond(c, Answer(request));
  }

  /// A stream the limits leave no room for: a short answer instead, counted as rejected. It
  /// keeps the route and the CORS headers (a browser reads the refusal).
  HttpResponse StreamRefused(HttpResponse stream, int status, std::string why) {
    counters->streams_rejected.fetch_add(1, std::memory_order_relaxed);
    HttpResponse refused = Plain(status, std::move(why), std::move(stream.route));
    for (auto& header : stream.headers) {
      if (header.first.rfind("Access-Control-", 0) == 0 || header.first == "Vary") {
        refused.headers.push_back(std::move(header));
      }
    }
    refused.headers.emplace_back("Retry-After", "1");
    return refused;
  }

  void Close(Connection& c) {
    if (c.stream) {
      counters->streams_open.fetch_sub(1, std::memory_order_relaxed);
      const auto mine = peer_streams.find(c.peer);
      if (mine != peer_streams.end() && --mine->second == 0) peer_streams.erase(mine);
    }
    Finish(c.fd);
  }

  void Accept(Clock::time_point now) {
    for (;;) {
      sockaddr_storage from{};
      socklen_t from_length = sizeof(from);
      const int fd = ::accept4(listen_fd, reinterpret_cast<sockaddr*>(&from), &from_length,
                               SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) return;  // EAGAIN: all taken; anything else: try again on the next wake-up
      std::size_t short_ones = 0;
      for (const Connection& c : connections) short_ones += c.stream ? 0 : 1;
      if (short_ones >= limits.max_connections) {
        // Full: the oldest short connection (the longest stalled) makes room for the newest.
        // Streams are limited on their own (max_streams) and never evicted for this.
        for (auto it = connections.begin(); it != connections.end(); ++it) {
          if (!it->stream) {
            Close(*it);
            connections.erase(it);
            break;
          }
        }
      }
      Connection c;
      c.fd = fd;
      c.peer = PeerAddress(from);
      c.deadline = now + limits.request_deadline;
      connections.push_back(std::move(c));
    }
  }

  void Loop() {
    std::vector<pollfd> fds;
    while (!stop.load()) {
      fds.clear();
      fds.push_back({wake[0], POLLIN, 0});
      fds.push_back({listen_fd, POLLIN, 0});
      auto next = Clock::now() + std::chrono::seconds(1);
      for (const Connection& c : connections) {
        short events = c.read_closed ? 0 : POLLIN;
        if (c.answered && c.pending() > 0) events |= POLLOUT;
        fds.push_back({c.fd, events, 0});
        if (!c.stream) next = std::min(next, c.deadline);
      }
      const auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(next - Clock::now());
      const int ready =
          ::poll(fds.data(), fds.size(), int(std::max<std::int64_t>(0, wait.count())));
      if (ready < 0 && errno != EINTR) return;
      if (ready > 0 && fds[0].revents != 0) {
        char bytes[256];
        while (::read(wake[0], bytes, sizeof(bytes)) > 0) {
        }
      }
      if (stop.load()) return;
      // Connections first (their pollfd slots match the list), then new ones.
      const auto now = Clock::now();
      std::vector<Connection> kept;
      kept.reserve(connections.size());
      for (std::size_t i = 0; i < connections.size(); ++i) {
        Connection& c = connections[i];
        const short revents = ready > 0 ? fds[i + 2].revents : short(0);
        bool open = true;
        if (revents & (POLLERR | POLLNVAL)) open = false;
        if (open && (revents & (POLLIN | POLLHUP))) open = Read(c);
        // Every stream is pumped each turn (new events are announced by Notify's wake-up).
        if (open) open = Pump(c, now);
        if (open && !c.stream && now >= c.deadline) open = false;
        if (open) {
          kept.push_back(std::move(c));
        } else {
          Close(c);
        }
      }
      connections.swap(kept);
      if (ready > 0 && (fds[1].revents & POLLIN)) Accept(now);
    }
  }
};

HttpServer::HttpServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

HttpServer::~HttpServer() {
  impl_->stop.store(true);
  impl_->Wake();
  if (impl_->thread.joinable()) impl_->thread.join();
  for (Connection& c : impl_->connections) impl_->Close(c);
  impl_->connections.clear();
}

int HttpServer::port() const { return impl_->port; }

void HttpServer::Notify() {
  if (impl_->counters->streams_open.load(std::memory_order_relaxed) > 0) impl_->Wake();
}

Expected<std::unique_ptr<HttpServer>> HttpServer::Start(const std::string& address, int port,
                                                        HttpLimits limits, Handler handler,
                                                        HttpCounters* counters) {
  const auto fail = [&](const std::string& why) {
    return MakeError(ErrorCode::kIo,
                     "cannot serve HTTP on " + address + ":" + std::to_string(port) + ": " + why);
  };
  if (port < 0 || port > 65535) return fail("the port must be in [0, 65535]");
  auto impl = std::make_unique<Impl>();
  impl->limits = std::move(limits);
  impl->handler = std::move(handler);
  impl->counters = counters;
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
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(impl)));
}

}  // namespace mewm::streaming

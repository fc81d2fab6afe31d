// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// `mewm turing serve DIR`: the reader-study page over HTTP (mewm::streaming's HttpServer). Only
// the page, the NiiVue bundle and the files the export's manifest lists are served (an
// allow-list, so no path can reach the key or anything else); answers are appended to
// answers/<reader>.jsonl and fsynced before the reply.
#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "commands.h"
#include "mewm/core/file_util.h"
#include "mewm/core/regular_file.h"
#include "mewm/core/seed.h"
#include "mewm/eval/turing.h"
#include "mewm/streaming/http_server.h"
#include "turing_page.h"

namespace mewm::cli {
namespace {
namespace fs = std::filesystem;

/// The largest request body accepted (an answer is ~200 bytes).
constexpr std::size_t kMaxBody = 16 * 1024;
/// The largest case file served (a NIfTI crop is a few MB; sent in pieces as it is taken).
constexpr std::uint64_t kMaxCaseFileBytes = 512u << 20;
/// Reader IDs with answers, at most: each is a file in answers/ and an entry held in memory, and
/// anyone who reaches the port can make up IDs. A study has a handful.
constexpr std::size_t kMaxReaders = 1000;

std::string UtcNow() {
  const auto now = std::chrono::system_clock::now();
  const std::time_t t = std::chrono::system_clock::to_time_t(now);
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  gmtime_r(&t, &tm);
  char text[96];
  std::snprintf(text, sizeof text, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, int(ms));
  return text;
}

/// Appends one line and fsyncs the file (and, for a new file, its folder). kIo naming the file.
Status AppendDurably(const std::string& path, const std::string& line) {
  const bool created = !fs::exists(path);
  // Never through a link: an answers file is the study's own (a link appended answers anywhere).
  const int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (fd < 0) return MakeError(ErrorCode::kIo, path + ": cannot open for appending");
  std::size_t done = 0;
  while (done < line.size()) {
    const ssize_t n = ::write(fd, line.data() + done, line.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      ::close(fd);
      return MakeError(ErrorCode::kIo, path + ": write failed");
    }
    done += std::size_t(n);
  }
  const bool synced = ::fsync(fd) == 0;
  ::close(fd);
  if (!synced) return MakeError(ErrorCode::kIo, path + ": fsync failed");
  if (created) {
    const int dir =
        ::open(fs::path(path).parent_path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir >= 0) {
      ::fsync(dir);
      ::close(dir);
    }
  }
  return {};
}

/// The study as served: the manifest, the files readers may fetch, and who answered what. Used
/// from the HTTP loop's one thread only, so it needs no lock.
class ReaderStudy {
 public:
  ReaderStudy(scenarios::TuringManifest manifest, std::string answers_dir, std::string viewer)
      : manifest_(std::move(manifest)),
        answers_dir_(std::move(answers_dir)),
        viewer_(std::move(viewer)) {
    for (const scenarios::TuringCase& c : manifest_.cases) {
      for (const scenarios::TuringVolume& v : c.volumes) {
        for (const std::string& f : {v.nifti, v.vdb, v.png}) {
          files_["/" + f] = (fs::path(manifest_.dir) / f).string();
        }
      }
    }
  }

  Status LoadAnswers() {
    std::error_code ec;
    fs::create_directories(answers_dir_, ec);
    if (ec) return MakeError(ErrorCode::kIo, answers_dir_ + ": " + ec.message());
    MEWM_TRY(const auto answers, scenarios::ReadAnswers(answers_dir_, manifest_));
    for (const auto& [reader, list] : answers) {
      for (const scenarios::TuringAnswer& a : list) answered_[reader].push_back(a.case_id);
    }
    return {};
  }

  /// The file behind an allowed URL path, or "".
  std::string File(const std::string& url_path) const {
    if (url_path == "/vendor/niivue.umd.js") {
      const std::string path = (fs::path(viewer_) / "niivue.umd.js").string();
      return fs::is_regular_file(path) ? path : "";
    }
    const auto it = files_.find(url_path);
    return it == files_.end() ? "" : it->second;
  }

  /// The reader's case order (seeded by the reader ID), answers so far and the cases' files.
  nlohmann::json Session(const std::string& reader) {
    std::vector<std::string> order;
    for (const scenarios::TuringCase& c : manifest_.cases) order.push_back(c.id);
    Rng rng(DeriveSeed(HashString("mewm turing reader order"), reader));
    for (std::size_t i = order.size(); i > 1; --i) {
      std::swap(order[i - 1], order[std::size_t(rng.UniformInt(0, std::int64_t(i) - 1))]);
    }
    nlohmann::json cases = nlohmann::json::object();
    for (const scenarios::TuringCase& c : manifest_.cases) {
      nlohmann::json volumes = nlohmann::json::array();
      for (const scenarios::TuringVolume& v : c.volumes) {
        volumes.push_back({{"label", v.label}, {"nifti", v.nifti}, {"png", v.png}});
      }
      cases[c.id] = volumes;
    }
    // Looked up, never added: each new ID asked for grew the map (a reader appears once answered).
    const auto done = answered_.find(reader);
    return {{"reader", reader},
            {"design", scenarios::TuringDesignName(manifest_.design)},
            {"question", manifest_.design == scenarios::TuringDesign::kPair
                             ? "Which of the two post-treatment CTs is synthetic?"
                             : "Is this post-treatment CT real or synthetic?"},
            {"order", order},
            {"answered", done == answered_.end() ? std::vector<std::string>{} : done->second},
            {"cases", cases}};
  }

  /// Validates and stores an answer; (HTTP status, body).
  std::pair<int, std::string> Answer(const std::string& body) {
    const nlohmann::json j = nlohmann::json::parse(body, nullptr, false);
    if (!j.is_object()) return {400, "the body must be a JSON object"};
    const auto reader_it = j.find("reader");
    if (reader_it == j.end() || !reader_it->is_string() ||
        !scenarios::ValidReaderId(reader_it->get<std::string>())) {
      return {400, "\"reader\" must be 1-64 characters of A-Z a-z 0-9 _ -"};
    }
    const std::string reader = reader_it->get<std::string>();
    for (const auto& [k, v] : j.items()) {
      if (k != "reader" && k != "case" && k != "answer" && k != "confidence" && k != "seconds") {
        return {400, "unexpected field \"" + k + "\""};
      }
    }
    // Checked here so the reply names no file of the server (the parser's message names the
    // manifest's path).
    const auto case_it = j.find("case");
    if (case_it != j.end() && case_it->is_string() &&
        manifest_.Find(case_it->get<std::string>()) == nullptr) {
      return {400, "unknown case " + case_it->dump()};
    }
    nlohmann::json line = j;
    line.erase("reader");
    line["time"] = UtcNow();
    line["key_sha256"] = manifest_.key_sha256;
    auto answer = scenarios::ParseAnswerLine(line.dump(), manifest_, reader, "answer");
    if (!answer) return {400, answer.error().message};
    if (answered_.count(reader) == 0 && answered_.size() >= kMaxReaders) {
      return {403, "the study has " + std::to_string(kMaxReaders) + " readers; no new reader IDs"};
    }
    std::vector<std::string>& done = answered_[reader];
    if (std::find(done.begin(), done.end(), answer->case_id) != done.end()) {
      return {409, "case '" + answer->case_id + "' is already answered by '" + reader + "'"};
    }
    const std::string path = (fs::path(answers_dir_) / (reader + ".jsonl")).string();
    if (auto stored = AppendDurably(path, scenarios::AnswerToJsonLine(*answer) + "\n"); !stored) {
      std::fprintf(stderr, "mewm turing serve: %s\n", stored.error().message.c_str());
      if (done.empty()) answered_.erase(reader);
      return {500, "the answer could not be stored; the server's log says why"};
    }
    done.push_back(answer->case_id);
    return {200, nlohmann::json{{"answered", done}, {"total", manifest_.cases.size()}}.dump()};
  }

  std::size_t cases() const { return manifest_.cases.size(); }

 private:
  scenarios::TuringManifest manifest_;
  std::string answers_dir_, viewer_;
  std::map<std::string, std::string> files_;                  ///< URL path -> file
  std::map<std::string, std::vector<std::string>> answered_;  ///< reader -> cases, in order
};

const char* ContentType(const std::string& path) {
  const std::string ext = FileExtension(path);
  if (ext == ".png") return "image/png";
  if (ext == ".js") return "text/javascript";
  return "application/octet-stream";
}

streaming::HttpResponse Reply(int status, std::string body, std::string content_type,
                              std::string route) {
  streaming::HttpResponse response;
  response.status = status;
  response.body = std::move(body);
  response.content_type = std::move(content_type);
  response.route = std::move(route);
  return response;
}

/// The study's routes, on the HTTP loop's thread.
streaming::HttpResponse Route(ReaderStudy& study, const streaming::HttpRequest& req) {
  const auto text = [](int status, const std::string& body) {
    return Reply(status, body, "text/plain; charset=utf-8", "-");
  };
  if (req.path == "/api/answer") {
    if (req.method != "POST") return text(405, "POST an answer here");
    // JSON only: a page of another site can POST text/plain without asking (no CORS
    // preflight), and one forged answer per case would lock the reader out of it.
    const std::string* type = req.Header("content-type");
    if (type == nullptr || type->rfind("application/json", 0) != 0) {
      return text(415, "the body must be application/json");
    }
    const auto [status, body] = study.Answer(req.body);
    return status == 200 ? Reply(200, body, "application/json", "answer") : text(status, body);
  }
  if (req.method != "GET") return text(405, "only GET here");
  if (req.path == "/") return Reply(200, TuringPageHtml(), "text/html; charset=utf-8", "page");
  if (req.path == "/api/session") {
    const std::string reader = req.Query("reader").value_or("");
    if (!scenarios::ValidReaderId(reader)) {
      return text(400, "reader must be 1-64 characters of A-Z a-z 0-9 _ -");
    }
    return Reply(200, study.Session(reader).dump(), "application/json", "session");
  }
  // Everything else: only the allow-listed files; no path is ever mapped onto the folder.
  const std::string file = study.File(req.path);
  auto opened = file.empty() ? Expected<RegularFile>(MakeError(ErrorCode::kNotFound, ""))
                             : RegularFile::Open(file, kMaxCaseFileBytes);
  if (!opened) return text(404, "not found");
  streaming::HttpResponse response = Reply(200, "", ContentType(file), "file");
  response.file = std::move(*opened);
  response.headers.emplace_back("Cache-Control", "no-store");
  return response;
}

std::atomic<bool> g_stop{false};

extern "C" void OnStop(int) { g_stop.store(true); }

}  // namespace

Action AddTuringServe(CLI::App& turing) {
  struct Options {
    std::string dir, bind = "127.0.0.1", answers;
    std::string viewer = "tools/turing_web/node_modules/@niivue/niivue/dist";
    int port = 8017;
  };
  auto o = std::make_shared<Options>();
  CLI::App* sub = turing.add_subcommand(
      "serve", "Serve the reader-study page: blinded cases, NiiVue viewer, answers on disk");
  sub->add_option("DIR", o->dir, "Export folder (mewm turing export)")->required();
  sub->add_option("--bind", o->bind, "Address to listen on (0.0.0.0 opens it to the network)")
      ->capture_default_str();
  sub->add_option("--port", o->port, "Port (0 = any free port, printed)")
      ->check(CLI::Range(0, 65535))
      ->capture_default_str();
  sub->add_option("--answers", o->answers, "Answers folder (default DIR/answers)");
  sub->add_option("--viewer", o->viewer,
                  "Folder holding niivue.umd.js (tools/dev.sh turing-web installs it)")
      ->capture_default_str();
  return [o, sub]() -> int {
    if (!sub->parsed()) return -1;
    auto manifest = scenarios::ReadTuringManifest(o->dir);
    if (!manifest) return Fail(manifest.error());
    const std::string answers =
        o->answers.empty() ? (fs::path(o->dir) / "answers").string() : o->answers;
    ReaderStudy study(std::move(*manifest), answers, o->viewer);
    if (auto loaded = study.LoadAnswers(); !loaded) return Fail(loaded.error());

    // The project's poll(2) server, one thread: a request's head and body must arrive within
    // the deadline however slowly a client sends, so slow clients cannot hold readers up (with
    // a thread per connection, 64 clients sending a header line a second stalled the page).
    streaming::HttpLimits limits;
    limits.max_body_bytes = kMaxBody;
    limits.max_connections = 256;
    limits.request_deadline = std::chrono::seconds(5);
    streaming::HttpCounters counters;
    std::signal(SIGINT, OnStop);
    std::signal(SIGTERM, OnStop);
    auto server = streaming::HttpServer::Start(
        o->bind, o->port, limits,
        [&study](const streaming::HttpRequest& req) { return Route(study, req); }, &counters);
    if (!server) return Fail(server.error());
    std::printf("mewm turing serve: listening on http://%s:%d/ (%zu cases; answers in %s)\n",
                o->bind.c_str(), (*server)->port(), study.cases(), answers.c_str());
    std::fflush(stdout);
    while (!g_stop.load()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    server->reset();  // answers are fsynced as they come: nothing is left to write
    return 0;
  };
}

}  // namespace mewm::cli

// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "event_log.h"

#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <limits>
#include <map>
#include <utility>

#include "mewm/core/file_util.h"
#include "mewm/core/log.h"

namespace mewm::streaming {
namespace {

using Clock = std::chrono::steady_clock;

/// `size` bytes of a file from `offset`.
Expected<std::string> ReadRange(const std::string& path, std::uint64_t offset, std::uint64_t size) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return MakeError(ErrorCode::kIo, "cannot open '" + path + "': " + std::strerror(errno));
  std::string bytes(size, '\0');
  std::uint64_t got = 0;
  while (got < size) {
    const ssize_t n = ::pread(fd, bytes.data() + got, size - got, off_t(offset + got));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += std::uint64_t(n);
  }
  ::close(fd);
  if (got != size) return MakeError(ErrorCode::kIo, "'" + path + "' is shorter than its index");
  return bytes;
}

/// A run's events as Server-Sent Events, read from its durable log (the same index and file as
/// the snapshots of the ZeroMQ late join).
class RunEventStream final : public StreamSource {
 public:
  RunEventStream(std::shared_ptr<RunRecord> run, std::uint64_t after)
      : run_(std::move(run)), after_(after) {}

  bool Pull(std::string* out, std::size_t budget, std::uint64_t* events) override {
    auto page = ReadHistory(*run_, after_, std::numeric_limits<std::uint64_t>::max(), budget);
    if (!page) {
      LogWarn("event stream of " + run_->id + ": " + page.error().message);
      return false;  // the client reconnects with Last-Event-ID
    }
    std::uint64_t seq = page->first_seq;
    const std::string& text = page->text;
    for (std::size_t start = 0, end = text.find('\n'); end != std::string::npos;
         start = end + 1, end = text.find('\n', start), ++seq) {
      *out += "id: " + std::to_string(seq) + "\ndata: ";
      out->append(text, start, end - start);
      *out += "\n\n";
      ++*events;
      after_ = seq;
    }
    return !page->ended;
  }

 private:
  std::shared_ptr<RunRecord> run_;
  std::uint64_t after_;
};

}  // namespace

/// The log thread's open events.jsonl files, one per run being written; only Loop has one.
class EventLog::Files {
 public:
  Files() = default;
  Files(const Files&) = delete;
  Files& operator=(const Files&) = delete;
  ~Files() {
    for (auto& entry : open_) ::close(entry.second.second);
  }

  /// Appends text to the run's events.jsonl in one write (opened on first use).
  Status Write(const std::shared_ptr<RunRecord>& run, const std::string& text) {
    auto it = open_.find(run.get());
    if (it == open_.end()) {
      const int fd =
          ::open(run->log_path().c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
      if (fd < 0) {
        return MakeError(ErrorCode::kIo,
                         "cannot open '" + run->log_path() + "': " + std::strerror(errno));
      }
      it = open_.emplace(run.get(), std::make_pair(run, fd)).first;
    }
    const int fd = it->second.second;
    for (std::size_t written = 0; written < text.size();) {
      const ssize_t n = ::write(fd, text.data() + written, text.size() - written);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        return MakeError(ErrorCode::kIo,
                         "cannot write '" + run->log_path() + "': " + std::strerror(errno));
      }
      written += std::size_t(n);
    }
    return {};
  }

  void Close(const RunRecord& run) {
    if (auto it = open_.find(&run); it != open_.end()) {
      ::close(it->second.second);
      open_.erase(it);
    }
  }

 private:
  /// Keyed by the record, which the entry keeps alive while its file is open.
  std::map<const RunRecord*, std::pair<std::shared_ptr<RunRecord>, int>> open_;
};

EventLog::EventLog(EventPublisher& publisher, StageMetrics& stages, bool publish_volumes,
                   std::function<void()> written)
    : publisher_(publisher),
      stages_(stages),
      publish_volumes_(publish_volumes),
      written_(std::move(written)) {}

EventLog::~EventLog() { Stop(); }

void EventLog::Start() {
  thread_ = std::thread([this] {
    ::pthread_setname_np(::pthread_self(), "mewm-log");  // names show in top -H and perf
    Loop();
  });
}

void EventLog::Stop() {
  queue_.Stop();
  if (thread_.joinable()) thread_.join();
}

Status EventLog::Enqueue(const std::shared_ptr<RunRecord>& run, const scenarios::Event& event) {
  if (event.run_id != run->id) {
    return MakeError(ErrorCode::kInternal,
                     "runner emitted run id " + event.run_id + " for run " + run->id);
  }
  if (run->log_failed.load()) return run->progress.Lock()->log_error.error();
  run->queued_seq.store(event.seq);
  Item item;
  item.run = run;
  item.made = Clock::now();
  item.seq = event.seq;
  item.terminal = scenarios::IsTerminal(event.body);
  if (item.terminal || std::holds_alternative<scenarios::RunStarted>(event.body) ||
      std::holds_alternative<scenarios::PatientFinished>(event.body) ||
      std::holds_alternative<scenarios::PatientFailed>(event.body)) {
    item.status_event = event;
  }
  item.line = scenarios::EventToJson(event);
  RunEvent wire{event, run->trace_id, std::nullopt};
  if (const auto* decided = std::get_if<scenarios::PlanDecided>(&event.body);
      decided && publish_volumes_ && !decided->volume_path.empty()) {
    if (auto bytes = ReadFile(decided->volume_path)) {
      item.volume = std::move(*bytes);
      wire.volume = VolumeRef{item.volume.size(), Sha256(item.volume), decided->volume_path};
    } else {
      LogWarn("not publishing volume: " + bytes.error().message);
    }
  }
  item.encoded = EncodeEnvelope(wire);
  item.topic = RunTopicPrefix(run->id) + scenarios::EventTypeName(event.body);
  queue_.Push(std::move(item));
  return {};
}

Status EventLog::Append(const std::shared_ptr<RunRecord>& run, scenarios::EventBody body) {
  const std::uint64_t seq = run->queued_seq.load() + 1;
  MEWM_RETURN_IF_ERROR(
      Enqueue(run, scenarios::Event{run->id, seq, scenarios::NowNs(), std::move(body)}));
  Flush();
  return run->progress.Lock()->log_error;
}

void EventLog::Flush() { queue_.Flush(); }

void EventLog::Close(const std::shared_ptr<RunRecord>& run) {
  Item item;
  item.run = run;
  item.close = true;
  queue_.Push(std::move(item));
  Flush();
}

void EventLog::Loop() {
  Files files;
  for (;;) {
    std::deque<Item> batch = queue_.TakeAll();
    if (batch.empty()) return;  // stopped, and everything is written
    for (std::size_t begin = 0; begin < batch.size();) {
      if (batch[begin].close) {
        files.Close(*batch[begin].run);
        ++begin;
        continue;
      }
      std::size_t end = begin + 1;
      while (end < batch.size() && batch[end].run == batch[begin].run && !batch[end].close) ++end;
      WriteThenPublish(files, batch, begin, end);
      begin = end;
    }
    if (written_) written_();
    queue_.Done(batch.size());
  }
}

void EventLog::WriteThenPublish(Files& files, std::deque<Item>& batch, std::size_t begin,
                                std::size_t end) {
  const std::shared_ptr<RunRecord>& run = batch[begin].run;
  if (run->log_failed.load()) return;  // the run already lost its log: publish nothing more
  std::string text;
  for (std::size_t i = begin; i < end; ++i) {
    text += batch[i].line;
    text += '\n';
  }
  Status written = run->progress.With([&](RunProgress& p) -> Status {
    if (p.log.indexed) return {};
    p.log.indexed = true;
    p.log.first_seq = batch[begin].seq;
    return IndexLog(run->log_path(), p.log);  // a resumed run's earlier lines are its history too
  });
  // Only this thread writes a run's log, so the write itself holds no lock (a run's thread
  // queueing its next event, or a snapshot, never waits on the disk).
  if (written) written = files.Write(run, text);
  if (!written) {
    LogWarn("run " + run->id + ": " + written.error().message);
    run->progress.Lock()->log_error = written;
    run->log_failed = true;
    files.Close(*run);
    return;
  }
  run->progress.With([&](RunProgress& p) {
    for (std::size_t i = begin; i < end; ++i) {
      p.log.offsets.push_back(p.log.size);
      p.log.size += batch[i].line.size() + 1;
      if (batch[i].status_event) p.Apply(*batch[i].status_event);
    }
  });
  if (batch[end - 1].terminal) files.Close(*run);  // nothing follows a terminal event
  run->last_event_ns.store(SteadyNs(), std::memory_order_relaxed);
  auto socket = publisher_.Lock();
  for (std::size_t i = begin; i < end; ++i) {
    Item& item = batch[i];
    socket.Send(item.topic, item.encoded, item.volume.empty() ? nullptr : &item.volume);
    stages_.publish().Observe(std::chrono::duration<double>(Clock::now() - item.made).count());
  }
  run->published_seq.store(batch[end - 1].seq, std::memory_order_release);
}

Expected<HistoryPage> ReadHistory(const RunRecord& run, std::uint64_t after,
                                  std::uint64_t max_lines, std::uint64_t max_bytes) {
  HistoryPage page;
  std::uint64_t from = 0, to = 0;  // byte range of the page in events.jsonl
  {
    auto p = run.progress.Lock();
    const LogIndex& log = p->log;
    const std::uint64_t count = log.offsets.size();
    const std::uint64_t begin = after < log.first_seq ? 0 : after + 1 - log.first_seq;
    std::uint64_t end = begin;
    if (begin < count) {
      from = log.offsets[begin];
      end = begin + 1;  // at least one line, then as many as fit
      while (end < count && end - begin < max_lines && log.offsets[end] - from < max_bytes) ++end;
      to = end < count ? log.offsets[end] : log.size;
      page.first_seq = log.first_seq + begin;
      page.lines = end - begin;
    }
    page.more = end < count;
    page.ended = IsEnded(p->state) && end >= count;
  }
  if (page.lines == 0) return page;
  MEWM_TRY(page.text, ReadRange(run.log_path(), from, to - from));
  return page;
}

std::unique_ptr<StreamSource> OpenEventStream(std::shared_ptr<RunRecord> run, std::uint64_t after) {
  return std::make_unique<RunEventStream>(std::move(run), after);
}

}  // namespace mewm::streaming

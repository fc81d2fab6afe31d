// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "run_queue.h"

#include <pthread.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "mewm/core/log.h"

namespace mewm::streaming {
namespace {

namespace fs = std::filesystem;

/// A run's events go to the event log, then to the local display sink if there is one.
class RunSink final : public scenarios::EventSink {
 public:
  RunSink(EventLog& log, std::shared_ptr<RunRecord> run) : log_(log), run_(std::move(run)) {}
  Status Emit(const scenarios::Event& event) override {
    MEWM_RETURN_IF_ERROR(log_.Enqueue(run_, event));
    return run_->extra ? run_->extra->Emit(event) : Status{};
  }

 private:
  EventLog& log_;
  std::shared_ptr<RunRecord> run_;
};

/// What health lists as loaded while a run runs: its backends and model files.
std::vector<std::string> ModelsOf(const scenarios::ScenarioSpec& spec) {
  return {"policy:" + spec.policy_backend,
          "dynamics:" + spec.dynamics_backend +
              (spec.calibration.empty() ? "" : " " + spec.calibration) +
              (spec.diffusion.model_path.empty() ? "" : " " + spec.diffusion.model_path),
          "survival:" + spec.survival_backend +
              (spec.survival_model.empty() ? "" : " " + spec.survival_model)};
}

/// A run an earlier process left in `folder`, read from its log, with the time of its first
/// event; kNotFound for an empty log.
Expected<std::pair<std::int64_t, std::shared_ptr<RunRecord>>> ReadEarlierRun(
    const fs::path& folder) {
  RunSetup setup;
  setup.out = folder.string();
  RunProgress progress;
  scenarios::Event first, last;
  bool any = false;
  MEWM_RETURN_IF_ERROR(IndexLog(EventLogPath(setup.out), progress.log, [&](const auto& e) {
    if (!any) first = e;
    any = true;
    last = e;
    if (const auto* a = std::get_if<scenarios::RunAccepted>(&e.body)) setup.spec.name = a->scenario;
    if (const auto* s = std::get_if<scenarios::RunStarted>(&e.body)) setup.spec.name = s->scenario;
    progress.Apply(e);
  }));
  if (!any) return MakeError(ErrorCode::kNotFound, "empty log");
  setup.id = first.run_id;
  setup.trace_id = setup.id;
  progress.log.indexed = true;
  if (!IsEnded(progress.state)) progress.state = RunState::kRunning;  // until run_failed
  auto run = std::make_shared<RunRecord>(std::move(setup), std::move(progress));
  run->queued_seq.store(last.seq);
  return std::make_pair(first.timestamp_ns, std::move(run));
}

}  // namespace

RunQueue::RunQueue(EventLog& log, StageMetrics& stages, RunFunction run, int capacity)
    : log_(log), stages_(stages), run_fn_(std::move(run)), capacity_(capacity) {}

RunQueue::~RunQueue() { Stop(); }

void RunQueue::Start() {
  worker_ = std::thread([this] {
    ::pthread_setname_np(::pthread_self(), "mewm-run");
    WorkerLoop();
  });
}

void RunQueue::Recover(const std::string& results_root) {
  std::error_code ec;
  const fs::path root = fs::absolute(results_root);
  if (!fs::is_directory(root, ec)) return;
  std::vector<std::pair<std::int64_t, std::shared_ptr<RunRecord>>> found;
  for (auto it = fs::recursive_directory_iterator(root, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    // <run.output>/<run id>/events.jsonl: run.output's folders, then two more levels.
    if (it.depth() > kMaxRunOutputDepth) it.disable_recursion_pending();
    if (it->path().filename() != "events.jsonl") continue;
    auto run = ReadEarlierRun(it->path().parent_path());
    if (!run) {
      LogWarn("not recovering " + it->path().string() + ": " + run.error().message);
      continue;
    }
    found.push_back(std::move(*run));
  }
  std::sort(found.begin(), found.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<std::shared_ptr<RunRecord>> cut_off;
  {
    auto t = table_.Lock();
    for (auto& [time, run] : found) {
      if (t->runs.count(run->id)) {
        LogWarn("not recovering a second run " + run->id + " in " + run->out);
        continue;
      }
      t->runs[run->id] = run;
      t->run_order.push_back(run);
      if (!IsEnded(run->progress.Lock()->state)) cut_off.push_back(run);
    }
  }
  for (const auto& run : cut_off) {  // logged outside the lock: Append waits for the log
    (void)log_.Append(run, scenarios::RunFailed{"interrupted: the server stopped before the run "
                                                "ended (restarted server)"});
  }
}

Expected<std::optional<Submitted>> RunQueue::Admit(const std::string& client_request_id) const {
  auto t = table_.Lock();
  if (!t->accepting) return MakeError(ErrorCode::kCancelled, "the server is shutting down");
  if (client_request_id.empty()) return std::nullopt;
  const auto it = t->by_client_request.find(client_request_id);
  if (it == t->by_client_request.end()) return std::nullopt;
  int position = 0;  // 0 also when it already left the queue
  for (std::size_t i = 0; i < t->queue.size(); ++i) {
    if (t->queue[i]->id == it->second) position = int(i);
  }
  return Submitted{it->second, position, true};
}

Expected<std::pair<std::string, int>> RunQueue::ReserveId(const std::string& name) {
  auto t = table_.Lock();
  if (int(t->queue.size()) >= capacity_) {
    return MakeError(
        ErrorCode::kUnsupported,
        "the run queue is full (" + std::to_string(capacity_) + " waiting); try again later");
  }
  for (;;) {
    char hex[17];
    std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(t->id_rng()));
    std::string id = name + "-" + std::string(hex).substr(0, 8);
    if (!t->runs.count(id)) return std::make_pair(std::move(id), int(t->queue.size()));
  }
}

void RunQueue::Push(std::shared_ptr<RunRecord> run, const std::string& client_request_id) {
  {
    auto t = table_.Lock();
    if (!client_request_id.empty()) t->by_client_request[client_request_id] = run->id;
    t->runs[run->id] = run;
    t->run_order.push_back(run);
    t->queue.push_back(std::move(run));
  }
  table_changed_.notify_all();
}

Expected<std::string> RunQueue::PushLocal(std::shared_ptr<RunRecord> run) {
  const std::string id = run->id;
  {
    auto t = table_.Lock();
    if (!t->accepting) return MakeError(ErrorCode::kCancelled, "the server is shutting down");
    if (t->runs.count(id)) {
      return MakeError(ErrorCode::kInvalidArgument, "run '" + id + "' is already known");
    }
    t->runs[id] = run;
    t->run_order.push_back(run);
    t->queue.push_back(std::move(run));
  }
  table_changed_.notify_all();
  return id;
}

CancelOutcome RunQueue::Cancel(const std::string& id) {
  CancelOutcome outcome;
  auto run = Find(id);
  if (!run) return outcome;
  const bool was_queued = table_.With([&](RunTable& t) {
    const auto it = std::find(t.queue.begin(), t.queue.end(), run);
    if (it == t.queue.end()) return false;
    t.queue.erase(it);
    return true;
  });
  if (was_queued) {
    if (auto cancelled = log_.Append(run, scenarios::RunCancelled{0}); !cancelled) {
      outcome.kind = CancelOutcome::Kind::kLogFailed;
      outcome.error = cancelled.error().message;
      return outcome;
    }
    outcome.kind = CancelOutcome::Kind::kDequeued;
    outcome.status = run->GetStatus();
    return outcome;
  }
  outcome.status = run->GetStatus();
  if (IsEnded(outcome.status.state)) {
    outcome.kind = CancelOutcome::Kind::kAlreadyEnded;
    return outcome;
  }
  run->cancel = true;  // the runner stops between simulation batches
  outcome.kind = CancelOutcome::Kind::kFlagged;
  return outcome;
}

std::shared_ptr<RunRecord> RunQueue::Find(const std::string& id) const {
  auto t = table_.Lock();
  const auto it = t->runs.find(id);
  return it == t->runs.end() ? nullptr : it->second;
}

std::vector<RunStatus> RunQueue::Statuses() const {
  std::vector<RunStatus> statuses;
  auto t = table_.Lock();
  statuses.reserve(t->run_order.size());
  for (const auto& run : t->run_order) statuses.push_back(run->GetStatus());
  return statuses;
}

QueueView RunQueue::View() const {
  auto t = table_.Lock();
  return {t->accepting, int(t->queue.size()), capacity_, t->active ? t->active->id : "",
          t->models_loaded};
}

bool RunQueue::Idle() const {
  auto t = table_.Lock();
  return t->queue.empty() && !t->active;
}

Heartbeat RunQueue::MakeHeartbeat() const {
  auto t = table_.Lock();
  Heartbeat beat{t->active ? t->active->id : "", int(t->queue.size()), {}};
  const std::int64_t recent = SteadyNs() - 60'000'000'000;
  for (auto it = t->run_order.rbegin(); it != t->run_order.rend() && beat.recent_runs.size() < 16;
       ++it) {
    if ((*it)->last_event_ns.load(std::memory_order_relaxed) < recent) continue;
    // The last seq *sent*, not the last logged: the log runs ahead of the socket by a batch,
    // and a heartbeat sent in between would announce events still on their way (a false gap).
    beat.recent_runs.push_back({(*it)->id, (*it)->published_seq.load(std::memory_order_acquire)});
  }
  return beat;
}

Expected<scenarios::RunSummary> RunQueue::last_summary() const {
  auto t = table_.Lock();
  if (!t->last_summary) return MakeError(ErrorCode::kNotFound, "no run has finished");
  return *t->last_summary;
}

int RunQueue::Close(bool finish_active) {
  int cancelled_runs = 0;
  std::deque<std::shared_ptr<RunRecord>> queued;
  {
    auto t = table_.Lock();
    t->accepting = false;
    t->worker_stop = true;
    queued.swap(t->queue);
    if (t->active && !finish_active) {
      t->active->cancel = true;
      ++cancelled_runs;
    }
  }
  table_changed_.notify_all();
  for (auto& run : queued) {
    if (auto cancelled = log_.Append(run, scenarios::RunCancelled{0}); !cancelled) {
      LogWarn("cannot record the cancel of " + run->id + ": " + cancelled.error().message);
    }
    ++cancelled_runs;
  }
  return cancelled_runs;
}

void RunQueue::Join() {
  if (worker_.joinable()) worker_.join();
}

void RunQueue::Stop() {
  {
    auto t = table_.Lock();
    t->worker_stop = true;
    for (auto& run : t->queue) run->cancel = true;
    if (t->active) t->active->cancel = true;
  }
  table_changed_.notify_all();
  Join();
}

void RunQueue::WorkerLoop() {
  for (;;) {
    std::shared_ptr<RunRecord> run;
    {
      auto t = table_.Lock();
      table_changed_.wait(t.lock(), [&] { return t->worker_stop || !t->queue.empty(); });
      if (t->queue.empty()) return;
      run = t->queue.front();
      t->queue.pop_front();
      t->active = run;
      t->models_loaded = ModelsOf(run->spec);
    }
    run->progress.Lock()->state = RunState::kRunning;
    Execute(run);
    table_.Lock()->active.reset();
    table_changed_.notify_all();
  }
}

void RunQueue::Execute(const std::shared_ptr<RunRecord>& run) {
  scenarios::RunOptions options = run->options;
  options.output_dir = run->out;
  options.run_id = run->id;
  options.write_event_log = false;  // the event log keeps events.jsonl
  options.cancelled = [run, user = run->options.cancelled] {
    return run->cancel.load() || (user && user());
  };
  options.stage_seconds = [this](const char* stage, double seconds) {
    stages_.Observe(stage, seconds);
  };
  RunSink sink(log_, run);
  auto summary = run_fn_(run->spec, options, sink);
  log_.Flush();
  if (!summary) {
    LogWarn("run " + run->id + " failed: " + summary.error().message);
    if (!IsEnded(run->progress.Lock()->state)) {
      if (auto appended = log_.Append(run, scenarios::RunFailed{summary.error().message});
          !appended) {
        auto p = run->progress.Lock();
        p->state = RunState::kFailed;
        p->error = summary.error().message;
      }
    }
  }
  log_.Close(run);
  table_.Lock()->last_summary = std::move(summary);
}

}  // namespace mewm::streaming

// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "run_record.h"

#include <filesystem>
#include <type_traits>
#include <utility>
#include <variant>

#include "mewm/core/file_util.h"

namespace mewm::streaming {

namespace fs = std::filesystem;

void RunProgress::Apply(const scenarios::Event& event) {
  std::visit(
      [&](const auto& body) {
        using T = std::decay_t<decltype(body)>;
        if constexpr (std::is_same_v<T, scenarios::RunStarted>) total = body.patients;
        if constexpr (std::is_same_v<T, scenarios::PatientFinished>) ++done;
        if constexpr (std::is_same_v<T, scenarios::PatientFailed>) ++failed;
        if constexpr (std::is_same_v<T, scenarios::RunFinished>) state = RunState::kFinished;
        if constexpr (std::is_same_v<T, scenarios::RunCancelled>) state = RunState::kCancelled;
        if constexpr (std::is_same_v<T, scenarios::RunFailed>) {
          state = RunState::kFailed;
          error = body.error;
        }
      },
      event.body);
}

RunRecord::RunRecord(RunSetup setup, RunProgress initial)
    : id(std::move(setup.id)),
      trace_id(std::move(setup.trace_id)),
      out(std::move(setup.out)),
      spec(std::move(setup.spec)),
      options(std::move(setup.options)),
      extra(setup.extra),
      progress(std::move(initial)) {}

std::string RunRecord::log_path() const { return EventLogPath(out); }

RunStatus RunRecord::GetStatus() const {
  auto p = progress.Lock();
  return {id,      spec.name, p->state, p->log.last_seq(), p->total,
          p->done, p->failed, out,      p->error,          trace_id};
}

std::string EventLogPath(const std::string& out) {
  return (fs::path(out) / "events.jsonl").string();
}

Status IndexLog(const std::string& path, LogIndex& index,
                const std::function<void(const scenarios::Event&)>& each) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return {};
  MEWM_TRY(const std::string text, ReadFile(path));
  std::uint64_t start = 0;
  for (std::size_t end = text.find('\n'); end != std::string::npos;
       start = end + 1, end = text.find('\n', start)) {
    if (index.offsets.empty() || each) {
      MEWM_TRY(const scenarios::Event event,
               scenarios::EventFromJson(text.substr(start, end - start)));
      if (index.offsets.empty()) index.first_seq = event.seq;
      if (each) each(event);
    }
    index.offsets.push_back(start);
  }
  index.size = start;
  return {};
}

}  // namespace mewm::streaming

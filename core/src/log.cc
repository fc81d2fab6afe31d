// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/core/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

namespace mewm {

Status ConfigureLogging(const std::string& level) {
  const auto parsed = spdlog::level::from_str(level);
  // from_str maps unknown names to "off"; only accept "off" when it was asked for.
  if (parsed == spdlog::level::off && level != "off") {
    return MakeError(ErrorCode::kInvalidArgument,
                     "log level '" + level +
                         "' not understood (expected trace, debug, info, "
                         "warn, error or off)");
  }
  static auto logger = [] {
    auto l = spdlog::stderr_color_mt("mewm");
    l->set_pattern("[%H:%M:%S.%e] [%^%l%$] %v");
    spdlog::set_default_logger(l);
    return l;
  }();
  logger->set_level(parsed);
  return {};
}

void LogInfo(const std::string& message) { spdlog::info("{}", message); }
void LogWarn(const std::string& message) { spdlog::warn("{}", message); }
void LogError(const std::string& message) { spdlog::error("{}", message); }
void LogDebug(const std::string& message) { spdlog::debug("{}", message); }

std::string ExceptionCause(const std::string& what) {
  std::string cause = what;
  // libtorch: "<cause>\nException raised from <function> at <file>:<line> (most recent call
  // first):\nframe #0: ...". Other libraries' multi-line messages keep their first lines.
  for (const char* marker : {"Exception raised from ", "frame #0"}) {
    if (const auto at = cause.find(marker); at != std::string::npos) cause.resize(at);
  }
  if (cause.size() != what.size()) LogDebug("full exception message: " + what);
  while (!cause.empty() && (cause.back() == '\n' || cause.back() == ' ')) cause.pop_back();
  for (char& c : cause) {
    if (c == '\n') c = ' ';
  }
  return cause.empty() ? what.substr(0, what.find('\n')) : cause;
}

std::string ExceptionCause(const std::exception& e) {
  return ExceptionCause(std::string(e.what()));
}

}  // namespace mewm

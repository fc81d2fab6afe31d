// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Logging goes through spdlog (to stderr). ConfigureLogging sets the level once, from main.
#pragma once

#include <exception>
#include <string>

#include "mewm/core/expected.h"

namespace mewm {

/// Levels: "trace", "debug", "info", "warn", "error", "off". kInvalidArgument otherwise.
Status ConfigureLogging(const std::string& level);

void LogInfo(const std::string& message);
void LogWarn(const std::string& message);
void LogError(const std::string& message);
void LogDebug(const std::string& message);

/// The cause an exception states, in one line, for an error message a person reads. libtorch
/// appends a C++ backtrace to its messages ("Exception raised from ... frame #0: ..."): the cause
/// keeps the text before it, and the whole message goes to the debug log (`mewm --verbose`).
std::string ExceptionCause(const std::exception& e);
/// The same for a message already taken from an exception.
std::string ExceptionCause(const std::string& what);

}  // namespace mewm

// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Logging goes through spdlog (to stderr). ConfigureLogging sets the level once, from main.
#pragma once

#include <string>

#include "mewm/core/expected.h"

namespace mewm {

/// Levels: "trace", "debug", "info", "warn", "error", "off". kInvalidArgument otherwise.
Status ConfigureLogging(const std::string& level);

void LogInfo(const std::string& message);
void LogWarn(const std::string& message);
void LogError(const std::string& message);
void LogDebug(const std::string& message);

}  // namespace mewm

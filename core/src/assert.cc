// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/core/assert.h"

namespace mewm {

void FailInvariant(const char* condition, const char* file, int line, const std::string& message) {
  throw InvariantError(std::string(file) + ":" + std::to_string(line) + ": invariant `" +
                       condition + "` broken: " + message);
}

}  // namespace mewm

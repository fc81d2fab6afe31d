// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Small text helpers shared by error messages.
#pragma once

#include <string>
#include <vector>

namespace mewm {

/// "a, b, c" for Join({"a","b","c"}, ", "); "" for no parts.
std::string Join(const std::vector<std::string>& parts, const std::string& separator);

}  // namespace mewm

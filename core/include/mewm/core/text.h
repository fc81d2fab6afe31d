// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Small text helpers: joining for error messages, Base64 for data URLs.
#pragma once

#include <string>
#include <vector>

namespace mewm {

/// "a, b, c" for Join({"a","b","c"}, ", "); "" for no parts.
std::string Join(const std::vector<std::string>& parts, const std::string& separator);

/// Standard Base64 (RFC 4648 section 4, with '=' padding) of arbitrary bytes.
std::string Base64Encode(const std::string& bytes);

}  // namespace mewm

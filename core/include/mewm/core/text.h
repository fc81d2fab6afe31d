// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Small text helpers: joining for error messages, Base64 for data URLs, control characters.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace mewm {

/// "a, b, c" for Join({"a","b","c"}, ", "); "" for no parts.
std::string Join(const std::vector<std::string>& parts, const std::string& separator);

/// Standard Base64 (RFC 4648 section 4, with '=' padding) of arbitrary bytes.
std::string Base64Encode(const std::string& bytes);

/// Whether `text` holds a control character: U+0000 to U+001F (tab and newline included), U+007F,
/// or U+0080 to U+009F written in UTF-8. Other bytes of UTF-8 sequences are not control characters.
bool HasControlCharacter(std::string_view text);

/// `text` with every control character but newline and tab, and every byte that is not part of
/// well-formed UTF-8, written as \xHH ("\x1b[2J", a lone "\x9b"), so that text from another
/// party (a server's reply, a submitted scenario) printed on a terminal or in a log cannot clear
/// the screen, retitle the window or overwrite a line.
std::string EscapeControl(std::string_view text);

}  // namespace mewm

// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/core/text.h"

namespace mewm {

std::string Join(const std::vector<std::string>& parts, const std::string& separator) {
  std::string out;
  for (std::size_t i = 0; i < parts.size(); ++i) {
    if (i > 0) out += separator;
    out += parts[i];
  }
  return out;
}

std::string Base64Encode(const std::string& bytes) {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  std::size_t i = 0;
  for (; i + 3 <= bytes.size(); i += 3) {
    const unsigned v = unsigned(p[i]) << 16 | unsigned(p[i + 1]) << 8 | unsigned(p[i + 2]);
    for (int shift = 18; shift >= 0; shift -= 6) out.push_back(kAlphabet[(v >> shift) & 63]);
  }
  const std::size_t rest = bytes.size() - i;
  if (rest > 0) {
    const unsigned v = unsigned(p[i]) << 16 | (rest == 2 ? unsigned(p[i + 1]) << 8 : 0u);
    out.push_back(kAlphabet[(v >> 18) & 63]);
    out.push_back(kAlphabet[(v >> 12) & 63]);
    out.push_back(rest == 2 ? kAlphabet[(v >> 6) & 63] : '=');
    out.push_back('=');
  }
  return out;
}

namespace {

/// The length of the control character at text[i], or 0: a C0 control or DEL (one byte), or a C1
/// control written in UTF-8 (U+0080 to U+009F: 0xC2 then 0x80 to 0x9F), which some terminals
/// obey as they do ESC [.
std::size_t ControlAt(std::string_view text, std::size_t i) {
  const auto byte = static_cast<unsigned char>(text[i]);
  if (byte < 0x20 || byte == 0x7f) return 1;
  if (byte == 0xc2 && i + 1 < text.size()) {
    const auto next = static_cast<unsigned char>(text[i + 1]);
    if (next >= 0x80 && next <= 0x9f) return 2;
  }
  return 0;
}

/// The length of the well-formed UTF-8 character that starts at text[i] (2 to 4 bytes), or 0
/// for a byte that starts none: a continuation byte, an overlong or surrogate form, a sequence
/// cut short.
std::size_t Utf8Length(std::string_view text, std::size_t i) {
  const auto at = [&](std::size_t k) { return static_cast<unsigned char>(text[k]); };
  const unsigned char c = at(i);
  const std::size_t length = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 ? 2 : 0;
  if (length == 0 || c > 0xF4 || i + length > text.size()) return 0;
  for (std::size_t k = 1; k < length; ++k) {
    if ((at(i + k) & 0xC0) != 0x80) return 0;
  }
  if (length == 3 && ((c == 0xE0 && at(i + 1) < 0xA0) || (c == 0xED && at(i + 1) >= 0xA0))) {
    return 0;
  }
  if (length == 4 && ((c == 0xF0 && at(i + 1) < 0x90) || (c == 0xF4 && at(i + 1) >= 0x90))) {
    return 0;
  }
  return length;
}

}  // namespace

bool HasControlCharacter(std::string_view text) {
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (ControlAt(text, i) != 0) return true;
  }
  return false;
}

std::string EscapeControl(std::string_view text) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    std::size_t n = ControlAt(text, i);
    if (n == 0 && static_cast<unsigned char>(text[i]) >= 0x80) {
      // Not ASCII: a well-formed UTF-8 character is copied whole; a byte that starts none (a
      // lone 0x9b is CSI to a terminal in an 8-bit mode) is escaped.
      const std::size_t length = Utf8Length(text, i);
      if (length > 0) {
        out.append(text.substr(i, length));
        i += length - 1;
        continue;
      }
      n = 1;
    }
    if (n == 0 || text[i] == '\n' || text[i] == '\t') {
      out.push_back(text[i]);
      continue;
    }
    for (std::size_t k = i; k < i + n; ++k) {
      const auto byte = static_cast<unsigned char>(text[k]);
      out += "\\x";
      out.push_back(kHex[byte >> 4]);
      out.push_back(kHex[byte & 15]);
    }
    i += n - 1;
  }
  return out;
}

}  // namespace mewm

// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Reading the JSON of a Turing study (manifest, key, answer lines) as hostile input: nesting
// bounded before the value is built, and the "format" tag compared only when it is a string.
// Private to mewm::eval.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace mewm::scenarios {

/// The most nesting a study file needs is 4 (manifest -> cases -> volumes -> volume).
inline constexpr int kMaxStudyJsonDepth = 16;

/// `text` parsed as JSON, or a discarded value when it is not JSON or nests deeper than
/// `max_depth`: the parse stops at that depth (16 MiB of '[' had taken 1.4 GB to refuse).
inline nlohmann::json ParseStudyJson(const std::string& text, int max_depth = kMaxStudyJsonDepth) {
  struct TooDeep {};
  const nlohmann::json::parser_callback_t depth =
      [max_depth](int level, nlohmann::json::parse_event_t, nlohmann::json&) {
        if (level > max_depth) throw TooDeep{};
        return true;
      };
  try {
    return nlohmann::json::parse(text, depth, /*allow_exceptions=*/false);
  } catch (const TooDeep&) {
    return nlohmann::json(nlohmann::json::value_t::discarded);
  }
}

/// The string member `name` of object `j`, or "" when there is none or it is no string (where
/// json::value() would throw).
inline std::string StringMember(const nlohmann::json& j, const char* name) {
  if (!j.is_object()) return "";
  const auto it = j.find(name);
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

}  // namespace mewm::scenarios

// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Strict TOML reading. A ConfigTable wraps one TOML table and remembers which keys were read, so
// that unknown keys can be reported; every error names file:line and the expected form, e.g.
// "scenario.toml:14: planner.beams must be >= 1 (got 0)".
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "mewm/core/expected.h"

namespace mewm {

class ConfigTable;

/// The deepest nesting a configuration may have: dotted key parts, table header parts, inline
/// tables and arrays, counted together along one path from the root. toml++ recurses once per
/// level, and a 200 KB key of 100,000 dotted parts overflows an 8 MiB stack, so
/// ConfigDocument::Parse refuses deeper text before toml++ sees it. mewm's files need 4 levels.
inline constexpr int kMaxConfigDepth = 64;

/// A parsed TOML document.
class ConfigDocument {
 public:
  /// Parses text; `origin` is the file name used in errors. kParse with file:line:column, or
  /// kParse with file:line for text nested deeper than kMaxConfigDepth (checked by a linear scan
  /// first, so untrusted text of any shape is safe to pass).
  static Expected<ConfigDocument> Parse(const std::string& text, const std::string& origin);
  /// Reads and parses a file. kNotFound / kIo / kParse.
  static Expected<ConfigDocument> Load(const std::string& path);

  ConfigTable Root() const;
  const std::string& origin() const;

  ConfigDocument(ConfigDocument&&) noexcept;
  ConfigDocument& operator=(ConfigDocument&&) noexcept;
  ~ConfigDocument();

 private:
  struct Impl;
  explicit ConfigDocument(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  friend class ConfigTable;
};

/// A view of one table inside a ConfigDocument (which must outlive it).
class ConfigTable {
 public:
  /// Dotted path of this table, e.g. "planner" ("" for the root).
  const std::string& path() const { return path_; }
  /// "file:line" of this table (or of the document for the root).
  std::string Where() const;
  /// "file:line" of a key in this table, or Where() if absent.
  std::string WhereKey(const std::string& key) const;

  /// Whether the key is present. Does not count as reading it (see RejectUnknownKeys).
  bool Has(const std::string& key) const;
  /// The keys of this table in file order.
  std::vector<std::string> Keys() const;

  /// Typed getters. A missing key gives the fallback, or kNotFound when there is none; a wrong
  /// type or a value outside [min, max] is kInvalidArgument. Every getter marks its key as read,
  /// present or not. GetDouble accepts integers; GetInt rejects floats.
  Expected<std::string> GetString(const std::string& key,
                                  std::optional<std::string> fallback = {}) const;
  Expected<std::int64_t> GetInt(const std::string& key, std::optional<std::int64_t> fallback = {},
                                std::optional<std::int64_t> min = {},
                                std::optional<std::int64_t> max = {}) const;
  Expected<double> GetDouble(const std::string& key, std::optional<double> fallback = {},
                             std::optional<double> min = {}, std::optional<double> max = {}) const;
  Expected<bool> GetBool(const std::string& key, std::optional<bool> fallback = {}) const;
  Expected<std::vector<std::string>> GetStringList(
      const std::string& key, std::optional<std::vector<std::string>> fallback = {}) const;
  /// A string that must be one of `choices`.
  Expected<std::string> GetEnum(const std::string& key, const std::vector<std::string>& choices,
                                std::optional<std::string> fallback = {}) const;

  /// A sub-table. Missing: kNotFound unless `optional`, in which case an empty table is returned.
  /// Its path is this table's path plus the key ("planner.search").
  Expected<ConfigTable> GetTable(const std::string& key, bool optional = false) const;
  /// An empty stand-in for the sub-table `key`, with that table's path, for reading defaults after
  /// GetTable failed, so that later messages name the real table ("run.name"), not a placeholder.
  ConfigTable MissingTable(const std::string& key) const;
  /// An array of tables ([[key]]); missing gives an empty list. Element paths are "key[i]",
  /// counted from 0, so errors read "actions.toml:12: drug[3].name must be a string (...)".
  Expected<std::vector<ConfigTable>> GetTableArray(const std::string& key) const;

  /// kInvalidArgument naming every key of this table that no getter asked for, with its line and
  /// the allowed keys, one per line: "a.toml:7: unknown key planner.beamz (allowed: beams,
  /// samples, search)"; past the first 20, how many more. Call after reading all expected keys.
  /// Reads through any copy of this view, or through another view of the same table, count (not
  /// thread-safe).
  Status RejectUnknownKeys() const;

 private:
  friend class ConfigDocument;
  ConfigTable(const ConfigDocument::Impl* doc, const void* table, std::string path);
  std::string KeyPath(const std::string& key) const;
  const void* Node(const std::string& key) const;

  const ConfigDocument::Impl* doc_ = nullptr;
  const void* table_ = nullptr;  ///< const toml::table*, kept opaque to spare includers toml++
  std::string path_;
  std::shared_ptr<std::set<std::string>> used_ = std::make_shared<std::set<std::string>>();
};

}  // namespace mewm

// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// A small RFC 4180 CSV reader: a header row, comma-separated fields, double quotes around fields
// that hold commas, quotes ("") or newlines. Used for clinical tables and patient manifests.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "mewm/core/expected.h"

namespace mewm {

class CsvTable {
 public:
  /// Parses text; `origin` names the source in errors. kParse with origin:line for an unclosed
  /// quote, a row whose field count differs from the header's, an empty or duplicate column name.
  static Expected<CsvTable> Parse(const std::string& text, const std::string& origin);
  /// Reads and parses a file (kNotFound / kIo / kParse).
  static Expected<CsvTable> Load(const std::string& path);

  const std::vector<std::string>& columns() const { return columns_; }
  std::size_t rows() const { return rows_.size(); }
  bool HasColumn(const std::string& column) const { return index_.count(column) > 0; }
  /// "origin:line" of a data row (0-based row index), for error messages.
  std::string Where(std::size_t row) const;

  /// The field, or kNotFound naming the missing column and the columns present.
  Expected<std::string> Get(std::size_t row, const std::string& column) const;
  /// The field, or nullopt when the column is absent or the field is empty.
  std::optional<std::string> Optional(std::size_t row, const std::string& column) const;
  /// A number; kInvalidArgument with origin:line and the column when it does not parse fully.
  Expected<double> GetDouble(std::size_t row, const std::string& column) const;
  Expected<std::int64_t> GetInt(std::size_t row, const std::string& column) const;

 private:
  std::string origin_;
  std::vector<std::string> columns_;
  std::map<std::string, std::size_t> index_;
  std::vector<std::vector<std::string>> rows_;
  std::vector<int> lines_;  ///< 1-based line of each row
};

/// Quotes a field when it needs it (comma, quote, newline), doubling inner quotes.
std::string CsvQuote(const std::string& field);

}  // namespace mewm

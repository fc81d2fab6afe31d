// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/core/csv.h"

#include <cerrno>
#include <cstdlib>

#include "mewm/core/file_util.h"
#include "mewm/core/text.h"

namespace mewm {

Expected<CsvTable> CsvTable::Parse(const std::string& text, const std::string& origin) {
  CsvTable table;
  table.origin_ = origin;
  std::vector<std::vector<std::string>> records;
  std::vector<int> lines;
  std::vector<std::string> record;
  std::string field;
  bool quoted = false, field_started = false;
  int line = 1, record_line = 1;
  const auto end_record = [&] {
    record.push_back(field);
    field.clear();
    // A blank line (one empty, unquoted field) is skipped.
    if (!(record.size() == 1 && record[0].empty() && !field_started)) {
      records.push_back(record);
      lines.push_back(record_line);
    }
    record.clear();
    field_started = false;
  };
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (quoted) {
      if (c == '"' && i + 1 < text.size() && text[i + 1] == '"') {
        field += '"';
        ++i;
      } else if (c == '"') {
        quoted = false;
      } else {
        if (c == '\n') ++line;
        field += c;
      }
    } else if (c == '"') {
      quoted = true;
      field_started = true;
    } else if (c == ',') {
      record.push_back(field);
      field.clear();
      field_started = true;
    } else if (c == '\n' || c == '\r') {
      if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') ++i;
      end_record();
      ++line;
      record_line = line;
    } else {
      field += c;
      field_started = true;
    }
  }
  if (quoted) {
    return MakeError(ErrorCode::kParse,
                     origin + ":" + std::to_string(record_line) + ": unclosed quote");
  }
  if (field_started || !field.empty() || !record.empty()) end_record();
  if (records.empty()) return MakeError(ErrorCode::kParse, origin + ": no header row");
  table.columns_ = records.front();
  for (std::size_t c = 0; c < table.columns_.size(); ++c) {
    const std::string& name = table.columns_[c];
    if (name.empty()) {
      return MakeError(ErrorCode::kParse,
                       origin + ":1: column " + std::to_string(c + 1) + " has an empty name");
    }
    if (!table.index_.emplace(name, c).second) {
      return MakeError(ErrorCode::kParse, origin + ":1: duplicate column '" + name + "'");
    }
  }
  for (std::size_t r = 1; r < records.size(); ++r) {
    if (records[r].size() != table.columns_.size()) {
      return MakeError(ErrorCode::kParse, origin + ":" + std::to_string(lines[r]) + ": " +
                                              std::to_string(records[r].size()) +
                                              " fields, the header has " +
                                              std::to_string(table.columns_.size()));
    }
    table.rows_.push_back(std::move(records[r]));
    table.lines_.push_back(lines[r]);
  }
  return table;
}

Expected<CsvTable> CsvTable::Load(const std::string& path) {
  MEWM_TRY(const std::string text, ReadFile(path));
  return Parse(text, path);
}

std::string CsvTable::Where(std::size_t row) const {
  return origin_ + ":" + (row < lines_.size() ? std::to_string(lines_[row]) : std::string("?"));
}

Expected<std::string> CsvTable::Get(std::size_t row, const std::string& column) const {
  auto it = index_.find(column);
  if (it == index_.end()) {
    return MakeError(ErrorCode::kNotFound, origin_ + ": no column '" + column +
                                               "' (columns: " + Join(columns_, ", ") + ")");
  }
  if (row >= rows_.size()) {
    return MakeError(ErrorCode::kInvalidArgument, origin_ + ": no row " + std::to_string(row));
  }
  return rows_[row][it->second];
}

std::optional<std::string> CsvTable::Optional(std::size_t row, const std::string& column) const {
  auto it = index_.find(column);
  if (it == index_.end() || row >= rows_.size() || rows_[row][it->second].empty()) {
    return std::nullopt;
  }
  return rows_[row][it->second];
}

Expected<double> CsvTable::GetDouble(std::size_t row, const std::string& column) const {
  MEWM_TRY(const std::string text, Get(row, column));
  char* end = nullptr;
  errno = 0;
  const double value = std::strtod(text.c_str(), &end);
  if (text.empty() || end != text.c_str() + text.size() || errno == ERANGE) {
    return MakeError(ErrorCode::kInvalidArgument,
                     Where(row) + ": " + column + " must be a number, got '" + text + "'");
  }
  return value;
}

Expected<std::int64_t> CsvTable::GetInt(std::size_t row, const std::string& column) const {
  MEWM_TRY(const std::string text, Get(row, column));
  char* end = nullptr;
  errno = 0;
  const long long value = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || end != text.c_str() + text.size() || errno == ERANGE) {
    return MakeError(ErrorCode::kInvalidArgument,
                     Where(row) + ": " + column + " must be an integer, got '" + text + "'");
  }
  return std::int64_t(value);
}

std::string CsvQuote(const std::string& field) {
  if (field.find_first_of(",\"\n\r") == std::string::npos) return field;
  std::string out = "\"";
  for (char c : field) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

}  // namespace mewm

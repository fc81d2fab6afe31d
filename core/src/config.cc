// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The toml++ adapter behind ConfigDocument / ConfigTable. toml++ is built with exceptions, so
// toml::parse throws toml::parse_error; it is caught here, at the module edge, and becomes kParse.
#include "mewm/core/config.h"

#include <toml++/toml.h>

#include <algorithm>
#include <charconv>
#include <map>
#include <sstream>
#include <utility>
#include <vector>

#include "mewm/core/file_util.h"
#include "mewm/core/text.h"

namespace mewm {

struct ConfigDocument::Impl {
  std::string origin;
  toml::table root;
  /// Keys read so far, per table path. Every ConfigTable view of the same table shares one set, so
  /// RejectUnknownKeys sees reads made through any copy or any later GetTable() of that table.
  /// Mutable because reading is logically const; a document is read from one thread.
  mutable std::map<std::string, std::shared_ptr<std::set<std::string>>> used;

  std::shared_ptr<std::set<std::string>> UsedSet(const std::string& path) const {
    auto& slot = used[path];
    if (!slot) slot = std::make_shared<std::set<std::string>>();
    return slot;
  }
};

namespace {

const toml::table& AsTable(const void* table) { return *static_cast<const toml::table*>(table); }

/// The view given for a missing optional table: no keys, no source.
const toml::table& EmptyTable() {
  static const toml::table empty;
  return empty;
}

std::string FormatDouble(double v) {
  char buf[64];
  const auto res = std::to_chars(buf, buf + sizeof(buf), v);
  std::string s(buf, res.ptr);
  // Show floats as floats ("3.0", not "3"), like TOML writes them.
  if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
  return s;
}

std::string Quote(const std::string& s) {
  constexpr std::size_t kMaxShown = 60;
  if (s.size() <= kMaxShown) return "\"" + s + "\"";
  return "\"" + s.substr(0, kMaxShown) + "...\"";
}

template <typename T>
std::string Streamed(const T& v) {
  std::ostringstream out;
  out << v;
  return out.str();
}

/// What a node holds, for "(got ...)": `string "abc"`, `integer 5`, `array of 3 elements`.
std::string Describe(const toml::node& node) {
  switch (node.type()) {
    case toml::node_type::string:
      return "string " + Quote(node.as_string()->get());
    case toml::node_type::integer:
      return "integer " + std::to_string(node.as_integer()->get());
    case toml::node_type::floating_point:
      return "float " + FormatDouble(node.as_floating_point()->get());
    case toml::node_type::boolean:
      return std::string("boolean ") + (node.as_boolean()->get() ? "true" : "false");
    case toml::node_type::date:
      return "date " + Streamed(node.as_date()->get());
    case toml::node_type::time:
      return "time " + Streamed(node.as_time()->get());
    case toml::node_type::date_time:
      return "date-time " + Streamed(node.as_date_time()->get());
    case toml::node_type::array: {
      const std::size_t n = node.as_array()->size();
      if (n == 0) return "empty array";
      return "array of " + std::to_string(n) + (n == 1 ? " element" : " elements");
    }
    case toml::node_type::table:
      return "table";
    case toml::node_type::none:
      break;
  }
  return "nothing";
}

std::string WhereLine(const std::string& origin, const toml::source_region& src) {
  if (src.begin.line == 0) return origin;
  return origin + ":" + std::to_string(src.begin.line);
}

/// Where a text first nests deeper than kMaxConfigDepth, and in what.
struct DepthExcess {
  int line = 0;
  const char* what = "";
};

/// One pass of FindExcessiveDepth over TOML text: the scanner's state and what each significant
/// character does to it.
class DepthScanner {
 public:
  explicit DepthScanner(const std::string& text) : text_(text), n_(text.size()) {}

  /// Scans the whole text; where it first nests too deep, or nothing.
  std::optional<DepthExcess> Scan() {
    for (std::size_t i = 0; i < n_; ++i) {
      const char c = text_[i];
      switch (c) {
        case '"':
        case '\'':
          SkipString(i);
          break;
        case '#':
          while (i + 1 < n_ && text_[i + 1] != '\n') ++i;
          break;
        case '\n':
          NewLine();
          break;
        case '.':
          if (auto excess = Dot()) return excess;
          break;
        case '=':
          key_parts_ = dots_ + 1;
          dots_ = 0;
          in_key_ = false;
          break;
        case ',':
          in_key_ = !frames_.empty() && frames_.back().table;
          dots_ = 0;
          key_parts_ = 0;
          break;
        case '[':
        case '{':
          if (auto excess = Open(i)) return excess;
          break;
        case ']':
        case '}':
          Close(i);
          break;
        default:
          break;
      }
    }
    return std::nullopt;
  }

 private:
  struct Frame {
    bool table;     ///< '{' (keys follow) rather than '[' (values follow)
    int key_parts;  ///< parts of the key whose value it is (0 inside an array)
  };

  /// Skips a string starting at i (at its quote); leaves i on its last character.
  void SkipString(std::size_t& i) {
    const char q = text_[i];
    const bool multi = i + 2 < n_ && text_[i + 1] == q && text_[i + 2] == q;
    i += multi ? 3 : 1;
    for (; i < n_; ++i) {
      const char c = text_[i];
      if (c == '\\' && q == '"') {
        if (i + 1 < n_ && text_[i + 1] == '\n') ++line_;
        ++i;
      } else if (c == '\n') {
        ++line_;
        if (!multi) return;  // unterminated: toml++ reports it
      } else if (c == q && (!multi || (i + 2 < n_ && text_[i + 1] == q && text_[i + 2] == q))) {
        if (multi) i += 2;
        return;
      }
    }
  }

  /// A line break: a new statement starts unless an array or inline table is open.
  void NewLine() {
    ++line_;
    if (frames_.empty()) {  // a new statement (arrays may span lines)
      in_key_ = true;
      dots_ = 0;
      key_parts_ = 0;
    }
  }

  /// A dot: one more key part when reading a key (else a float or a date-time).
  std::optional<DepthExcess> Dot() {
    if (!in_key_) return std::nullopt;  // a float or a date-time
    ++dots_;
    if (depth_ + dots_ + 1 > kMaxConfigDepth) {
      return DepthExcess{line_, in_header_ ? "a table header goes" : "a dotted key goes"};
    }
    return std::nullopt;
  }

  /// '[' or '{' at i: a [table] or [[array of tables]] header starts, or an array or inline
  /// table opens one level deeper.
  std::optional<DepthExcess> Open(std::size_t& i) {
    const char c = text_[i];
    if (c == '[' && frames_.empty() && in_key_ && !in_header_) {  // a header
      in_header_ = true;
      if (i + 1 < n_ && text_[i + 1] == '[') ++i;
      depth_ = 0;
      dots_ = 0;
      return std::nullopt;
    }
    frames_.push_back({c == '{', key_parts_});
    depth_ += key_parts_ + 1;
    if (depth_ > kMaxConfigDepth) return DepthExcess{line_, "arrays and inline tables go"};
    in_key_ = c == '{';
    dots_ = 0;
    key_parts_ = 0;
    return std::nullopt;
  }

  /// ']' or '}' at i: a header ends, or an array or inline table closes.
  void Close(std::size_t& i) {
    if (text_[i] == ']' && in_header_) {
      if (i + 1 < n_ && text_[i + 1] == ']') ++i;
      header_parts_ = dots_ + 1;
      depth_ = header_parts_;
      in_header_ = false;
      in_key_ = false;  // until the next line
      dots_ = 0;
      return;
    }
    if (!frames_.empty()) {
      depth_ -= frames_.back().key_parts + 1;
      frames_.pop_back();
    }
    in_key_ = false;
    dots_ = 0;
    key_parts_ = 0;
  }

  const std::string& text_;
  const std::size_t n_;
  std::vector<Frame> frames_;
  int line_ = 1;
  int header_parts_ = 0;  ///< parts of the current [table] or [[array]] header
  int depth_ = 0;         ///< header_parts_ + sum over frames_ of (key_parts + 1)
  int dots_ = 0;          ///< dots in the key being read
  int key_parts_ = 0;     ///< parts of the key before the last '=' at this level
  bool in_key_ = true;    ///< reading a key (statement start, after '{' or a ',' in a table)
  bool in_header_ = false;
};

/// Scans TOML text for its deepest nesting without parsing it: one pass, no recursion, no
/// allocation beyond one int per open bracket. The depth of a point is what toml++ would recurse
/// through to reach it: the parts of the current [table] header, plus for each open array or
/// inline table one level and the parts of the key it is the value of, plus the parts of the
/// key being read. Strings (all four kinds) and comments are skipped as TOML reads them, so a
/// dot, bracket or '#' inside them counts for nothing; everything else that toml++ would refuse
/// is left for it to report.
std::optional<DepthExcess> FindExcessiveDepth(const std::string& text) {
  return DepthScanner(text).Scan();
}

}  // namespace

/// The first key or string of a parsed document that holds a control character (TOML's escapes
/// can write any, "\u0000" and "\u001b" included; strings may hold newlines and tabs): where it
/// is and what. No mewm key or value
/// needs one, a NUL cuts a path short where the operating system reads it, and an ESC in an error
/// message reaches the terminal of whoever reads it.
std::optional<std::string> FindControlCharacter(const toml::node& node, const std::string& origin,
                                                const std::string& path) {
  if (const auto* table = node.as_table()) {
    for (const auto& [key, value] : *table) {
      const std::string name =
          path.empty() ? std::string(key.str()) : path + "." + std::string(key.str());
      if (HasControlCharacter(key.str())) {
        return WhereLine(origin, key.source()) + ": the key \"" + EscapeControl(name) +
               "\" holds a control character";
      }
      if (auto found = FindControlCharacter(value, origin, name)) return found;
    }
  } else if (const auto* array = node.as_array()) {
    for (std::size_t i = 0; i < array->size(); ++i) {
      if (auto found =
              FindControlCharacter((*array)[i], origin, path + "[" + std::to_string(i) + "]")) {
        return found;
      }
    }
  } else if (const auto* text = node.as_string()) {
    // A multi-line string holds newlines and may hold tabs: EscapeControl keeps those two and
    // writes every other control character out.
    const std::string shown = EscapeControl(text->get());
    if (shown != text->get()) {
      return WhereLine(origin, node.source()) + ": " + EscapeControl(path) + " = \"" + shown +
             "\" holds a control character";
    }
  }
  return std::nullopt;
}

// ---------------------------------------------------------------------------------------------
// ConfigDocument

ConfigDocument::ConfigDocument(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ConfigDocument::ConfigDocument(ConfigDocument&&) noexcept = default;
ConfigDocument& ConfigDocument::operator=(ConfigDocument&&) noexcept = default;
ConfigDocument::~ConfigDocument() = default;

Expected<ConfigDocument> ConfigDocument::Parse(const std::string& text, const std::string& origin) {
  if (const auto deep = FindExcessiveDepth(text)) {
    return MakeError(ErrorCode::kParse,
                     origin + ":" + std::to_string(deep->line) + ": nested too deeply: " +
                         deep->what + " deeper than " + std::to_string(kMaxConfigDepth) +
                         " levels (dotted key parts, table header parts, inline tables and "
                         "arrays count together)");
  }
  auto impl = std::make_unique<Impl>();
  impl->origin = origin;
  try {
    impl->root = toml::parse(text, origin);
  } catch (const toml::parse_error& e) {
    const auto& pos = e.source().begin;
    return MakeError(ErrorCode::kParse, origin + ":" + std::to_string(pos.line) + ":" +
                                            std::to_string(pos.column) + ": " +
                                            EscapeControl(e.description()));
  }
  if (auto control = FindControlCharacter(impl->root, origin, "")) {
    return MakeError(ErrorCode::kParse, *control);
  }
  return ConfigDocument(std::move(impl));
}

Expected<ConfigDocument> ConfigDocument::Load(const std::string& path) {
  MEWM_TRY(std::string text, ReadFile(path));
  return Parse(text, path);
}

ConfigTable ConfigDocument::Root() const { return ConfigTable(impl_.get(), &impl_->root, ""); }

const std::string& ConfigDocument::origin() const { return impl_->origin; }

// ---------------------------------------------------------------------------------------------
// ConfigTable

ConfigTable::ConfigTable(const ConfigDocument::Impl* doc, const void* table, std::string path)
    : doc_(doc), table_(table), path_(std::move(path)), used_(doc->UsedSet(path_)) {}

std::string ConfigTable::KeyPath(const std::string& key) const {
  return path_.empty() ? key : path_ + "." + key;
}

const void* ConfigTable::Node(const std::string& key) const { return AsTable(table_).get(key); }

std::string ConfigTable::Where() const {
  if (path_.empty()) return doc_->origin;
  return WhereLine(doc_->origin, AsTable(table_).source());
}

std::string ConfigTable::WhereKey(const std::string& key) const {
  const auto& table = AsTable(table_);
  const auto it = table.find(key);
  if (it == table.end()) return Where();
  if (it->first.source().begin.line != 0) return WhereLine(doc_->origin, it->first.source());
  if (it->second.source().begin.line != 0) return WhereLine(doc_->origin, it->second.source());
  return Where();
}

bool ConfigTable::Has(const std::string& key) const { return Node(key) != nullptr; }

std::vector<std::string> ConfigTable::Keys() const {
  std::vector<std::pair<std::uint32_t, std::string>> keyed;
  for (const auto& [key, node] : AsTable(table_)) {
    keyed.emplace_back(key.source().begin.line, std::string(key.str()));
  }
  std::stable_sort(keyed.begin(), keyed.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<std::string> keys;
  keys.reserve(keyed.size());
  for (auto& k : keyed) keys.push_back(std::move(k.second));
  return keys;
}

namespace {

/// The shared shape of every getter's failure messages.
struct KeyErrors {
  std::string where;
  std::string path;

  Unexpected Missing(const std::string& expected) const {
    return MakeError(ErrorCode::kNotFound,
                     where + ": missing required key " + path + " (" + expected + ")");
  }
  Unexpected WrongType(const std::string& expected, const toml::node& got) const {
    return MakeError(ErrorCode::kInvalidArgument,
                     where + ": " + path + " must be " + expected + " (got " + Describe(got) + ")");
  }
  template <typename T, typename Fmt>
  std::optional<Unexpected> Range(T v, std::optional<T> min, std::optional<T> max, Fmt fmt) const {
    // Written as !(v >= min) so that NaN fails every bound.
    const bool low = min && !(v >= *min);
    const bool high = max && !(v <= *max);
    if (!low && !high) return std::nullopt;
    std::string bound;
    if (min && max) {
      bound = "between " + fmt(*min) + " and " + fmt(*max);
    } else if (min) {
      bound = ">= " + fmt(*min);
    } else {
      bound = "<= " + fmt(*max);
    }
    return MakeError(ErrorCode::kInvalidArgument,
                     where + ": " + path + " must be " + bound + " (got " + fmt(v) + ")");
  }
};

}  // namespace

Expected<std::string> ConfigTable::GetString(const std::string& key,
                                             std::optional<std::string> fallback) const {
  used_->insert(key);
  const KeyErrors err{WhereKey(key), KeyPath(key)};
  const auto* node = static_cast<const toml::node*>(Node(key));
  if (node == nullptr) {
    if (fallback) return *std::move(fallback);
    return err.Missing("a string");
  }
  if (!node->is_string()) return err.WrongType("a string", *node);
  return node->as_string()->get();
}

Expected<std::int64_t> ConfigTable::GetInt(const std::string& key,
                                           std::optional<std::int64_t> fallback,
                                           std::optional<std::int64_t> min,
                                           std::optional<std::int64_t> max) const {
  used_->insert(key);
  const KeyErrors err{WhereKey(key), KeyPath(key)};
  const auto* node = static_cast<const toml::node*>(Node(key));
  if (node == nullptr) {
    if (fallback) return *fallback;
    return err.Missing("an integer");
  }
  if (!node->is_integer()) return err.WrongType("an integer", *node);
  const std::int64_t v = node->as_integer()->get();
  if (auto bad =
          err.Range<std::int64_t>(v, min, max, [](std::int64_t x) { return std::to_string(x); })) {
    return *std::move(bad);
  }
  return v;
}

Expected<double> ConfigTable::GetDouble(const std::string& key, std::optional<double> fallback,
                                        std::optional<double> min,
                                        std::optional<double> max) const {
  used_->insert(key);
  const KeyErrors err{WhereKey(key), KeyPath(key)};
  const auto* node = static_cast<const toml::node*>(Node(key));
  if (node == nullptr) {
    if (fallback) return *fallback;
    return err.Missing("a number");
  }
  double v = 0.0;
  if (node->is_floating_point()) {
    v = node->as_floating_point()->get();
  } else if (node->is_integer()) {
    v = static_cast<double>(node->as_integer()->get());
  } else {
    return err.WrongType("a number", *node);
  }
  // Bounds print in the shortest form ("0.5", "1"); TOML's ".0" suffix would only add noise.
  const auto fmt = [](double x) {
    char buf[64];
    const auto res = std::to_chars(buf, buf + sizeof(buf), x);
    return std::string(buf, res.ptr);
  };
  if (auto bad = err.Range<double>(v, min, max, fmt)) return *std::move(bad);
  return v;
}

Expected<bool> ConfigTable::GetBool(const std::string& key, std::optional<bool> fallback) const {
  used_->insert(key);
  const KeyErrors err{WhereKey(key), KeyPath(key)};
  const auto* node = static_cast<const toml::node*>(Node(key));
  if (node == nullptr) {
    if (fallback) return *fallback;
    return err.Missing("a boolean, true or false");
  }
  if (!node->is_boolean()) return err.WrongType("a boolean, true or false", *node);
  return node->as_boolean()->get();
}

Expected<std::vector<std::string>> ConfigTable::GetStringList(
    const std::string& key, std::optional<std::vector<std::string>> fallback) const {
  used_->insert(key);
  const KeyErrors err{WhereKey(key), KeyPath(key)};
  const auto* node = static_cast<const toml::node*>(Node(key));
  if (node == nullptr) {
    if (fallback) return *std::move(fallback);
    return err.Missing("an array of strings");
  }
  if (!node->is_array()) return err.WrongType("an array of strings", *node);
  std::vector<std::string> out;
  const auto& array = *node->as_array();
  out.reserve(array.size());
  for (std::size_t i = 0; i < array.size(); ++i) {
    const toml::node& element = array[i];
    if (!element.is_string()) {
      const KeyErrors element_err{WhereLine(doc_->origin, element.source()),
                                  err.path + "[" + std::to_string(i) + "]"};
      return element_err.WrongType("a string", element);
    }
    out.push_back(element.as_string()->get());
  }
  return out;
}

Expected<std::string> ConfigTable::GetEnum(const std::string& key,
                                           const std::vector<std::string>& choices,
                                           std::optional<std::string> fallback) const {
  const std::string expected = "one of: " + Join(choices, ", ");
  const auto* node = static_cast<const toml::node*>(Node(key));
  if (node != nullptr && !node->is_string()) {
    used_->insert(key);
    return KeyErrors{WhereKey(key), KeyPath(key)}.WrongType("a string, " + expected, *node);
  }
  MEWM_TRY(std::string value, GetString(key, std::move(fallback)));
  if (node != nullptr && std::find(choices.begin(), choices.end(), value) == choices.end()) {
    return MakeError(ErrorCode::kInvalidArgument, WhereKey(key) + ": " + KeyPath(key) +
                                                      " must be " + expected + " (got " +
                                                      Quote(value) + ")");
  }
  return value;
}

Expected<ConfigTable> ConfigTable::GetTable(const std::string& key, bool optional) const {
  used_->insert(key);
  const KeyErrors err{WhereKey(key), KeyPath(key)};
  const auto* node = static_cast<const toml::node*>(Node(key));
  if (node == nullptr) {
    if (optional) return ConfigTable(doc_, &EmptyTable(), KeyPath(key));
    return err.Missing("a table, [" + KeyPath(key) + "]");
  }
  if (!node->is_table()) return err.WrongType("a table", *node);
  return ConfigTable(doc_, node->as_table(), KeyPath(key));
}

ConfigTable ConfigTable::MissingTable(const std::string& key) const {
  return ConfigTable(doc_, &EmptyTable(), KeyPath(key));
}

Expected<std::vector<ConfigTable>> ConfigTable::GetTableArray(const std::string& key) const {
  used_->insert(key);
  const KeyErrors err{WhereKey(key), KeyPath(key)};
  const auto* node = static_cast<const toml::node*>(Node(key));
  std::vector<ConfigTable> out;
  if (node == nullptr) return out;
  const std::string expected = "an array of tables, [[" + KeyPath(key) + "]]";
  if (!node->is_array()) return err.WrongType(expected, *node);
  const auto& array = *node->as_array();
  out.reserve(array.size());
  for (std::size_t i = 0; i < array.size(); ++i) {
    const toml::node& element = array[i];
    const std::string element_path = KeyPath(key) + "[" + std::to_string(i) + "]";
    if (!element.is_table()) {
      const KeyErrors element_err{WhereLine(doc_->origin, element.source()), element_path};
      return element_err.WrongType("a table", element);
    }
    out.push_back(ConfigTable(doc_, element.as_table(), element_path));
  }
  return out;
}

Status ConfigTable::RejectUnknownKeys() const {
  const std::vector<std::string> allowed(used_->begin(), used_->end());  // sorted: std::set
  const std::string allowed_text = allowed.empty() ? "none" : Join(allowed, ", ");
  constexpr std::size_t kMaxListed = 20;  // a table of 90,000 unknown keys: 13 MB of message
  std::vector<std::string> lines;
  std::size_t unknown = 0;
  for (const std::string& key : Keys()) {  // file order
    if (used_->count(key) != 0 || ++unknown > kMaxListed) continue;
    lines.push_back(WhereKey(key) + ": unknown key " + KeyPath(key) + " (allowed: " + allowed_text +
                    ")");
  }
  if (lines.empty()) return {};
  if (unknown > kMaxListed) {
    lines.push_back(Where() + ": and " + std::to_string(unknown - kMaxListed) +
                    " more unknown keys in " + (path_.empty() ? "the top level" : path_));
  }
  return MakeError(ErrorCode::kInvalidArgument, Join(lines, "\n"));
}

}  // namespace mewm

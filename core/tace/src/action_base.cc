// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/tace/action_base.h"

#include <algorithm>
#include <cctype>
#include <climits>
#include <cstdint>
#include <stdexcept>
#include <utility>

#include "mewm/core/config.h"
#include "mewm/core/file_util.h"
#include "mewm/core/text.h"

namespace mewm::detail {
/// The text of core/tace/data/tace_actions.toml; CMake generates the definition from
/// core/src/embedded_actions.cc.in.
const std::string& EmbeddedActionsToml();
}  // namespace mewm::detail

namespace mewm {
namespace {

/// Where the compiled-in text comes from; used as the origin in its (never expected) errors.
constexpr const char* kDefaultOrigin = "core/tace/data/tace_actions.toml";

/// The plan separator and the name of the empty plan; item names may use neither.
constexpr char kSeparator = '+';
constexpr const char* kNone = "none";

constexpr const char* kBlanks = " \t\r\n";

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

std::string Trim(const std::string& s) {
  const auto first = s.find_first_not_of(kBlanks);
  if (first == std::string::npos) return "";
  const auto last = s.find_last_not_of(kBlanks);
  return s.substr(first, last - first + 1);
}

/// "A", "A and B", "A, B and C".
std::string JoinAnd(const std::vector<std::string>& parts) {
  if (parts.size() <= 1) return Join(parts, "");
  std::vector<std::string> head(parts.begin(), parts.end() - 1);
  return Join(head, ", ") + " and " + parts.back();
}

std::string Quote(const std::string& s) { return "'" + s + "'"; }

/// " (did you mean 'Cisplatin'?)" naming the closest name or alias, or "" when there are none.
/// Closeness is the EditDistance to the whole candidate or, one worse, to its first
/// wanted.size() characters, so that "Gelatin" finds "Gelatin Sponge". Ties go to the first in
/// file order.
std::string DidYouMean(const std::vector<ActionItem>& items, const std::string& wanted) {
  const std::string* best = nullptr;
  std::size_t best_distance = 0;
  const auto consider = [&](const std::string& candidate) {
    std::size_t d = EditDistance(wanted, candidate);
    if (candidate.size() > wanted.size()) {
      d = std::min(d, EditDistance(wanted, candidate.substr(0, wanted.size())) + 1);
    }
    if (best == nullptr || d < best_distance) {
      best = &candidate;
      best_distance = d;
    }
  };
  for (const ActionItem& item : items) {
    consider(item.name);
    for (const std::string& alias : item.aliases) consider(alias);
  }
  if (best == nullptr) return "";
  return " (did you mean " + Quote(*best) + "?)";
}

/// Protocol lookup, case-insensitive (the loader rejects names that differ only in case).
template <typename Map>
auto FindProtocol(const Map& protocols, const std::string& name) {
  auto it = protocols.find(name);
  if (it != protocols.end()) return it;
  const std::string lower = Lower(name);
  return std::find_if(protocols.begin(), protocols.end(),
                      [&](const auto& entry) { return Lower(entry.first) == lower; });
}

std::vector<std::string> ProtocolNames(const std::map<std::string, std::vector<std::string>>& m) {
  std::vector<std::string> names;
  for (const auto& entry : m) names.push_back(entry.first);
  return names;
}

/// Checks a name or alias as written in the TOML file; `what` is e.g. "drug[3].name".
Status CheckItemName(const std::string& where, const std::string& what, const std::string& name) {
  const auto bad = [&](const std::string& why) -> Status {
    return MakeError(ErrorCode::kInvalidArgument,
                     where + ": " + what + " " + Quote(name) + " " + why);
  };
  if (Trim(name).empty()) {
    return MakeError(ErrorCode::kInvalidArgument, where + ": " + what + " must not be empty");
  }
  if (Trim(name) != name) return bad("must not start or end with blanks");
  if (name.find(kSeparator) != std::string::npos) {
    return bad("must not contain '+' (it separates plan items)");
  }
  if (Lower(name) == kNone) return bad("is reserved (it names the empty plan)");
  return {};
}

/// Every name and alias seen so far, lower-cased, with where it was defined; rejects repeats.
class NameRegistry {
 public:
  Status Add(const std::string& where, const std::string& what, const std::string& name) {
    MEWM_RETURN_IF_ERROR(CheckItemName(where, what, name));
    const auto [it, inserted] = seen_.emplace(Lower(name), Seen{name, where});
    if (!inserted) {
      return MakeError(ErrorCode::kInvalidArgument,
                       where + ": " + what + " " + Quote(name) + " is already defined at " +
                           it->second.where + " as " + Quote(it->second.name) +
                           " (names and aliases are case-insensitive and must be unique)");
    }
    return {};
  }

 private:
  struct Seen {
    std::string name;
    std::string where;
  };
  std::map<std::string, Seen> seen_;
};

/// Reads one [[drug]] or [[embolic]] table. Unknown keys are reported before missing ones, so a
/// misspelt "nmae" reads as the typo it is rather than as a missing name.
Expected<ActionItem> ReadItem(const ConfigTable& table, ItemKind kind, NameRegistry& names) {
  auto name = table.GetString("name");
  auto aliases = table.GetStringList("aliases", std::vector<std::string>{});
  Expected<std::string> drug_class = std::string();
  if (kind == ItemKind::kDrug) drug_class = table.GetString("class");
  MEWM_RETURN_IF_ERROR(table.RejectUnknownKeys());

  ActionItem item;
  item.kind = kind;
  MEWM_TRY(item.name, std::move(name));
  MEWM_TRY(item.aliases, std::move(aliases));
  MEWM_TRY(item.drug_class, std::move(drug_class));

  MEWM_RETURN_IF_ERROR(names.Add(table.WhereKey("name"), table.path() + ".name", item.name));
  for (const std::string& alias : item.aliases) {
    MEWM_RETURN_IF_ERROR(names.Add(table.WhereKey("aliases"), table.path() + ".aliases", alias));
  }
  if (kind == ItemKind::kDrug && Trim(item.drug_class).empty()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     table.WhereKey("class") + ": " + table.path() + ".class must not be empty");
  }
  return item;
}

/// Rule ids must be unique across all rules and differ from the ids Violations() makes up.
class RuleIds {
 public:
  Status Add(const ConfigTable& table, const std::string& id) {
    const std::string where = table.WhereKey("id");
    if (Trim(id).empty()) {
      return MakeError(ErrorCode::kInvalidArgument,
                       where + ": " + table.path() + ".id must not be empty");
    }
    if (id == "unknown_item" || id == "non_canonical_item" || id == "unknown_protocol" ||
        id.rfind("protocol.", 0) == 0) {
      return MakeError(ErrorCode::kInvalidArgument,
                       where + ": rule id " + Quote(id) + " is reserved for mewm's own checks");
    }
    const auto [it, inserted] = seen_.emplace(id, where);
    if (!inserted) {
      return MakeError(ErrorCode::kInvalidArgument,
                       where + ": rule id " + Quote(id) + " is already used at " + it->second);
    }
    return {};
  }

 private:
  std::map<std::string, std::string> seen_;
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// Plan

Plan::Plan(std::vector<std::string> items) : items_(std::move(items)) {
  std::sort(items_.begin(), items_.end());
  items_.erase(std::unique(items_.begin(), items_.end()), items_.end());
}

bool Plan::Contains(const std::string& item) const {
  return std::binary_search(items_.begin(), items_.end(), item);
}

Plan Plan::With(const std::string& item) const {
  Plan out = *this;
  const auto it = std::lower_bound(out.items_.begin(), out.items_.end(), item);
  if (it == out.items_.end() || *it != item) out.items_.insert(it, item);
  return out;
}

std::string Plan::ToString() const {
  if (items_.empty()) return kNone;
  return Join(items_, std::string(1, kSeparator));
}

// ---------------------------------------------------------------------------------------------
// Loading

Expected<std::string> ActionBase::ResolveItem(const ConfigTable& table, const std::string& key,
                                              const std::string& name) const {
  const ActionItem* item = FindItem(name);
  if (item == nullptr) {
    return MakeError(ErrorCode::kInvalidArgument, table.WhereKey(key) + ": " + table.path() + "." +
                                                      key + " names unknown item " + Quote(name) +
                                                      DidYouMean(items_, name));
  }
  return item->name;
}

Status ActionBase::ReadRules(const ConfigTable& rule_table) {
  const std::vector<std::string> classes = DrugClasses();
  auto limit_tables = rule_table.GetTableArray("class_limit");
  auto exclusive_tables = rule_table.GetTableArray("exclusive");
  MEWM_RETURN_IF_ERROR(rule_table.RejectUnknownKeys());
  RuleIds ids;

  MEWM_TRY(const std::vector<ConfigTable> limits, std::move(limit_tables));
  for (const ConfigTable& table : limits) {
    auto id = table.GetString("id");
    auto drug_class = table.GetString("class");
    auto max = table.GetInt("max", std::nullopt, /*min=*/0);
    MEWM_RETURN_IF_ERROR(table.RejectUnknownKeys());
    ClassLimit limit;
    MEWM_TRY(limit.id, std::move(id));
    MEWM_TRY(limit.drug_class, std::move(drug_class));
    MEWM_TRY(const std::int64_t max_value, std::move(max));
    // Any count above the number of drugs is "no limit"; clamp so the value fits an int.
    limit.max = static_cast<int>(std::min<std::int64_t>(max_value, INT_MAX));
    MEWM_RETURN_IF_ERROR(ids.Add(table, limit.id));
    if (std::find(classes.begin(), classes.end(), limit.drug_class) == classes.end()) {
      return MakeError(ErrorCode::kInvalidArgument,
                       table.WhereKey("class") + ": " + table.path() + ".class " +
                           Quote(limit.drug_class) +
                           " is not the class of any drug (classes: " + Join(classes, ", ") + ")");
    }
    class_limits_.push_back(std::move(limit));
  }

  MEWM_TRY(const std::vector<ConfigTable> exclusives, std::move(exclusive_tables));
  for (const ConfigTable& table : exclusives) {
    auto id = table.GetString("id");
    auto items = table.GetStringList("items");
    MEWM_RETURN_IF_ERROR(table.RejectUnknownKeys());
    Exclusion exclusion;
    MEWM_TRY(exclusion.id, std::move(id));
    MEWM_TRY(const std::vector<std::string> written, std::move(items));
    MEWM_RETURN_IF_ERROR(ids.Add(table, exclusion.id));
    for (const std::string& name : written) {
      MEWM_TRY(std::string canonical, ResolveItem(table, "items", name));
      if (std::find(exclusion.items.begin(), exclusion.items.end(), canonical) ==
          exclusion.items.end()) {
        exclusion.items.push_back(std::move(canonical));
      }
    }
    if (exclusion.items.size() < 2) {
      return MakeError(ErrorCode::kInvalidArgument,
                       table.WhereKey("items") + ": " + table.path() +
                           ".items must name at least 2 different items (got " +
                           std::to_string(exclusion.items.size()) + ")");
    }
    exclusions_.push_back(std::move(exclusion));
  }
  return {};
}

Status ActionBase::ReadProtocols(const ConfigTable& protocol_table) {
  std::map<std::string, std::string> protocol_where;  // lower-case name -> where
  for (const std::string& name : protocol_table.Keys()) {
    MEWM_TRY(const ConfigTable table, protocol_table.GetTable(name));
    auto mandatory = table.GetStringList("mandatory");
    MEWM_RETURN_IF_ERROR(table.RejectUnknownKeys());
    const auto [seen, inserted] = protocol_where.emplace(Lower(name), table.Where());
    if (!inserted) {
      return MakeError(ErrorCode::kInvalidArgument, table.Where() + ": protocol " + Quote(name) +
                                                        " is already defined at " + seen->second +
                                                        " (protocol names are case-insensitive)");
    }
    MEWM_TRY(const std::vector<std::string> written, std::move(mandatory));
    std::vector<std::string> canonical_items;
    for (const std::string& item_name : written) {
      MEWM_TRY(std::string canonical, ResolveItem(table, "mandatory", item_name));
      if (std::find(canonical_items.begin(), canonical_items.end(), canonical) ==
          canonical_items.end()) {
        canonical_items.push_back(std::move(canonical));
      }
    }
    protocols_[name] = std::move(canonical_items);
  }
  MEWM_RETURN_IF_ERROR(protocol_table.RejectUnknownKeys());
  return {};
}

Expected<ActionBase> ActionBase::FromToml(const std::string& toml_text, const std::string& origin) {
  MEWM_TRY(const ConfigDocument doc, ConfigDocument::Parse(toml_text, origin));
  const ConfigTable root = doc.Root();

  auto version = root.GetInt("version");
  auto drugs = root.GetTableArray("drug");
  auto embolics = root.GetTableArray("embolic");
  auto rules = root.GetTable("rule", /*optional=*/true);
  auto protocols = root.GetTable("protocol", /*optional=*/true);
  MEWM_RETURN_IF_ERROR(root.RejectUnknownKeys());

  ActionBase base;
  MEWM_TRY(base.version_, std::move(version));
  if (base.version_ != 1) {
    return MakeError(ErrorCode::kUnsupported, root.WhereKey("version") + ": version " +
                                                  std::to_string(base.version_) +
                                                  " is not supported (this mewm reads version 1)");
  }

  // Items. Drugs come first in items(), then embolics, each in file order.
  NameRegistry names;
  MEWM_TRY(const std::vector<ConfigTable> drug_tables, std::move(drugs));
  MEWM_TRY(const std::vector<ConfigTable> embolic_tables, std::move(embolics));
  for (const ConfigTable& table : drug_tables) {
    MEWM_TRY(ActionItem item, ReadItem(table, ItemKind::kDrug, names));
    base.items_.push_back(std::move(item));
  }
  for (const ConfigTable& table : embolic_tables) {
    MEWM_TRY(ActionItem item, ReadItem(table, ItemKind::kEmbolic, names));
    base.items_.push_back(std::move(item));
  }
  MEWM_TRY(const ConfigTable rule_table, std::move(rules));
  MEWM_RETURN_IF_ERROR(base.ReadRules(rule_table));
  MEWM_TRY(const ConfigTable protocol_table, std::move(protocols));
  MEWM_RETURN_IF_ERROR(base.ReadProtocols(protocol_table));
  return base;
}

Expected<ActionBase> ActionBase::Load(const std::string& path) {
  MEWM_TRY(const std::string text, ReadFile(path));
  return FromToml(text, path);
}

const ActionBase& ActionBase::Default() {
  // The text is compiled in and ActionBaseTest.DefaultActionBaseLoads parses it, so a failure
  // here is a build defect, not an input error: it is reported as std::logic_error.
  static const ActionBase base = [] {
    Expected<ActionBase> parsed = FromToml(DefaultToml(), kDefaultOrigin);
    if (!parsed) {
      throw std::logic_error("the built-in action base is invalid: " + parsed.error().ToString());
    }
    return std::move(parsed).value();
  }();
  return base;
}

const std::string& ActionBase::DefaultToml() { return detail::EmbeddedActionsToml(); }

// ---------------------------------------------------------------------------------------------
// Queries

std::vector<std::string> ActionBase::Drugs() const {
  std::vector<std::string> out;
  for (const ActionItem& item : items_) {
    if (item.kind == ItemKind::kDrug) out.push_back(item.name);
  }
  return out;
}

std::vector<std::string> ActionBase::Embolics() const {
  std::vector<std::string> out;
  for (const ActionItem& item : items_) {
    if (item.kind == ItemKind::kEmbolic) out.push_back(item.name);
  }
  return out;
}

std::vector<std::string> ActionBase::DrugClasses() const {
  std::vector<std::string> out;
  for (const ActionItem& item : items_) {
    if (item.kind != ItemKind::kDrug) continue;
    if (std::find(out.begin(), out.end(), item.drug_class) == out.end()) {
      out.push_back(item.drug_class);
    }
  }
  return out;
}

const ActionItem* ActionBase::FindItem(const std::string& name_or_alias) const {
  const std::string wanted = Lower(Trim(name_or_alias));
  if (wanted.empty()) return nullptr;
  for (const ActionItem& item : items_) {
    if (Lower(item.name) == wanted) return &item;
    for (const std::string& alias : item.aliases) {
      if (Lower(alias) == wanted) return &item;
    }
  }
  return nullptr;
}

Expected<ActionItem> ActionBase::Find(const std::string& name_or_alias) const {
  if (const ActionItem* item = FindItem(name_or_alias)) return *item;
  if (Trim(name_or_alias).empty()) {
    return MakeError(ErrorCode::kNotFound, "empty plan item name");
  }
  return MakeError(ErrorCode::kNotFound, "unknown plan item " + Quote(name_or_alias) +
                                             DidYouMean(items_, Trim(name_or_alias)));
}

Expected<Plan> ActionBase::MakePlan(const std::vector<std::string>& names) const {
  std::vector<std::string> canonical;
  canonical.reserve(names.size());
  for (const std::string& name : names) {
    MEWM_TRY(ActionItem item, Find(name));
    canonical.push_back(std::move(item.name));
  }
  return Plan(std::move(canonical));
}

Expected<Plan> ActionBase::ParsePlan(const std::string& text) const {
  const std::string trimmed = Trim(text);
  if (trimmed.empty()) {
    return MakeError(ErrorCode::kParse, "empty plan string (write 'none' for the empty plan)");
  }
  if (Lower(trimmed) == kNone) return Plan();

  std::vector<std::string> canonical;
  std::size_t start = 0;
  for (std::size_t position = 1;; ++position) {
    const std::size_t end = text.find(kSeparator, start);
    const std::string piece =
        Trim(text.substr(start, end == std::string::npos ? std::string::npos : end - start));
    if (piece.empty()) {
      return MakeError(ErrorCode::kParse, "empty item " + std::to_string(position) + " in plan " +
                                              Quote(text) +
                                              " (items are separated by a single '+')");
    }
    if (Lower(piece) == kNone) {
      return MakeError(ErrorCode::kParse,
                       "'none' cannot be combined with other items in plan " + Quote(text));
    }
    MEWM_TRY(ActionItem item, Find(piece));
    canonical.push_back(std::move(item.name));
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return Plan(std::move(canonical));
}

// ---------------------------------------------------------------------------------------------
// Rules

std::vector<std::string> ActionBase::RuleSentences() const {
  std::vector<std::string> out;
  for (const ClassLimit& limit : class_limits_) {
    out.push_back(limit.id + ": " +
                  (limit.max == 0 ? "no " + limit.drug_class + " drug"
                                  : "at most " + std::to_string(limit.max) + " " +
                                        limit.drug_class + (limit.max == 1 ? " drug" : " drugs")));
  }
  for (const Exclusion& exclusion : exclusions_) {
    out.push_back(exclusion.id + ": " +
                  (exclusion.items.size() == 2 ? JoinAnd(exclusion.items) + " exclude each other"
                                               : "at most one of " + Join(exclusion.items, ", ")));
  }
  return out;
}

std::vector<RuleViolation> ActionBase::Violations(const Plan& plan,
                                                  const std::string& protocol) const {
  std::vector<RuleViolation> out;

  // Resolve the plan's items; rules then see each known item once, by canonical name.
  std::vector<const ActionItem*> known;
  for (const std::string& name : plan.items()) {
    const ActionItem* item = FindItem(name);
    if (item == nullptr) {
      out.push_back(
          {"unknown_item", Quote(name) + " is not in the action base" + DidYouMean(items_, name)});
      continue;
    }
    if (item->name != name) {
      out.push_back({"non_canonical_item",
                     Quote(name) + " is not the canonical name; use " + Quote(item->name)});
    }
    if (std::find(known.begin(), known.end(), item) == known.end()) known.push_back(item);
  }
  std::sort(known.begin(), known.end(),
            [](const ActionItem* a, const ActionItem* b) { return a->name < b->name; });
  const auto has = [&known](const std::string& name) {
    return std::any_of(known.begin(), known.end(),
                       [&name](const ActionItem* item) { return item->name == name; });
  };

  for (const ClassLimit& limit : class_limits_) {
    std::vector<std::string> members;
    for (const ActionItem* item : known) {
      if (item->kind == ItemKind::kDrug && item->drug_class == limit.drug_class) {
        members.push_back(item->name);
      }
    }
    if (static_cast<long long>(members.size()) <= limit.max) continue;
    const std::string allowed =
        limit.max == 0 ? "no " + limit.drug_class + " drug allowed"
                       : "at most " + std::to_string(limit.max) + " " + limit.drug_class +
                             (limit.max == 1 ? " drug" : " drugs") + " allowed";
    out.push_back({limit.id, allowed + ", plan has " + std::to_string(members.size()) + " (" +
                                 Join(members, ", ") + ")"});
  }

  for (const Exclusion& exclusion : exclusions_) {
    std::vector<std::string> present;
    for (const std::string& name : exclusion.items) {
      if (has(name)) present.push_back(name);
    }
    if (present.size() < 2) continue;
    if (exclusion.items.size() == 2) {
      out.push_back({exclusion.id, JoinAnd(present) + " exclude each other"});
    } else {
      out.push_back({exclusion.id, "at most one of " + Join(exclusion.items, ", ") +
                                       " allowed, plan has " + Join(present, ", ")});
    }
  }

  if (!protocol.empty()) {
    const auto it = FindProtocol(protocols_, protocol);
    if (it == protocols_.end()) {
      out.push_back({"unknown_protocol", "protocol " + Quote(protocol) + " is not defined " +
                                             "(defined: " + Join(ProtocolNames(protocols_), ", ") +
                                             ")"});
    } else {
      std::vector<std::string> missing;
      for (const std::string& name : it->second) {
        if (!has(name)) missing.push_back(name);
      }
      if (!missing.empty()) {
        out.push_back(
            {"protocol." + it->first + ".mandatory",
             "protocol " + it->first + " requires " + JoinAnd(missing) + ", which the plan lacks"});
      }
    }
  }
  return out;
}

Status ActionBase::Validate(const Plan& plan, const std::string& protocol) const {
  const std::vector<RuleViolation> violations = Violations(plan, protocol);
  if (violations.empty()) return {};
  std::string message = "plan " + plan.ToString() + " breaks " + std::to_string(violations.size()) +
                        (violations.size() == 1 ? " rule:" : " rules:");
  for (const RuleViolation& v : violations) message += "\n" + v.rule + ": " + v.reason;
  return MakeError(ErrorCode::kRuleViolation, message);
}

Expected<std::vector<std::string>> ActionBase::MandatoryItems(const std::string& protocol) const {
  const auto it = FindProtocol(protocols_, protocol);
  if (it == protocols_.end()) {
    return MakeError(ErrorCode::kNotFound, "unknown protocol " + Quote(protocol) + " (defined: " +
                                               Join(ProtocolNames(protocols_), ", ") + ")");
  }
  return it->second;
}

std::vector<std::string> ActionBase::Protocols() const { return ProtocolNames(protocols_); }

// ---------------------------------------------------------------------------------------------

std::size_t EditDistance(const std::string& a, const std::string& b) {
  const std::string x = Lower(a);
  const std::string y = Lower(b);
  std::vector<std::size_t> previous(y.size() + 1);
  std::vector<std::size_t> current(y.size() + 1);
  for (std::size_t j = 0; j <= y.size(); ++j) previous[j] = j;
  for (std::size_t i = 1; i <= x.size(); ++i) {
    current[0] = i;
    for (std::size_t j = 1; j <= y.size(); ++j) {
      const std::size_t substitute = previous[j - 1] + (x[i - 1] == y[j - 1] ? 0 : 1);
      current[j] = std::min({previous[j] + 1, current[j - 1] + 1, substitute});
    }
    std::swap(previous, current);
  }
  return previous[y.size()];
}

}  // namespace mewm

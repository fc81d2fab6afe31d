// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The treatment vocabulary: which drugs and embolic materials exist, their classes and aliases,
// and the rules a plan must obey. It is data (core/tace/data/tace_actions.toml), replaceable per
// institution; every component validates plans through ActionBase::Validate.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "mewm/core/expected.h"

namespace mewm {

class ConfigTable;

enum class ItemKind { kDrug, kEmbolic };

/// One plan item as the action base defines it.
struct ActionItem {
  std::string name;  ///< canonical name, e.g. "Pirarubicin"
  ItemKind kind = ItemKind::kDrug;
  std::string drug_class;            ///< e.g. "platinum" (drugs only)
  std::vector<std::string> aliases;  ///< e.g. {"THP"}
};

/// A treatment plan: a set of canonical item names, kept sorted and unique. A value type with no
/// reference to an ActionBase; use ActionBase::ParsePlan / Validate for checked construction.
class Plan {
 public:
  Plan() = default;
  /// Sorts and de-duplicates; does not check names (see ActionBase::MakePlan).
  explicit Plan(std::vector<std::string> items);

  const std::vector<std::string>& items() const { return items_; }
  bool empty() const { return items_.empty(); }
  std::size_t size() const { return items_.size(); }
  bool Contains(const std::string& item) const;

  /// A copy with `item` added (canonical order kept).
  Plan With(const std::string& item) const;

  /// Stable string form "Epirubicin+Lipiodol+PVA"; the empty plan is "none".
  std::string ToString() const;

  friend bool operator==(const Plan& a, const Plan& b) { return a.items_ == b.items_; }
  friend bool operator!=(const Plan& a, const Plan& b) { return !(a == b); }
  friend bool operator<(const Plan& a, const Plan& b) { return a.items_ < b.items_; }

 private:
  std::vector<std::string> items_;
};

/// One broken rule: which rule, and a sentence that says why.
struct RuleViolation {
  std::string rule;  ///< rule id from the TOML, e.g. "one_platinum"
  std::string
      reason;  ///< e.g. "at most 1 platinum drug allowed, plan has 2 (Cisplatin, Oxaliplatin)"
};

/// The vocabulary and its rules.
class ActionBase {
 public:
  /// Parses TOML text; `origin` names the source in errors ("tace_actions.toml:12: ...").
  static Expected<ActionBase> FromToml(const std::string& toml_text, const std::string& origin);
  static Expected<ActionBase> Load(const std::string& path);
  /// The action base shipped with mewm (compiled in from core/tace/data/tace_actions.toml), parsed
  /// once on first use. That text is part of the build and a unit test parses it, so a failure
  /// is a build defect rather than an input error: Default() then throws std::logic_error (it
  /// never aborts). Code that loads institution files uses FromToml / Load, which return errors.
  static const ActionBase& Default();
  /// The text of the shipped TOML file.
  static const std::string& DefaultToml();

  const std::vector<ActionItem>& items() const { return items_; }
  std::vector<std::string> Drugs() const;
  std::vector<std::string> Embolics() const;
  /// Drug classes in first-seen order.
  std::vector<std::string> DrugClasses() const;

  /// Resolves a name or alias, case-insensitively and ignoring surrounding blanks, to the item.
  /// kNotFound names the closest valid name or alias (by EditDistance):
  /// "unknown plan item 'Cisplatn' (did you mean 'Cisplatin'?)".
  Expected<ActionItem> Find(const std::string& name_or_alias) const;

  /// Builds a Plan from names or aliases (unknown names are errors, as in Find).
  Expected<Plan> MakePlan(const std::vector<std::string>& names) const;
  /// Parses "Epirubicin + lipiodol+THP" (separator '+', surrounding blanks ignored, "none" is the
  /// empty plan). kParse for an empty string, an empty item ("Cisplatin++PVA") or "none" combined
  /// with items; unknown items are kNotFound as in Find. Repeats (also via aliases) collapse.
  /// The plan is not validated.
  Expected<Plan> ParsePlan(const std::string& text) const;

  /// Every violated rule (empty when the plan is valid). `protocol` selects mandatory items,
  /// e.g. "cTACE" requires Lipiodol (rule "protocol.cTACE.mandatory"); an empty protocol checks
  /// no mandatory items. Besides the TOML's rules it reports "unknown_item" (a plan item the
  /// action base does not define), "non_canonical_item" (an alias or miscased name in a Plan
  /// built without MakePlan/ParsePlan) and "unknown_protocol". Order: item problems, class limits,
  /// exclusions (each in file order), then the protocol.
  std::vector<RuleViolation> Violations(const Plan& plan,
                                        const std::string& protocol = "cTACE") const;
  /// kRuleViolation listing all violations, one per line after a summary line:
  /// "plan Cisplatin+Oxaliplatin breaks 2 rules:\none_platinum: at most 1 ...".
  Status Validate(const Plan& plan, const std::string& protocol = "cTACE") const;

  /// The class limits and exclusions as sentences, in file order ("one_platinum: at most 1
  /// platinum drug", "no_double_particles: PVA and Microspheres exclude each other"): what a
  /// plan-writing model is told (mandatory items: MandatoryItems).
  std::vector<std::string> RuleSentences() const;

  /// Mandatory items of a protocol (kNotFound for an unknown protocol).
  Expected<std::vector<std::string>> MandatoryItems(const std::string& protocol) const;
  /// Names of the protocols the action base defines, e.g. {"cTACE"}.
  std::vector<std::string> Protocols() const;

  /// The version field of the TOML file.
  int version() const { return version_; }

 private:
  struct ClassLimit {
    std::string id;
    std::string drug_class;
    int max = 1;
  };
  struct Exclusion {
    std::string id;
    std::vector<std::string> items;
  };
  const ActionItem* FindItem(const std::string& name_or_alias) const;
  /// The canonical name of an item that a rule or protocol names (`table`.`key`), or an error
  /// that says where, with a "did you mean".
  Expected<std::string> ResolveItem(const ConfigTable& table, const std::string& key,
                                    const std::string& name) const;
  /// FromToml's [rule] and [protocol] tables, read after the items.
  Status ReadRules(const ConfigTable& rule_table);
  Status ReadProtocols(const ConfigTable& protocol_table);

  int version_ = 0;
  std::vector<ActionItem> items_;
  std::vector<ClassLimit> class_limits_;
  std::vector<Exclusion> exclusions_;
  std::map<std::string, std::vector<std::string>> protocols_;  ///< protocol -> mandatory items
};

/// Levenshtein distance, case-insensitive (used for "did you mean").
std::size_t EditDistance(const std::string& a, const std::string& b);

}  // namespace mewm

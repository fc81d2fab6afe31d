// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/tace/action_base.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace mewm {
namespace {

class ActionBaseTest : public ::testing::Test {
 protected:
  const ActionBase& base_ = ActionBase::Default();

  /// Parses a plan string with the default action base; fails the test on error.
  Plan P(const std::string& text) const {
    auto plan = base_.ParsePlan(text);
    EXPECT_TRUE(plan.has_value()) << text << ": " << plan.error().ToString();
    return plan.has_value() ? *plan : Plan();
  }

  /// Rule ids of the violations, in reported order.
  std::vector<std::string> Broken(const Plan& plan, const std::string& protocol = "cTACE") const {
    std::vector<std::string> ids;
    for (const RuleViolation& v : base_.Violations(plan, protocol)) ids.push_back(v.rule);
    return ids;
  }

  /// 1-based line of the first line containing `needle`.
  static int LineOf(const std::string& text, const std::string& needle) {
    const auto pos = text.find(needle);
    EXPECT_NE(pos, std::string::npos) << needle;
    return 1 + static_cast<int>(std::count(text.begin(), text.begin() + pos, '\n'));
  }

  /// "custom.toml:<line of needle>".
  static std::string At(const std::string& text, const std::string& needle) {
    return "custom.toml:" + std::to_string(LineOf(text, needle));
  }

  /// Loads `text` as "custom.toml" and returns the error message ("" if it loaded).
  static std::string LoadError(const std::string& text) {
    auto loaded = ActionBase::FromToml(text, "custom.toml");
    if (loaded.has_value()) return "";
    return loaded.error().message;
  }
};

/// A small institution action base, used as a valid starting point for the malformed cases.
const char* const kCustom = R"(# A hospital's own formulary.
version = 1

[[drug]]
name = "Cisplatin"
class = "platinum"
aliases = ["CDDP"]

[[drug]]
name = "Doxorubicin"
class = "anthracycline"
aliases = ["Adriamycin", "DOX"]

[[drug]]
name = "Carboplatin"
class = "platinum"

[[embolic]]
name = "Drug-Eluting Beads"
aliases = ["DEB"]

[[embolic]]
name = "Lipiodol"

[[rule.class_limit]]
id = "no_platinum"
class = "platinum"
max = 0

[[rule.exclusive]]
id = "beads_or_oil"
items = ["DEB", "lipiodol"]

[protocol.DEB-TACE]
mandatory = ["Drug-Eluting Beads"]

[protocol.cTACE]
mandatory = ["Lipiodol"]
)";

/// kCustom with the first `from` replaced by `to`.
std::string Edit(const std::string& from, const std::string& to) {
  std::string text = kCustom;
  const auto pos = text.find(from);
  EXPECT_NE(pos, std::string::npos) << from;
  if (pos != std::string::npos) text.replace(pos, from.size(), to);
  return text;
}

// ---------------------------------------------------------------------------------------------
// The shipped action base

TEST_F(ActionBaseTest, DefaultActionBaseLoads) {
  auto parsed = ActionBase::FromToml(ActionBase::DefaultToml(), "tace_actions.toml");
  ASSERT_TRUE(parsed.has_value()) << parsed.error().ToString();
  EXPECT_EQ(base_.version(), 1);
  EXPECT_EQ(base_.Drugs(), (std::vector<std::string>{"Raltitrexed", "Epirubicin", "Idarubicin",
                                                     "Pirarubicin", "Oxaliplatin", "Lobaplatin",
                                                     "Cisplatin", "Nedaplatin", "Mitomycin"}));
  EXPECT_EQ(base_.Embolics(), (std::vector<std::string>{"Lipiodol", "Gelatin Sponge", "PVA",
                                                        "Absolute Alcohol", "NBCA"}));
  EXPECT_EQ(base_.items().size(), 14u);
  EXPECT_EQ(base_.DrugClasses(),
            (std::vector<std::string>{"antimetabolite", "anthracycline", "platinum", "mitomycin"}));
  EXPECT_EQ(base_.Protocols(), (std::vector<std::string>{"cTACE"}));
  EXPECT_EQ(*base_.MandatoryItems("cTACE"), (std::vector<std::string>{"Lipiodol"}));
}

TEST_F(ActionBaseTest, DrugsCarryTheirClass) {
  const auto cls = [&](const std::string& name) { return base_.Find(name)->drug_class; };
  EXPECT_EQ(cls("Raltitrexed"), "antimetabolite");
  for (const char* d : {"Epirubicin", "Idarubicin", "Pirarubicin"})
    EXPECT_EQ(cls(d), "anthracycline");
  for (const char* d : {"Oxaliplatin", "Lobaplatin", "Cisplatin", "Nedaplatin"}) {
    EXPECT_EQ(cls(d), "platinum");
  }
  EXPECT_EQ(cls("Mitomycin"), "mitomycin");
  EXPECT_EQ(base_.Find("NBCA")->kind, ItemKind::kEmbolic);
  EXPECT_EQ(base_.Find("NBCA")->drug_class, "");
}

#ifdef MEWM_SOURCE_DIR
TEST_F(ActionBaseTest, CompiledInTextIsTheShippedFile) {
  const std::string path = std::string(MEWM_SOURCE_DIR) + "/core/tace/data/tace_actions.toml";
  std::ifstream in(path, std::ios::binary);
  ASSERT_TRUE(in) << path;
  std::ostringstream text;
  text << in.rdbuf();
  EXPECT_EQ(ActionBase::DefaultToml(), text.str());
  auto loaded = ActionBase::Load(path);
  ASSERT_TRUE(loaded.has_value()) << loaded.error().ToString();
  EXPECT_EQ(loaded->items().size(), base_.items().size());
}
#endif

// ---------------------------------------------------------------------------------------------
// Names, aliases, plan strings

TEST_F(ActionBaseTest, ThpIsAnAliasOfPirarubicin) {
  auto thp = base_.Find("THP");
  ASSERT_TRUE(thp.has_value());
  EXPECT_EQ(thp->name, "Pirarubicin");
  EXPECT_EQ(thp->aliases, (std::vector<std::string>{"THP"}));
  const auto drugs = base_.Drugs();
  EXPECT_EQ(std::count(drugs.begin(), drugs.end(), "THP"), 0);
  EXPECT_EQ(P("THP + Lipiodol"), P("Pirarubicin+Lipiodol"));
  EXPECT_EQ(P("THP+Pirarubicin").ToString(), "Pirarubicin");  // one drug, two names
}

TEST_F(ActionBaseTest, NamesAreCaseInsensitive) {
  EXPECT_EQ(base_.Find("cisplatin")->name, "Cisplatin");
  EXPECT_EQ(base_.Find("GELATIN SPONGE")->name, "Gelatin Sponge");
  EXPECT_EQ(base_.Find("absolute alcohol")->name, "Absolute Alcohol");
  EXPECT_EQ(base_.Find("thp")->name, "Pirarubicin");
  EXPECT_EQ(base_.Find("  pva ")->name, "PVA");
  EXPECT_EQ(P("epirubicin+LIPIODOL+pva").ToString(), "Epirubicin+Lipiodol+PVA");
}

TEST_F(ActionBaseTest, UnknownItemNamesClosestValidName) {
  auto found = base_.Find("Cisplatn");
  ASSERT_FALSE(found.has_value());
  EXPECT_EQ(found.error().code, ErrorCode::kNotFound);
  EXPECT_EQ(found.error().message, "unknown plan item 'Cisplatn' (did you mean 'Cisplatin'?)");
  EXPECT_EQ(base_.Find("gelatin spnge").error().message,
            "unknown plan item 'gelatin spnge' (did you mean 'Gelatin Sponge'?)");
  // A name cut short still finds its item.
  EXPECT_EQ(base_.Find("Gelatin").error().message,
            "unknown plan item 'Gelatin' (did you mean 'Gelatin Sponge'?)");
  // Aliases are candidates too.
  EXPECT_EQ(base_.Find("THQ").error().message, "unknown plan item 'THQ' (did you mean 'THP'?)");

  auto plan = base_.ParsePlan("Lipiodol + Cisplatn");
  ASSERT_FALSE(plan.has_value());
  EXPECT_EQ(plan.error().code, ErrorCode::kNotFound);
  EXPECT_EQ(plan.error().message, "unknown plan item 'Cisplatn' (did you mean 'Cisplatin'?)");
  EXPECT_EQ(base_.MakePlan({"Lipiodol", "Oxaliplatine"}).error().message,
            "unknown plan item 'Oxaliplatine' (did you mean 'Oxaliplatin'?)");
}

TEST_F(ActionBaseTest, PlanStringIsCanonical) {
  EXPECT_EQ(P("PVA + epirubicin+  lipiodol ").ToString(), "Epirubicin+Lipiodol+PVA");
  EXPECT_EQ(P("Lipiodol+Epirubicin+PVA"), P("PVA+Lipiodol+Epirubicin"));
  // Plain lexicographic (std::string <) order: upper-case 'V' sorts before lower-case 'i'.
  EXPECT_EQ(Plan({"Pirarubicin", "PVA"}).ToString(), "PVA+Pirarubicin");
  EXPECT_EQ(P("Gelatin Sponge+Absolute Alcohol+Lipiodol").ToString(),
            "Absolute Alcohol+Gelatin Sponge+Lipiodol");
}

TEST_F(ActionBaseTest, EmptyPlanIsNone) {
  EXPECT_EQ(Plan().ToString(), "none");
  EXPECT_TRUE(P("none").empty());
  EXPECT_TRUE(P("  NONE ").empty());
  EXPECT_EQ(P("none"), Plan());
}

TEST_F(ActionBaseTest, PlanStringRoundTrips) {
  for (const char* text : {"none", "Lipiodol", "Epirubicin+Lipiodol+PVA",
                           "Absolute Alcohol+Cisplatin+Gelatin Sponge+Lipiodol",
                           "Lipiodol+Mitomycin+NBCA+Pirarubicin+Raltitrexed"}) {
    const Plan plan = P(text);
    EXPECT_EQ(plan.ToString(), text);
    EXPECT_EQ(P(plan.ToString()), plan);
  }
}

TEST_F(ActionBaseTest, ParsePlanRejectsEmptyItems) {
  for (const char* text : {"Cisplatin++PVA", "+PVA", "PVA+", "PVA + + Lipiodol", "", "   "}) {
    auto plan = base_.ParsePlan(text);
    ASSERT_FALSE(plan.has_value()) << text;
    EXPECT_EQ(plan.error().code, ErrorCode::kParse) << text;
  }
  EXPECT_EQ(base_.ParsePlan("Cisplatin++PVA").error().message,
            "empty item 2 in plan 'Cisplatin++PVA' (items are separated by a single '+')");
  EXPECT_EQ(base_.ParsePlan("").error().message,
            "empty plan string (write 'none' for the empty plan)");
}

TEST_F(ActionBaseTest, NoneCannotBeCombinedWithItems) {
  auto plan = base_.ParsePlan("none+Lipiodol");
  ASSERT_FALSE(plan.has_value());
  EXPECT_EQ(plan.error().code, ErrorCode::kParse);
  EXPECT_NE(plan.error().message.find("'none' cannot be combined"), std::string::npos);
}

TEST_F(ActionBaseTest, MakePlanCanonicalisesNames) {
  auto plan = base_.MakePlan({"lipiodol", "thp", "Pirarubicin", "PVA"});
  ASSERT_TRUE(plan.has_value()) << plan.error().ToString();
  EXPECT_EQ(plan->items(), (std::vector<std::string>{"Lipiodol", "PVA", "Pirarubicin"}));
  EXPECT_TRUE(base_.MakePlan({})->empty());
}

// ---------------------------------------------------------------------------------------------
// Plan as a value

TEST_F(ActionBaseTest, PlanWithKeepsCanonicalOrder) {
  const Plan start({"PVA"});
  const Plan grown = start.With("Lipiodol").With("Epirubicin");
  EXPECT_EQ(grown.items(), (std::vector<std::string>{"Epirubicin", "Lipiodol", "PVA"}));
  EXPECT_EQ(grown.size(), 3u);
  EXPECT_EQ(start.items(), (std::vector<std::string>{"PVA"}));  // With() copies
  EXPECT_EQ(grown.With("Lipiodol"), grown);                     // already present
  EXPECT_EQ(Plan().With("Lipiodol").ToString(), "Lipiodol");
  EXPECT_TRUE(grown.Contains("Lipiodol"));
  EXPECT_FALSE(grown.Contains("lipiodol"));  // Plan holds canonical names; no lookup
  EXPECT_FALSE(grown.Contains("Cisplatin"));
}

TEST_F(ActionBaseTest, PlansCompareAsSets) {
  EXPECT_EQ(Plan({"PVA", "Lipiodol", "PVA"}), Plan({"Lipiodol", "PVA"}));
  EXPECT_NE(Plan({"Lipiodol"}), Plan({"Lipiodol", "PVA"}));
  EXPECT_LT(Plan(), Plan({"Lipiodol"}));
  EXPECT_LT(Plan({"Cisplatin", "Lipiodol"}), Plan({"Lipiodol"}));
  const std::set<Plan> plans{P("Lipiodol+PVA"), P("PVA+lipiodol"), P("Lipiodol")};
  EXPECT_EQ(plans.size(), 2u);
}

// ---------------------------------------------------------------------------------------------
// Rules

TEST_F(ActionBaseTest, ValidPlansPass) {
  for (const char* text :
       {"Lipiodol", "Epirubicin+Lipiodol", "Cisplatin+Epirubicin+Lipiodol+Gelatin Sponge",
        "Lipiodol+PVA+Raltitrexed", "Absolute Alcohol+Gelatin Sponge+Lipiodol",
        "Lipiodol+Mitomycin+NBCA+THP+Oxaliplatin"}) {
    const Plan plan = P(text);
    EXPECT_TRUE(base_.Violations(plan).empty()) << text;
    EXPECT_TRUE(base_.Validate(plan).has_value()) << text;
  }
}

TEST_F(ActionBaseTest, AllowsOnePlatinumButNotTwo) {
  EXPECT_TRUE(Broken(P("Lobaplatin+Lipiodol")).empty());
  const auto violations = base_.Violations(P("Cisplatin+Oxaliplatin+Lipiodol"));
  ASSERT_EQ(violations.size(), 1u);
  EXPECT_EQ(violations[0].rule, "one_platinum");
  EXPECT_EQ(violations[0].reason,
            "at most 1 platinum drug allowed, plan has 2 (Cisplatin, Oxaliplatin)");
  EXPECT_EQ(Broken(P("Nedaplatin+Lobaplatin+Cisplatin+Oxaliplatin+Lipiodol")),
            (std::vector<std::string>{"one_platinum"}));
}

TEST_F(ActionBaseTest, AllowsOneAnthracyclineButNotTwo) {
  const auto violations = base_.Violations(P("Epirubicin+THP+Lipiodol"));
  ASSERT_EQ(violations.size(), 1u);
  EXPECT_EQ(violations[0].rule, "one_anthracycline");
  EXPECT_EQ(violations[0].reason,
            "at most 1 anthracycline drug allowed, plan has 2 (Epirubicin, Pirarubicin)");
  EXPECT_EQ(Broken(P("Idarubicin+Epirubicin+Lipiodol")),
            (std::vector<std::string>{"one_anthracycline"}));
}

TEST_F(ActionBaseTest, AbsoluteAlcoholAndPvaExcludeEachOther) {
  const auto violations = base_.Violations(P("Absolute Alcohol+PVA+Lipiodol"));
  ASSERT_EQ(violations.size(), 1u);
  EXPECT_EQ(violations[0].rule, "alcohol_excludes_pva");
  EXPECT_EQ(violations[0].reason, "Absolute Alcohol and PVA exclude each other");
}

TEST_F(ActionBaseTest, PvaAndGelatinSpongeExcludeEachOther) {
  const auto violations = base_.Violations(P("Gelatin Sponge+PVA+Lipiodol"));
  ASSERT_EQ(violations.size(), 1u);
  EXPECT_EQ(violations[0].rule, "pva_excludes_gelatin_sponge");
  EXPECT_EQ(violations[0].reason, "PVA and Gelatin Sponge exclude each other");
}

TEST_F(ActionBaseTest, ExclusionIsNotTransitive) {
  // Alcohol excludes PVA and PVA excludes gelatin sponge, but alcohol and sponge may combine.
  EXPECT_TRUE(Broken(P("Absolute Alcohol+Gelatin Sponge+Lipiodol")).empty());
}

TEST_F(ActionBaseTest, CtaceRequiresLipiodol) {
  const auto violations = base_.Violations(P("Epirubicin+PVA"));
  ASSERT_EQ(violations.size(), 1u);
  EXPECT_EQ(violations[0].rule, "protocol.cTACE.mandatory");
  EXPECT_EQ(violations[0].reason, "protocol cTACE requires Lipiodol, which the plan lacks");
  EXPECT_EQ(Broken(P("none")), (std::vector<std::string>{"protocol.cTACE.mandatory"}));
  // The default protocol is cTACE; an empty protocol checks no mandatory items.
  EXPECT_EQ(base_.Violations(P("Epirubicin")).size(), 1u);
  EXPECT_TRUE(Broken(P("Epirubicin+PVA"), "").empty());
  EXPECT_TRUE(Broken(P("none"), "").empty());
}

TEST_F(ActionBaseTest, CatchesEveryRule) {
  const Plan plan =
      P("Cisplatin+Oxaliplatin+Epirubicin+Idarubicin+PVA+Absolute Alcohol+"
        "Gelatin Sponge");
  EXPECT_EQ(Broken(plan),
            (std::vector<std::string>{"one_platinum", "one_anthracycline", "alcohol_excludes_pva",
                                      "pva_excludes_gelatin_sponge", "protocol.cTACE.mandatory"}));

  const Status status = base_.Validate(plan);
  ASSERT_FALSE(status.has_value());
  EXPECT_EQ(status.error().code, ErrorCode::kRuleViolation);
  const std::string& m = status.error().message;
  EXPECT_EQ(std::count(m.begin(), m.end(), '\n'), 5) << m;
  EXPECT_EQ(m.rfind("plan Absolute Alcohol+Cisplatin+Epirubicin+Gelatin Sponge+Idarubicin+"
                    "Oxaliplatin+PVA breaks 5 rules:\n",
                    0),
            0u)
      << m;
  EXPECT_NE(m.find("\none_platinum: at most 1 platinum drug allowed, plan has 2 "
                   "(Cisplatin, Oxaliplatin)"),
            std::string::npos);
  EXPECT_NE(m.find("\nprotocol.cTACE.mandatory: protocol cTACE requires Lipiodol"),
            std::string::npos);
}

TEST_F(ActionBaseTest, FlagsItemsTheActionBaseDoesNotKnow) {
  const auto violations = base_.Violations(Plan({"Aspirin", "Lipiodol"}));
  ASSERT_EQ(violations.size(), 1u);
  EXPECT_EQ(violations[0].rule, "unknown_item");
  EXPECT_NE(violations[0].reason.find("'Aspirin' is not in the action base"), std::string::npos);

  // Known rules still apply to the known items.
  EXPECT_EQ(Broken(Plan({"Cisplatin", "Nedaplatin", "Radium"})),
            (std::vector<std::string>{"unknown_item", "one_platinum", "protocol.cTACE.mandatory"}));
  EXPECT_FALSE(base_.Validate(Plan({"Aspirin", "Lipiodol"})).has_value());
}

TEST_F(ActionBaseTest, FlagsAliasesInAPlanBuiltWithoutTheActionBase) {
  // A Plan constructed directly keeps whatever it was given; Violations resolves the alias for
  // the rules but reports that the plan is not canonical.
  EXPECT_EQ(Broken(Plan({"THP", "Lipiodol"})), (std::vector<std::string>{"non_canonical_item"}));
  EXPECT_EQ(Broken(Plan({"THP", "Epirubicin", "Lipiodol"})),
            (std::vector<std::string>{"non_canonical_item", "one_anthracycline"}));
  // The same drug under two names is one drug.
  EXPECT_EQ(Broken(Plan({"THP", "Pirarubicin", "Lipiodol"})),
            (std::vector<std::string>{"non_canonical_item"}));
}

TEST_F(ActionBaseTest, UnknownProtocolIsReported) {
  EXPECT_EQ(Broken(P("Lipiodol"), "bTACE"), (std::vector<std::string>{"unknown_protocol"}));
  auto mandatory = base_.MandatoryItems("bTACE");
  ASSERT_FALSE(mandatory.has_value());
  EXPECT_EQ(mandatory.error().code, ErrorCode::kNotFound);
  EXPECT_EQ(mandatory.error().message, "unknown protocol 'bTACE' (defined: cTACE)");
  EXPECT_EQ(*base_.MandatoryItems("ctace"), (std::vector<std::string>{"Lipiodol"}));
}

TEST_F(ActionBaseTest, EditDistanceIsCaseInsensitiveLevenshtein) {
  EXPECT_EQ(EditDistance("kitten", "sitting"), 3u);
  EXPECT_EQ(EditDistance("Cisplatin", "cisplatin"), 0u);
  EXPECT_EQ(EditDistance("", "PVA"), 3u);
  EXPECT_EQ(EditDistance("PVA", ""), 3u);
  EXPECT_EQ(EditDistance("Cisplatn", "Cisplatin"), 1u);
  EXPECT_EQ(EditDistance("abc", "cab"), 2u);
}

// ---------------------------------------------------------------------------------------------
// Institution files

TEST_F(ActionBaseTest, LoadsACustomInstitutionActionBase) {
  auto loaded = ActionBase::FromToml(kCustom, "custom.toml");
  ASSERT_TRUE(loaded.has_value()) << loaded.error().ToString();
  const ActionBase& custom = *loaded;
  EXPECT_EQ(custom.Drugs(), (std::vector<std::string>{"Cisplatin", "Doxorubicin", "Carboplatin"}));
  EXPECT_EQ(custom.Embolics(), (std::vector<std::string>{"Drug-Eluting Beads", "Lipiodol"}));
  EXPECT_EQ(custom.Protocols(), (std::vector<std::string>{"DEB-TACE", "cTACE"}));
  EXPECT_EQ(custom.Find("adriamycin")->name, "Doxorubicin");
  EXPECT_EQ(custom.Find("Epirubicin").error().code, ErrorCode::kNotFound);

  auto plan = custom.ParsePlan("DOX+DEB");
  ASSERT_TRUE(plan.has_value());
  EXPECT_TRUE(custom.Violations(*plan, "DEB-TACE").empty());
  // This institution forbids platinum, keeps beads and oil apart, and has its own protocol.
  auto bad = custom.ParsePlan("CDDP+DEB+Lipiodol");
  ASSERT_TRUE(bad.has_value());
  const auto violations = custom.Violations(*bad, "DEB-TACE");
  ASSERT_EQ(violations.size(), 2u);
  EXPECT_EQ(violations[0].rule, "no_platinum");
  EXPECT_EQ(violations[0].reason, "no platinum drug allowed, plan has 1 (Cisplatin)");
  EXPECT_EQ(violations[1].rule, "beads_or_oil");
  EXPECT_EQ(violations[1].reason, "Drug-Eluting Beads and Lipiodol exclude each other");
  EXPECT_EQ(custom.Violations(*plan, "cTACE")[0].rule, "protocol.cTACE.mandatory");
}

TEST_F(ActionBaseTest, ClassLimitAboveOneAndExclusionOfThree) {
  const std::string text = R"(version = 1
[[drug]]
name = "A"
class = "x"
[[drug]]
name = "B"
class = "x"
[[drug]]
name = "C"
class = "x"
[[embolic]]
name = "E1"
[[embolic]]
name = "E2"
[[embolic]]
name = "E3"
[[rule.class_limit]]
id = "two_x"
class = "x"
max = 2
[[rule.exclusive]]
id = "one_embolic"
items = ["E1", "E2", "E3"]
)";
  auto loaded = ActionBase::FromToml(text, "three.toml");
  ASSERT_TRUE(loaded.has_value()) << loaded.error().ToString();
  EXPECT_TRUE(loaded->Protocols().empty());
  EXPECT_TRUE(loaded->Violations(Plan({"A", "B", "E2"}), "").empty());
  const auto v = loaded->Violations(Plan({"A", "B", "C", "E1", "E3"}), "");
  ASSERT_EQ(v.size(), 2u);
  EXPECT_EQ(v[0].reason, "at most 2 x drugs allowed, plan has 3 (A, B, C)");
  EXPECT_EQ(v[1].reason, "at most one of E1, E2, E3 allowed, plan has E1, E3");
}

TEST_F(ActionBaseTest, LoadsFromAFile) {
  const std::string path = ::testing::TempDir() + "/action_base_test_custom.toml";
  {
    std::ofstream out(path);
    out << kCustom;
  }
  auto loaded = ActionBase::Load(path);
  ASSERT_TRUE(loaded.has_value()) << loaded.error().ToString();
  EXPECT_EQ(loaded->items().size(), 5u);
  std::remove(path.c_str());

  auto missing = ActionBase::Load(::testing::TempDir() + "/no_such_actions.toml");
  ASSERT_FALSE(missing.has_value());
  EXPECT_EQ(missing.error().code, ErrorCode::kNotFound);
}

TEST_F(ActionBaseTest, RejectsUnknownKeyWithItsLine) {
  const std::string text = Edit("class = \"anthracycline\"", "clas = \"anthracycline\"");
  EXPECT_EQ(LoadError(text),
            At(text, "clas =") + ": unknown key drug[1].clas (allowed: aliases, class, name)");

  const std::string top = Edit("version = 1", "version = 1\nauthor = \"me\"");
  EXPECT_EQ(LoadError(top), At(top, "author") +
                                ": unknown key author (allowed: drug, embolic, protocol, rule, "
                                "version)");
  const std::string rule = Edit("[[rule.exclusive]]", "[[rule.exclusve]]");
  EXPECT_NE(LoadError(rule).find(At(rule, "[[rule.exclusve]]") + ": unknown key rule.exclusve"),
            std::string::npos)
      << LoadError(rule);
  // Embolics have no class.
  const std::string embolic = Edit("name = \"Lipiodol\"", "name = \"Lipiodol\"\nclass = \"oil\"");
  EXPECT_EQ(LoadError(embolic), At(embolic, "class = \"oil\"") +
                                    ": unknown key embolic[1].class (allowed: aliases, "
                                    "name)");
}

TEST_F(ActionBaseTest, RejectsDuplicateItemNamesIgnoringCase) {
  const std::string text = Edit("name = \"Carboplatin\"", "name = \"cisplatin\"");
  const std::string message = LoadError(text);
  EXPECT_EQ(message.rfind(At(text, "\"cisplatin\"") +
                              ": drug[2].name 'cisplatin' is already "
                              "defined at " +
                              At(kCustom, "\"Cisplatin\"") + " as 'Cisplatin'",
                          0),
            0u)
      << message;
}

TEST_F(ActionBaseTest, RejectsAliasThatClashesWithAnotherName) {
  const std::string text = Edit("aliases = [\"DEB\"]", "aliases = [\"DEB\", \"dox\"]");
  const std::string message = LoadError(text);
  EXPECT_EQ(message.rfind(At(text, "\"dox\"") +
                              ": embolic[0].aliases 'dox' is already defined "
                              "at " +
                              At(text, "\"DOX\"") + " as 'DOX'",
                          0),
            0u)
      << message;
}

TEST_F(ActionBaseTest, RejectsReservedOrMalformedNames) {
  EXPECT_NE(LoadError(Edit("name = \"Lipiodol\"", "name = \"None\"")).find("is reserved"),
            std::string::npos);
  EXPECT_NE(LoadError(Edit("name = \"Lipiodol\"", "name = \"Oil+Beads\"")).find("'+'"),
            std::string::npos);
  EXPECT_NE(LoadError(Edit("name = \"Lipiodol\"", "name = \"\"")).find("must not be empty"),
            std::string::npos);
  EXPECT_NE(LoadError(Edit("name = \"Lipiodol\"", "name = \" Lipiodol\"")).find("blanks"),
            std::string::npos);
}

TEST_F(ActionBaseTest, RejectsRuleReferencingUnknownItem) {
  const std::string text =
      Edit("items = [\"DEB\", \"lipiodol\"]", "items = [\"DEB\", \"lipidol\"]");
  EXPECT_EQ(LoadError(text), At(text, "items =") +
                                 ": rule.exclusive[0].items names unknown item 'lipidol' (did "
                                 "you mean 'Lipiodol'?)");

  const std::string protocol = Edit("mandatory = [\"Lipiodol\"]", "mandatory = [\"Gelfoam\"]");
  EXPECT_NE(LoadError(protocol).find(At(protocol, "\"Gelfoam\"") +
                                     ": protocol.cTACE.mandatory names unknown item 'Gelfoam'"),
            std::string::npos)
      << LoadError(protocol);
}

TEST_F(ActionBaseTest, RejectsRuleReferencingUnknownClass) {
  const std::string text = Edit("class = \"platinum\"\nmax", "class = \"platinium\"\nmax");
  EXPECT_EQ(LoadError(text), At(text, "platinium") +
                                 ": rule.class_limit[0].class 'platinium' is not the class of "
                                 "any drug (classes: platinum, anthracycline)");
}

TEST_F(ActionBaseTest, RejectsNegativeMax) {
  const std::string text = Edit("max = 0", "max = -1");
  EXPECT_EQ(LoadError(text),
            At(text, "max = -1") + ": rule.class_limit[0].max must be >= 0 (got -1)");
}

TEST_F(ActionBaseTest, RejectsWrongTypes) {
  const std::string name = Edit("name = \"Doxorubicin\"", "name = 5");
  EXPECT_EQ(LoadError(name),
            At(name, "name = 5") + ": drug[1].name must be a string (got integer 5)");
  const std::string aliases = Edit("aliases = [\"CDDP\"]", "aliases = \"CDDP\"");
  EXPECT_EQ(LoadError(aliases), At(aliases, "aliases = \"CDDP\"") +
                                    ": drug[0].aliases must be an array of strings (got string "
                                    "\"CDDP\")");
  const std::string drug = "version = 1\ndrug = \"Cisplatin\"\n";
  EXPECT_EQ(LoadError(drug),
            "custom.toml:2: drug must be an array of tables, [[drug]] (got string "
            "\"Cisplatin\")");
  const std::string max = Edit("max = 0", "max = \"one\"");
  EXPECT_EQ(
      LoadError(max),
      At(max, "max = ") + ": rule.class_limit[0].max must be an integer (got string \"one\")");
}

TEST_F(ActionBaseTest, RejectsMissingRequiredKeys) {
  const std::string text = Edit("name = \"Doxorubicin\"\n", "");
  const std::string message = LoadError(text);
  EXPECT_NE(message.find("missing required key drug[1].name"), std::string::npos) << message;
  EXPECT_NE(LoadError(Edit("version = 1\n", "")).find("missing required key version"),
            std::string::npos);
}

TEST_F(ActionBaseTest, RejectsDuplicateRuleIds) {
  const std::string text = Edit("id = \"beads_or_oil\"", "id = \"no_platinum\"");
  EXPECT_EQ(LoadError(text), At(text, "id = \"no_platinum\"\nitems") +
                                 ": rule id 'no_platinum' is already used at " +
                                 At(text, "id = \"no_platinum\""));
}

TEST_F(ActionBaseTest, RejectsRuleIdsReservedForBuiltInChecks) {
  const std::string text = Edit("id = \"beads_or_oil\"", "id = \"unknown_item\"");
  EXPECT_EQ(LoadError(text), At(text, "unknown_item") +
                                 ": rule id 'unknown_item' is reserved for mewm's own checks");
}

TEST_F(ActionBaseTest, RejectsExclusionOfFewerThanTwoItems) {
  const std::string text =
      Edit("items = [\"DEB\", \"lipiodol\"]", "items = [\"DEB\", \"Drug-Eluting Beads\"]");
  EXPECT_EQ(LoadError(text), At(text, "items =") +
                                 ": rule.exclusive[0].items must name at least 2 different items "
                                 "(got 1)");
}

TEST_F(ActionBaseTest, RejectsUnsupportedVersion) {
  auto loaded = ActionBase::FromToml(Edit("version = 1", "version = 2"), "custom.toml");
  ASSERT_FALSE(loaded.has_value());
  EXPECT_EQ(loaded.error().code, ErrorCode::kUnsupported);
  EXPECT_EQ(loaded.error().message,
            "custom.toml:2: version 2 is not supported (this mewm reads version 1)");
}

TEST_F(ActionBaseTest, RejectsTomlSyntaxErrorsWithLineAndColumn) {
  auto loaded = ActionBase::FromToml(Edit("max = 0", "max = "), "custom.toml");
  ASSERT_FALSE(loaded.has_value());
  EXPECT_EQ(loaded.error().code, ErrorCode::kParse);
  const std::string prefix = At(kCustom, "max = 0") + ":";
  EXPECT_EQ(loaded.error().message.rfind(prefix, 0), 0u) << loaded.error().message;

  // TOML itself rejects a repeated key.
  auto repeated = ActionBase::FromToml(Edit("max = 0", "max = 0\nmax = 1"), "custom.toml");
  ASSERT_FALSE(repeated.has_value());
  EXPECT_EQ(repeated.error().code, ErrorCode::kParse);
}

TEST_F(ActionBaseTest, RejectsProtocolNamesDifferingOnlyInCase) {
  const std::string text =
      Edit("[protocol.cTACE]", "[protocol.ctace]\nmandatory = []\n[protocol.cTACE]");
  const std::string message = LoadError(text);
  EXPECT_NE(message.find("is already defined at"), std::string::npos) << message;
}

}  // namespace
}  // namespace mewm

// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/policy/guideline.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "../core/test_env.h"
#include "mewm/tace/pharmacology.h"

namespace mewm::policy {
namespace {

class GuidelinePolicyTest : public testing::VdbTest {
 protected:
  /// A 32 mm cube of liver (55 HU) holding a sphere of `radius_mm` at `tumor_hu`. The recorded
  /// max diameter is `diameter_mm` (0: not recorded, so the policy measures it).
  static PatientCase Case(double radius_mm, float tumor_hu, double diameter_mm) {
    const Geometry g = Geometry::Isotropic(1.0);
    PatientCase c{"G1", Volume(g, Index3{32, 32, 32}, "ct"), LabelVolume(g, {32, 32, 32}, "tumor"),
                  std::nullopt, Covariates{}};
    for (int k = 0; k < 32; ++k)
      for (int j = 0; j < 32; ++j)
        for (int i = 0; i < 32; ++i) {
          const double r = std::sqrt((i - 15.5) * (i - 15.5) + (j - 15.5) * (j - 15.5) +
                                     (k - 15.5) * (k - 15.5));
          const bool inside = r < radius_mm;
          c.ct.SetValue(i, j, k, inside ? tumor_hu : 55.0f);
          if (inside) c.tumor.SetValue(i, j, k, 1);
        }
    c.covariates.age_years = 62;
    c.covariates.max_diameter_mm = diameter_mm;
    return c;
  }
  static PatientCase Large() { return Case(12.0, 130.0f, 62.0); }
  static PatientCase Small() { return Case(8.0, 70.0f, 0.0); }

  static std::unique_ptr<GuidelinePolicy> Policy(
      const ActionBase& actions = ActionBase::Default()) {
    auto policy = GuidelinePolicy::Create(actions);
    EXPECT_TRUE(policy) << policy.error().ToString();
    return policy ? std::move(*policy) : nullptr;
  }
  static std::size_t Rank(const std::vector<std::string>& list, const std::string& item) {
    return std::size_t(std::find(list.begin(), list.end(), item) - list.begin());
  }
};

TEST_F(GuidelinePolicyTest, ProposesValidItemsWithinLimitsLipiodolFirst) {
  const ActionBase& actions = ActionBase::Default();
  auto policy = Policy();
  EXPECT_EQ(policy->name(), "guideline");
  for (const PatientCase& c : {Large(), Small()}) {
    auto p = policy->Propose(c);
    ASSERT_TRUE(p) << p.error().ToString();
    EXPECT_GE(p->drugs.size(), 2u);
    EXPECT_LE(p->drugs.size(), 5u);
    EXPECT_LE(p->embolics.size(), 4u);
    ASSERT_FALSE(p->embolics.empty());
    EXPECT_EQ(p->embolics.front(), "Lipiodol");
    for (const auto& d : p->drugs) EXPECT_EQ(actions.Find(d)->kind, ItemKind::kDrug) << d;
    for (const auto& e : p->embolics) EXPECT_EQ(actions.Find(e)->kind, ItemKind::kEmbolic) << e;
    auto canonical = CanonicalizeProposal(*p, actions);
    ASSERT_TRUE(canonical);
    EXPECT_EQ(canonical->drugs, p->drugs);
    EXPECT_FALSE(p->rationale.empty());
    EXPECT_TRUE(p->raw_output.empty());
  }
}

TEST_F(GuidelinePolicyTest, TumorSizeAndVascularityOrderTheEmbolics) {
  auto policy = Policy();
  auto large = policy->Propose(Large());
  ASSERT_TRUE(large) << large.error().ToString();
  const std::size_t permanent =
      std::min(Rank(large->embolics, "PVA"), Rank(large->embolics, "NBCA"));
  EXPECT_LT(permanent, Rank(large->embolics, "Gelatin Sponge"));
  EXPECT_NE(large->rationale.find("62 mm hypervascular tumor: permanent embolics preferred"),
            std::string::npos)
      << large->rationale;

  auto small = policy->Propose(Small());
  ASSERT_TRUE(small) << small.error().ToString();
  ASSERT_GE(small->embolics.size(), 2u);
  EXPECT_EQ(small->embolics[1], "Gelatin Sponge");
  EXPECT_NE(small->rationale.find("gelatin sponge first"), std::string::npos) << small->rationale;
}

TEST_F(GuidelinePolicyTest, PoorReserveExcludesAlcoholAndToxicDrugs) {
  auto policy = Policy();
  PatientCase a = Small();
  auto good = policy->Propose(a);
  ASSERT_TRUE(good);
  EXPECT_NE(Rank(good->embolics, "Absolute Alcohol"), good->embolics.size());

  PatientCase b = Small();
  b.covariates.child_pugh = 'B';
  auto poor = policy->Propose(b);
  ASSERT_TRUE(poor) << poor.error().ToString();
  EXPECT_EQ(Rank(poor->embolics, "Absolute Alcohol"), poor->embolics.size());
  for (const auto& d : {"Cisplatin", "Idarubicin", "Mitomycin"}) {
    EXPECT_EQ(Rank(poor->drugs, d), poor->drugs.size()) << d;
  }
  for (std::size_t n = 1; n < poor->drugs.size(); ++n) {
    EXPECT_LE(PhysicsOf(poor->drugs[n - 1])->toxicity, PhysicsOf(poor->drugs[n])->toxicity);
  }
  EXPECT_NE(poor->rationale.find("Child-Pugh B: alcohol excluded"), std::string::npos)
      << poor->rationale;
}

TEST_F(GuidelinePolicyTest, HighAfpPutsAnthracyclinesFirst) {
  PatientCase c = Large();
  c.covariates.afp_ng_ml = 812;
  auto p = Policy()->Propose(c);
  ASSERT_TRUE(p);
  EXPECT_EQ(ActionBase::Default().Find(p->drugs.front())->drug_class, "anthracycline");
  EXPECT_NE(p->rationale.find("AFP 812 ng/mL"), std::string::npos) << p->rationale;
}

TEST_F(GuidelinePolicyTest, SamePatientGivesTheSameProposal) {
  auto policy = Policy();
  PatientCase c = Large();
  c.covariates.age_years = 80;
  auto first = policy->Propose(c);
  auto second = policy->Propose(c);
  ASSERT_TRUE(first && second);
  EXPECT_EQ(first->drugs, second->drugs);
  EXPECT_EQ(first->embolics, second->embolics);
  EXPECT_EQ(first->rationale, second->rationale);
}

TEST_F(GuidelinePolicyTest, InvalidPatientAndConfigAreErrors) {
  PatientCase c = Small();
  c.tumor = LabelVolume(c.ct.geometry(), c.ct.extent(), "tumor");
  auto p = Policy()->Propose(c);
  ASSERT_FALSE(p);
  EXPECT_EQ(p.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(p.error().message.find("patient 'G1'"), std::string::npos) << p.error().message;

  GuidelineConfig config;
  config.max_drugs = 1;
  auto bad = GuidelinePolicy::Create(ActionBase::Default(), config);
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("max_drugs"), std::string::npos);
}

TEST_F(GuidelinePolicyTest, ConfigLimitsTheLists) {
  GuidelineConfig config;
  config.max_drugs = 2;
  config.max_embolics = 1;
  auto policy = GuidelinePolicy::Create(ActionBase::Default(), config);
  ASSERT_TRUE(policy);
  auto p = (*policy)->Propose(Large());
  ASSERT_TRUE(p);
  EXPECT_EQ(p->drugs.size(), 2u);
  EXPECT_EQ(p->embolics, (std::vector<std::string>{"Lipiodol"}));
}

TEST_F(GuidelinePolicyTest, FirstChoicePlanIsValidAndRespectsHorizons) {
  const ActionBase& actions = ActionBase::Default();
  auto policy = Policy();
  for (const PatientCase& c : {Large(), Small()}) {
    auto p = policy->Propose(c);
    ASSERT_TRUE(p);
    for (int drugs : {0, 1, 2, 3}) {
      for (int embolics : {1, 2, 3}) {
        auto plan = FirstChoicePlan(*p, actions, drugs, embolics);
        ASSERT_TRUE(plan) << plan.error().ToString();
        EXPECT_TRUE(actions.Validate(*plan)) << plan->ToString();
        EXPECT_TRUE(plan->Contains("Lipiodol"));
        int n_drugs = 0, n_embolics = 0;
        for (const auto& item : plan->items()) {
          ++(actions.Find(item)->kind == ItemKind::kDrug ? n_drugs : n_embolics);
        }
        EXPECT_EQ(n_drugs, drugs) << plan->ToString();  // the proposals span >= 3 classes
        EXPECT_LE(n_embolics, embolics) << plan->ToString();
      }
    }
    // The first drug of the proposal is always in the plan.
    EXPECT_TRUE(FirstChoicePlan(*p, actions, 2, 2)->Contains(p->drugs.front()));
  }
  auto p = *policy->Propose(Large());
  EXPECT_EQ(FirstChoicePlan(p, actions, -1, 2).error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(FirstChoicePlan(p, actions, 2, -1).error().code, ErrorCode::kInvalidArgument);
  // Lipiodol alone already exceeds an embolic horizon of 0 under cTACE.
  EXPECT_EQ(FirstChoicePlan(p, actions, 2, 0).error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(FirstChoicePlan(p, actions, 2, 2, "TARE").error().code, ErrorCode::kNotFound);
}

const char* const kSmallBase = R"(version = 1
[[drug]]
name = "Doxorubicin"
class = "anthracycline"
[[drug]]
name = "Oxaliplatin"
class = "platinum"
[[drug]]
name = "Raltitrexed"
class = "antimetabolite"
[[embolic]]
name = "Lipiodol"
[[embolic]]
name = "Drug-Eluting Beads"
aliases = ["DEB"]
[[embolic]]
name = "Gelatin Sponge"
[[rule.exclusive]]
id = "beads_exclude_sponge"
items = ["Drug-Eluting Beads", "Gelatin Sponge"]
[protocol.cTACE]
mandatory = ["Lipiodol"]
)";

TEST_F(GuidelinePolicyTest, WorksWithACustomActionBaseWithoutAlcohol) {
  auto actions = ActionBase::FromToml(kSmallBase, "small.toml");
  ASSERT_TRUE(actions) << actions.error().ToString();
  auto policy = Policy(*actions);
  PatientCase c = Small();
  c.covariates.child_pugh = 'B';
  auto p = policy->Propose(c);
  ASSERT_TRUE(p) << p.error().ToString();
  // Doxorubicin has no known toxicity, so poor reserve drops it.
  EXPECT_EQ(p->drugs, (std::vector<std::string>{"Raltitrexed", "Oxaliplatin"}));
  EXPECT_EQ(p->embolics,
            (std::vector<std::string>{"Lipiodol", "Gelatin Sponge", "Drug-Eluting Beads"}));
  EXPECT_EQ(p->rationale.find("alcohol"), std::string::npos) << p->rationale;
  auto plan = FirstChoicePlan(*p, *actions, 2, 3);
  ASSERT_TRUE(plan) << plan.error().ToString();
  EXPECT_EQ(plan->ToString(), "Gelatin Sponge+Lipiodol+Oxaliplatin+Raltitrexed");
}

}  // namespace
}  // namespace mewm::policy

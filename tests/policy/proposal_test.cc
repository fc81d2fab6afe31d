// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include <gtest/gtest.h>

#include "mewm/policy/policy_model.h"

namespace mewm::policy {
namespace {

TEST(ProposalTest, AliasesAndCaseBecomeCanonicalNames) {
  Proposal p{{"thp", "cisplatin"}, {"lipiodol", "Gelatin Sponge"}, "test", ""};
  auto c = CanonicalizeProposal(p, ActionBase::Default());
  ASSERT_TRUE(c) << c.error().ToString();
  EXPECT_EQ(c->drugs, (std::vector<std::string>{"Pirarubicin", "Cisplatin"}));
  EXPECT_EQ(c->embolics, (std::vector<std::string>{"Lipiodol", "Gelatin Sponge"}));
  EXPECT_EQ(c->rationale, "test");
}

TEST(ProposalTest, UnknownMisplacedAndRepeatedItemsAreErrors) {
  const ActionBase& actions = ActionBase::Default();
  auto unknown = CanonicalizeProposal(Proposal{{"Cisplatn"}, {}, "", ""}, actions);
  ASSERT_FALSE(unknown);
  EXPECT_NE(unknown.error().message.find("Cisplatin"), std::string::npos);
  auto misplaced = CanonicalizeProposal(Proposal{{"PVA"}, {}, "", ""}, actions);
  ASSERT_FALSE(misplaced);
  EXPECT_NE(misplaced.error().message.find("'PVA' as a drug"), std::string::npos);
  auto twice = CanonicalizeProposal(Proposal{{"THP", "Pirarubicin"}, {}, "", ""}, actions);
  ASSERT_FALSE(twice);
  EXPECT_NE(twice.error().message.find("more than once"), std::string::npos);
}

}  // namespace
}  // namespace mewm::policy

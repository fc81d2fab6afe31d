// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Both sides of MEWM_ASSERT in one test binary: this file switches the checks on for itself.
#define MEWM_ENABLE_ASSERTS 1
#include "mewm/core/assert.h"

#include <gtest/gtest.h>

namespace mewm {
namespace {

TEST(AssertTest, ABrokenInvariantThrowsNamingTheConditionAndPlace) {
  int evaluated = 0;
  EXPECT_NO_THROW(MEWM_ASSERT(++evaluated == 1, "never shown"));
  EXPECT_EQ(evaluated, 1);
  try {
    MEWM_ASSERT(evaluated == 2, "one outcome per request (got " + std::to_string(evaluated) + ")");
    FAIL() << "no throw";
  } catch (const InvariantError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("assert_test.cc:"), std::string::npos) << what;
    EXPECT_NE(what.find("`evaluated == 2`"), std::string::npos) << what;
    EXPECT_NE(what.find("one outcome per request (got 1)"), std::string::npos) << what;
  }
}

}  // namespace
}  // namespace mewm

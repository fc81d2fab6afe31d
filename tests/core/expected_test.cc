// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/core/expected.h"

#include <gtest/gtest.h>

#include <memory>

namespace mewm {
namespace {

Expected<int> Half(int x) {
  if (x % 2 != 0) return MakeError(ErrorCode::kInvalidArgument, "odd: " + std::to_string(x));
  return x / 2;
}

Expected<int> Quarter(int x) {
  MEWM_TRY(const int h, Half(x));
  MEWM_TRY(const int q, Half(h));
  return q;
}

Status CheckEven(int x) {
  MEWM_RETURN_IF_ERROR(Half(x));
  return {};
}

TEST(ExpectedTest, TryPropagatesTheFirstError) {
  EXPECT_EQ(*Quarter(8), 2);
  auto r = Quarter(6);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().message, "odd: 3");
  EXPECT_EQ(r.error().ToString(), "invalid_argument: odd: 3");
  EXPECT_TRUE(CheckEven(4));
  EXPECT_FALSE(CheckEven(5));
}

TEST(ExpectedTest, HoldsMoveOnlyValuesAndAddsContext) {
  Expected<std::unique_ptr<int>> p = std::make_unique<int>(5);
  ASSERT_TRUE(p);
  std::unique_ptr<int> owned = std::move(p).value();
  EXPECT_EQ(*owned, 5);
  const Error e = Error{ErrorCode::kNotFound, "grid 'x'"}.WithContext("a.vdb");
  EXPECT_EQ(e.message, "a.vdb: grid 'x'");
  EXPECT_STREQ(ErrorCodeName(ErrorCode::kMismatch), "mismatch");
}

}  // namespace
}  // namespace mewm

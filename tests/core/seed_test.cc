// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/core/seed.h"

#include <gtest/gtest.h>

#include <cmath>
#include <set>

namespace mewm {
namespace {

TEST(SeedTest, SameSeedSameStream) {
  Rng a(42), b(42), c(43);
  for (int n = 0; n < 100; ++n) {
    const auto x = a.NextU64();
    EXPECT_EQ(x, b.NextU64());
    EXPECT_NE(x, c.NextU64());
  }
}

TEST(SeedTest, StreamIsPinnedAcrossPlatformsAndVersions) {
  // Changing these values changes every synthetic cohort: bump the generator version if you must.
  Rng rng(2025);
  EXPECT_EQ(rng.NextU64(), 2869101020798802909ULL);
  EXPECT_EQ(DeriveSeed(1, {2, 3}), 105800997263431414ULL);
  EXPECT_EQ(HashString("P001"), 16998089243624684578ULL);
}

TEST(SeedTest, DerivedSeedsDependOnEveryLabelAndItsOrder) {
  std::set<std::uint64_t> seeds = {DeriveSeed(7, {1, 2}), DeriveSeed(7, {2, 1}),
                                   DeriveSeed(7, {1}),    DeriveSeed(8, {1, 2}),
                                   DeriveSeed(7, "P001"), DeriveSeed(7, "P002")};
  EXPECT_EQ(seeds.size(), 6u);
}

TEST(SeedTest, DistributionsHaveTheRightMoments) {
  Rng rng(1);
  double sum = 0, sum_sq = 0, usum = 0;
  const int n = 200000;
  for (int i = 0; i < n; ++i) {
    const double z = rng.Normal();
    sum += z;
    sum_sq += z * z;
    usum += rng.Uniform();
  }
  EXPECT_NEAR(sum / n, 0.0, 0.01);
  EXPECT_NEAR(sum_sq / n, 1.0, 0.02);
  EXPECT_NEAR(usum / n, 0.5, 0.005);
  for (int i = 0; i < 1000; ++i) {
    const auto k = rng.UniformInt(-2, 3);
    EXPECT_GE(k, -2);
    EXPECT_LE(k, 3);
  }
}

}  // namespace
}  // namespace mewm

// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/core/geometry.h"

#include <gtest/gtest.h>

#include <Eigen/Geometry>
#include <cmath>

namespace mewm {
namespace {

Geometry ObliqueAnisotropic() {
  Geometry g;
  g.spacing = Eigen::Vector3d(0.7, 1.3, 2.5);
  g.origin = Eigen::Vector3d(-120.5, 33.0, 410.25);
  g.direction = (Eigen::AngleAxisd(0.3, Eigen::Vector3d::UnitZ()) *
                 Eigen::AngleAxisd(-0.2, Eigen::Vector3d::UnitX()))
                    .toRotationMatrix();
  return g;
}

TEST(GeometryTest, IndexWorldIndexRoundTripsForObliqueAnisotropicGrids) {
  const Geometry g = ObliqueAnisotropic();
  for (const Eigen::Vector3d& index :
       {Eigen::Vector3d(0, 0, 0), Eigen::Vector3d(10.5, -3, 99), Eigen::Vector3d(255, 255, 127)}) {
    const Eigen::Vector3d back = g.WorldToIndex(g.IndexToWorld(index));
    EXPECT_LT((back - index).norm(), 1e-9);
  }
}

TEST(GeometryTest, SpacingScalesDistancesAlongEachAxis) {
  const Geometry g = ObliqueAnisotropic();
  for (int a = 0; a < 3; ++a) {
    Eigen::Vector3d step = Eigen::Vector3d::Zero();
    step[a] = 1.0;
    EXPECT_NEAR((g.IndexToWorld(step) - g.IndexToWorld({0, 0, 0})).norm(), g.spacing[a], 1e-12);
  }
}

TEST(GeometryTest, AffineRoundTripsThroughFromAffine) {
  const Geometry g = ObliqueAnisotropic();
  auto back = Geometry::FromAffine(g.Affine());
  ASSERT_TRUE(back) << back.error().ToString();
  EXPECT_TRUE(back->ApproxEquals(g, 1e-12));
}

TEST(GeometryTest, ImproperDirectionIsKept) {
  Geometry g;
  g.direction = Eigen::Vector3d(1, 1, -1).asDiagonal();
  auto back = Geometry::FromAffine(g.Affine());
  ASSERT_TRUE(back);
  EXPECT_NEAR(back->direction.determinant(), -1.0, 1e-12);
}

TEST(GeometryTest, SingularAndShearedAffinesAreRejected) {
  Eigen::Matrix4d singular = Eigen::Matrix4d::Identity();
  singular(1, 1) = 0.0;
  auto s = Geometry::FromAffine(singular);
  ASSERT_FALSE(s);
  EXPECT_EQ(s.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(s.error().message.find("singular"), std::string::npos);

  Eigen::Matrix4d sheared = Eigen::Matrix4d::Identity();
  sheared(0, 1) = 0.5;
  auto h = Geometry::FromAffine(sheared);
  ASSERT_FALSE(h);
  EXPECT_NE(h.error().message.find("shear"), std::string::npos);

  Eigen::Matrix4d nan = Eigen::Matrix4d::Identity();
  nan(2, 3) = std::nan("");
  EXPECT_FALSE(Geometry::FromAffine(nan));
}

TEST(GeometryTest, ValidateRejectsBadSpacingAndDirection) {
  Geometry g;
  EXPECT_TRUE(g.Validate());
  g.spacing[1] = 0.0;
  EXPECT_FALSE(g.Validate());
  g = Geometry();
  g.direction(0, 1) = 0.3;
  EXPECT_FALSE(g.Validate());
  // Sizes and positions OpenVDB cannot invert, or no scanner makes, are refused; the bounds pass.
  for (const double spacing : {1e-300, 1e-4, 1e6, std::nan(""), HUGE_VAL}) {
    g = Geometry();
    g.spacing[2] = spacing;
    EXPECT_FALSE(g.Validate()) << spacing;
  }
  for (const double origin : {1e30, -2e9, std::nan("")}) {
    g = Geometry();
    g.origin[0] = origin;
    EXPECT_FALSE(g.Validate()) << origin;
  }
  g = Geometry();
  g.spacing = Eigen::Vector3d(Geometry::kMinSpacingMm, Geometry::kMaxSpacingMm, 0.5);
  g.origin = Eigen::Vector3d(-Geometry::kMaxOriginMm, Geometry::kMaxOriginMm, 0.0);
  EXPECT_TRUE(g.Validate());
}

}  // namespace
}  // namespace mewm

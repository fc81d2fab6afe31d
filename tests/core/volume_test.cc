// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/core/volume.h"

#include <gtest/gtest.h>

#include "test_env.h"

namespace mewm {
namespace {

class VolumeTest : public testing::VdbTest {
 protected:
  /// 20x16x12 CT with a 6x4x2 block of 50 HU at (5..10, 4..7, 3..4) in air.
  static DenseFloat BlockCt() {
    Geometry g;
    g.spacing = Eigen::Vector3d(1.0, 1.5, 2.0);
    g.origin = Eigen::Vector3d(-10, 5, 100);
    DenseFloat d({20, 16, 12}, g, -1000.0f);
    for (int k = 3; k <= 4; ++k)
      for (int j = 4; j <= 7; ++j)
        for (int i = 5; i <= 10; ++i) d.at(i, j, k) = 50.0f + float(i);
    return d;
  }
};

TEST_F(VolumeTest, AirIsInactiveBackground) {
  auto v = Volume::FromDense(BlockCt(), "ct");
  ASSERT_TRUE(v);
  EXPECT_EQ(v->ActiveVoxelCount(), 6 * 4 * 2);
  EXPECT_EQ(v->GetValue(0, 0, 0), -1000.0f);
  EXPECT_EQ(v->grid().background(), -1000.0f);
}

TEST_F(VolumeTest, DenseGridDenseRoundTripIsExact) {
  const DenseFloat d = BlockCt();
  auto v = Volume::FromDense(d, "ct");
  ASSERT_TRUE(v);
  const DenseFloat back = v->ToDense();
  EXPECT_EQ(back.dims, d.dims);
  EXPECT_EQ(back.data, d.data);
  EXPECT_TRUE(back.geometry.ApproxEquals(d.geometry));
}

TEST_F(VolumeTest, ActiveBoundingBoxAndStatistics) {
  auto v = Volume::FromDense(BlockCt(), "ct");
  ASSERT_TRUE(v);
  const IndexBox box = v->ActiveBoundingBox();
  EXPECT_EQ(box.min, (Index3{5, 4, 3}));
  EXPECT_EQ(box.max, (Index3{10, 7, 4}));
  const VolumeStats s = v->Statistics();
  EXPECT_EQ(s.active_voxels, 48);
  EXPECT_DOUBLE_EQ(s.min, 55.0);
  EXPECT_DOUBLE_EQ(s.max, 60.0);
  EXPECT_DOUBLE_EQ(s.mean, 57.5);
}

TEST_F(VolumeTest, EmptyVolumeHasEmptyBoxAndZeroStats) {
  Volume v(Geometry(), {4, 4, 4}, "ct");
  EXPECT_TRUE(v.ActiveBoundingBox().empty());
  EXPECT_EQ(v.Statistics().active_voxels, 0);
}

TEST_F(VolumeTest, SettingBackgroundDeactivatesVoxel) {
  Volume v(Geometry(), {4, 4, 4}, "ct");
  v.SetValue(1, 2, 3, 40.0f);
  EXPECT_EQ(v.ActiveVoxelCount(), 1);
  v.SetValue(1, 2, 3, -1000.0f);
  EXPECT_EQ(v.ActiveVoxelCount(), 0);
}

TEST_F(VolumeTest, TransformMatchesGeometry) {
  Geometry g;
  g.spacing = Eigen::Vector3d(0.8, 0.8, 3.0);
  g.origin = Eigen::Vector3d(1, 2, 3);
  g.direction = Eigen::Vector3d(-1, 1, 1).asDiagonal();
  Volume v(g, {8, 8, 8}, "ct");
  const openvdb::Vec3d w = v.grid().transform().indexToWorld(openvdb::Vec3d(2, 3, 4));
  const Eigen::Vector3d expected = g.IndexToWorld({2, 3, 4});
  EXPECT_NEAR(w.x(), expected.x(), 1e-9);
  EXPECT_NEAR(w.y(), expected.y(), 1e-9);
  EXPECT_NEAR(w.z(), expected.z(), 1e-9);
  auto back = GeometryFromTransform(v.grid().transform());
  ASSERT_TRUE(back);
  EXPECT_TRUE(back->ApproxEquals(g, 1e-9));
}

TEST_F(VolumeTest, FromDenseRejectsNanAndBadDims) {
  DenseFloat d = BlockCt();
  d.data[17] = std::nanf("");
  auto v = Volume::FromDense(d, "ct");
  ASSERT_FALSE(v);
  EXPECT_EQ(v.error().code, ErrorCode::kCorruptData);

  DenseFloat bad = BlockCt();
  bad.data.pop_back();
  EXPECT_FALSE(Volume::FromDense(bad, "ct"));
  bad.dims = {0, 1, 1};
  EXPECT_FALSE(Volume::FromDense(bad, "ct"));
}

TEST_F(VolumeTest, LabelWorldBoxCoversVoxelExtents) {
  DenseLabel d({10, 10, 10}, Geometry::Isotropic(2.0, {100, 0, 0}), 0);
  d.at(2, 3, 4) = 1;
  d.at(5, 3, 4) = 1;
  d.at(7, 7, 7) = 2;
  auto labels = LabelVolume::FromDense(d, "tumor");
  ASSERT_TRUE(labels);
  auto box = LabelWorldBox(*labels, 1);
  ASSERT_TRUE(box);
  EXPECT_NEAR(box->min.x(), 100 + 2 * 1.5, 1e-9);
  EXPECT_NEAR(box->max.x(), 100 + 2 * 5.5, 1e-9);
  EXPECT_NEAR(box->min.y(), 2 * 2.5, 1e-9);
  EXPECT_NEAR(box->max.z(), 2 * 4.5, 1e-9);
  EXPECT_EQ(CountLabel(*labels, 1), 2);
  EXPECT_EQ(CountLabel(*labels), 3);
  auto none = LabelWorldBox(*labels, 3);
  ASSERT_FALSE(none);
  EXPECT_EQ(none.error().code, ErrorCode::kNotFound);
}

}  // namespace
}  // namespace mewm

// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/core/crop.h"

#include <gtest/gtest.h>

#include <Eigen/Geometry>
#include <algorithm>
#include <cmath>
#include <limits>

#include "test_env.h"

namespace mewm {
namespace {

class CropTest : public testing::VdbTest {
 protected:
  /// A linear ramp CT (trilinear interpolation reproduces it exactly) inside a box of air.
  static Volume Ramp(const Geometry& g) {
    DenseFloat d({40, 40, 40}, g, -1000.0f);
    for (int k = 0; k < 40; ++k)
      for (int j = 0; j < 40; ++j)
        for (int i = 0; i < 40; ++i) d.at(i, j, k) = float(2 * i + 3 * j - k);
    return *Volume::FromDense(d, "ct");
  }
};

TEST_F(CropTest, CropAtVolumeSpacingOnVoxelCentresIsExact) {
  const Geometry g = Geometry::Isotropic(1.0, {5, 6, 7});
  const Volume v = Ramp(g);
  CropSpec spec{g.IndexToWorld({20, 21, 22}), {9, 9, 9}, Eigen::Vector3d::Constant(1.0)};
  auto crop = ExtractCrop(v, spec);
  ASSERT_TRUE(crop);
  // Crop centre index (4,4,4) lands on volume voxel (20,21,22).
  EXPECT_FLOAT_EQ(crop->at(4, 4, 4), float(2 * 20 + 3 * 21 - 22));
  EXPECT_FLOAT_EQ(crop->at(0, 8, 2), float(2 * 16 + 3 * 25 - 20));
}

TEST_F(CropTest, TrilinearReproducesALinearFieldAtOtherSpacingAndOrientation) {
  Geometry g = Geometry::Isotropic(1.0);
  g.direction = Eigen::AngleAxisd(0.4, Eigen::Vector3d(0, 0, 1)).toRotationMatrix();
  const Volume v = Ramp(g);
  CropSpec spec{g.IndexToWorld({19.3, 20.1, 18.7}), {11, 13, 9}, Eigen::Vector3d(1.5, 0.75, 2.0)};
  auto crop = ExtractCrop(v, spec);
  ASSERT_TRUE(crop);
  for (int k = 0; k < 9; ++k)
    for (int j = 0; j < 13; ++j)
      for (int i = 0; i < 11; ++i) {
        const Eigen::Vector3d idx =
            g.WorldToIndex(crop->geometry.IndexToWorld({double(i), double(j), double(k)}));
        EXPECT_NEAR(crop->at(i, j, k), 2 * idx[0] + 3 * idx[1] - idx[2], 1e-3);
      }
}

TEST_F(CropTest, OutsideTheVolumeReadsAsAir) {
  const Geometry g = Geometry::Isotropic(1.0);
  const Volume v = Ramp(g);
  CropSpec spec{g.IndexToWorld({-50, -50, -50}), {4, 4, 4}, Eigen::Vector3d::Constant(1.0)};
  auto crop = ExtractCrop(v, spec);
  ASSERT_TRUE(crop);
  for (float x : crop->data) EXPECT_EQ(x, -1000.0f);
}

TEST_F(CropTest, PasteOfAnUnchangedCropChangesNothing) {
  const Geometry g = Geometry::Isotropic(1.0, {1, 2, 3});
  Volume v = Ramp(g);
  const DenseFloat before = v.ToDense();
  CropSpec spec{g.IndexToWorld({15, 16, 17}), {10, 10, 10}, Eigen::Vector3d::Constant(1.0)};
  auto crop = ExtractCrop(v, spec);
  ASSERT_TRUE(crop);
  DenseFloat weight(crop->dims, crop->geometry, 1.0f);
  ASSERT_TRUE(PasteCrop(v, *crop, weight));
  const DenseFloat after = v.ToDense();
  for (std::size_t n = 0; n < after.data.size(); ++n)
    ASSERT_NEAR(after.data[n], before.data[n], 1e-4);
}

TEST_F(CropTest, PasteBlendsByWeightAndOnlyInsideTheCrop) {
  const Geometry g = Geometry::Isotropic(1.0);
  Volume v = Ramp(g);
  CropSpec spec{g.IndexToWorld({20, 20, 20}), {5, 5, 5}, Eigen::Vector3d::Constant(1.0)};
  DenseFloat crop(spec.size, CropGeometry(g, spec), 500.0f);
  DenseFloat weight(spec.size, crop.geometry, 0.25f);
  ASSERT_TRUE(PasteCrop(v, crop, weight));
  const float old_centre = float(2 * 20 + 3 * 20 - 20);
  EXPECT_NEAR(v.GetValue(20, 20, 20), 0.25f * 500.0f + 0.75f * old_centre, 1e-3);
  EXPECT_NEAR(v.GetValue(18, 22, 20), 0.25f * 500.0f + 0.75f * float(2 * 18 + 3 * 22 - 20), 1e-3);
  EXPECT_EQ(v.GetValue(17, 20, 20), float(2 * 17 + 3 * 20 - 20));  // just outside
}

TEST_F(CropTest, AddCropAddsAWeightedChangeAndKeepsTheRest) {
  const Geometry g = Geometry::Isotropic(1.0);
  Volume v = Ramp(g);
  CropSpec spec{g.IndexToWorld({20, 20, 20}), {5, 5, 5}, Eigen::Vector3d::Constant(1.0)};
  DenseFloat delta(spec.size, CropGeometry(g, spec), -40.0f);
  DenseFloat weight(spec.size, delta.geometry, 0.5f);
  ASSERT_TRUE(AddCrop(v, delta, weight));
  EXPECT_NEAR(v.GetValue(20, 20, 20), float(2 * 20 + 3 * 20 - 20) - 20.0f, 1e-3);
  EXPECT_EQ(v.GetValue(17, 20, 20), float(2 * 17 + 3 * 20 - 20));  // just outside
  delta.data[3] = std::nanf("");
  EXPECT_EQ(AddCrop(v, delta, weight).error().code, ErrorCode::kInvalidArgument);
  DenseFloat wrong({4, 4, 4}, delta.geometry, 1.0f);
  EXPECT_FALSE(AddCrop(v, delta, wrong));
}

TEST_F(CropTest, LabelsUseNearestNeighbourAndPasteByThreshold) {
  const Geometry g = Geometry::Isotropic(1.0);
  DenseLabel d({20, 20, 20}, g, 0);
  d.at(10, 10, 10) = 3;
  auto labels = *LabelVolume::FromDense(d, "tumor");
  CropSpec spec{g.IndexToWorld({10.2, 9.8, 10.1}), {3, 3, 3}, Eigen::Vector3d::Constant(1.0)};
  auto crop = ExtractCrop(labels, spec);
  ASSERT_TRUE(crop);
  EXPECT_EQ(crop->at(1, 1, 1), 3);
  EXPECT_EQ(crop->at(0, 0, 0), 0);

  CropSpec at_voxel{g.IndexToWorld({5, 5, 5}), {3, 3, 3}, Eigen::Vector3d::Constant(1.0)};
  DenseLabel patch(at_voxel.size, CropGeometry(g, at_voxel), 2);
  DenseFloat weight(at_voxel.size, patch.geometry, 0.0f);
  weight.at(1, 1, 1) = 0.9f;
  ASSERT_TRUE(PasteCrop(labels, patch, weight));
  EXPECT_EQ(labels.GetValue(5, 5, 5), 2);
  EXPECT_EQ(labels.GetValue(4, 5, 5), 0);
  EXPECT_EQ(CountLabel(labels), 2);
}

TEST_F(CropTest, BadSpecsAndInputsAreErrors) {
  const Volume v = Ramp(Geometry::Isotropic(1.0));
  EXPECT_FALSE(ExtractCrop(v, CropSpec{{0, 0, 0}, {0, 4, 4}, Eigen::Vector3d::Ones()}));
  EXPECT_FALSE(ExtractCrop(v, CropSpec{{0, 0, 0}, {4, 4, 4}, Eigen::Vector3d(1, 0, 1)}));
  CropSpec spec{{5, 5, 5}, {4, 4, 4}, Eigen::Vector3d::Ones()};
  DenseFloat crop(spec.size, CropGeometry(v.geometry(), spec), 0.0f);
  DenseFloat wrong({3, 4, 4}, crop.geometry, 1.0f);
  Volume target = v.DeepCopy();
  auto r = PasteCrop(target, crop, wrong);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::kMismatch);
  DenseFloat over(spec.size, crop.geometry, 1.5f);
  EXPECT_FALSE(PasteCrop(target, crop, over));
  crop.data[0] = std::nanf("");
  DenseFloat ok(spec.size, crop.geometry, 1.0f);
  EXPECT_FALSE(PasteCrop(target, crop, ok));
}

TEST_F(CropTest, AFootprintPastesAsTheWeightDoesOverOnlyTheWeightedVoxels) {
  Geometry g = Geometry::Isotropic(1.0, {1, 2, 3});
  g.direction = Eigen::AngleAxisd(0.3, Eigen::Vector3d(1, 0, 0)).toRotationMatrix();
  CropSpec spec{g.IndexToWorld({20.3, 19.6, 20.2}), {12, 12, 12}, Eigen::Vector3d(1.5, 1.0, 1.25)};
  const Geometry lattice = CropGeometry(g, spec);
  // A weight that is 1 in a small core, fades over two lattice points and is 0 elsewhere.
  DenseFloat weight(spec.size, lattice, 0.0f);
  DenseFloat delta(spec.size, lattice, 0.0f), paste(spec.size, lattice, 0.0f);
  DenseLabel labels_crop(spec.size, lattice, 0);
  for (int k = 0; k < 12; ++k)
    for (int j = 0; j < 12; ++j)
      for (int i = 0; i < 12; ++i) {
        const double r = (Eigen::Vector3d(i, j, k) - Eigen::Vector3d::Constant(5.5)).norm();
        weight.at(i, j, k) = float(std::clamp(4.0 - r, 0.0, 2.0) / 2.0);
        delta.at(i, j, k) = float(i * j - 3 * k);
        paste.at(i, j, k) = float(100 + i + 7 * j);
        labels_crop.at(i, j, k) = (i + j + k) % 3;
      }
  auto footprint = PasteFootprint::Make(g, weight);
  ASSERT_TRUE(footprint);
  EXPECT_GT(footprint->size(), 0u);
  EXPECT_LT(footprint->size(), 12u * 12 * 12);  // far fewer than the lattice covers

  Volume by_weight = Ramp(g), by_footprint = Ramp(g);
  ASSERT_TRUE(AddCrop(by_weight, delta, weight));
  ASSERT_TRUE(AddCrop(by_footprint, delta, *footprint));
  ASSERT_TRUE(PasteCrop(by_weight, paste, weight));
  ASSERT_TRUE(PasteCrop(by_footprint, paste, *footprint));
  const DenseFloat a = by_weight.ToDense(), b = by_footprint.ToDense();
  ASSERT_EQ(a.data, b.data);
  EXPECT_NE(a.data, Ramp(g).ToDense().data);  // the pastes did change something

  LabelVolume labels_w(g, {40, 40, 40}, "viable"), labels_f(g, {40, 40, 40}, "viable");
  ASSERT_TRUE(PasteCrop(labels_w, labels_crop, weight));
  ASSERT_TRUE(PasteCrop(labels_f, labels_crop, *footprint));
  EXPECT_GT(CountLabel(labels_w), 0);
  EXPECT_EQ(labels_w.ToDense().data, labels_f.ToDense().data);
}

TEST_F(CropTest, FootprintsWithinBoxesThatTileSpaceShareNoVoxel) {
  const Geometry g = Geometry::Isotropic(1.0);
  CropSpec spec{g.IndexToWorld({20, 20, 20}), {9, 9, 9}, Eigen::Vector3d::Constant(1.0)};
  const DenseFloat weight(spec.size, CropGeometry(g, spec), 1.0f);
  const double inf = std::numeric_limits<double>::infinity();
  const double face = g.IndexToWorld({20, 20, 20})[0];  // a voxel centre: min includes it
  const WorldBox low{Eigen::Vector3d::Constant(-inf), Eigen::Vector3d(face, inf, inf)};
  const WorldBox high{Eigen::Vector3d(face, -inf, -inf), Eigen::Vector3d::Constant(inf)};
  auto all = PasteFootprint::Make(g, weight);
  auto a = PasteFootprint::Make(g, weight, low);
  auto b = PasteFootprint::Make(g, weight, high);
  ASSERT_TRUE(all && a && b);
  EXPECT_EQ(a->size(), 4u * 81);
  EXPECT_EQ(b->size(), 5u * 81);
  Volume v = Ramp(g);
  const DenseFloat delta(spec.size, weight.geometry, 10.0f);
  ASSERT_TRUE(AddCrop(v, delta, *a));
  ASSERT_TRUE(AddCrop(v, delta, *b));
  EXPECT_EQ(v.GetValue(20, 20, 20), float(2 * 20 + 3 * 20 - 20) + 10.0f);  // added once
  EXPECT_EQ(v.GetValue(19, 20, 20), float(2 * 19 + 3 * 20 - 20) + 10.0f);
}

TEST_F(CropTest, AFootprintRefusesAnotherLatticeOrVolume) {
  const Geometry g = Geometry::Isotropic(1.0);
  CropSpec spec{g.IndexToWorld({20, 20, 20}), {5, 5, 5}, Eigen::Vector3d::Constant(1.0)};
  const DenseFloat weight(spec.size, CropGeometry(g, spec), 1.0f);
  auto footprint = PasteFootprint::Make(g, weight);
  ASSERT_TRUE(footprint);
  EXPECT_EQ(footprint->size(), 125u);
  Volume v = Ramp(g);
  DenseFloat other_dims({4, 5, 5}, weight.geometry, 0.0f);
  EXPECT_EQ(AddCrop(v, other_dims, *footprint).error().code, ErrorCode::kMismatch);
  spec.center_world += Eigen::Vector3d(0.5, 0, 0);
  DenseFloat moved(spec.size, CropGeometry(g, spec), 0.0f);
  EXPECT_EQ(PasteCrop(v, moved, *footprint).error().code, ErrorCode::kMismatch);
  Volume other_volume = Ramp(Geometry::Isotropic(2.0));
  EXPECT_EQ(AddCrop(other_volume, DenseFloat(weight.dims, weight.geometry, 0.0f), *footprint)
                .error()
                .code,
            ErrorCode::kMismatch);
  LabelVolume labels(Geometry::Isotropic(2.0), {40, 40, 40}, "viable");
  EXPECT_EQ(PasteCrop(labels, DenseLabel(weight.dims, weight.geometry, 1), *footprint).error().code,
            ErrorCode::kMismatch);
  EXPECT_FALSE(PasteFootprint::Make(g, DenseFloat(spec.size, weight.geometry, -0.1f)));
  DenseFloat truncated = weight;
  truncated.data.pop_back();
  EXPECT_FALSE(PasteFootprint::Make(g, truncated));
  EXPECT_EQ(v.ToDense().data, Ramp(g).ToDense().data);  // refusals change nothing
}

TEST(SampleTrilinearTest, InterpolatesLinearFieldsExactlyAndClampsAtEdges) {
  DenseFloat d({4, 3, 2}, Geometry::Isotropic(1.0));
  for (int k = 0; k < 2; ++k)
    for (int j = 0; j < 3; ++j)
      for (int i = 0; i < 4; ++i) d.at(i, j, k) = float(i + 10 * j + 100 * k);
  EXPECT_FLOAT_EQ(SampleTrilinear(d, {1.5, 0.25, 0.5}), 1.5f + 2.5f + 50.0f);
  EXPECT_FLOAT_EQ(SampleTrilinear(d, {3, 2, 1}), 3 + 20 + 100);
  EXPECT_FLOAT_EQ(SampleTrilinear(d, {-5, 1, 0}), 10.0f);        // clamped to i = 0
  EXPECT_FLOAT_EQ(SampleTrilinear(d, {9, 9, 9}), 3 + 20 + 100);  // clamped to the far corner
}

TEST(HuWindowTest, MapsTheDefaultMeWMWindowToUnitRangeAndBack) {
  HuWindow w;
  EXPECT_FLOAT_EQ(w.ToUnit(-175.0f), -1.0f);
  EXPECT_FLOAT_EQ(w.ToUnit(600.0f), 1.0f);
  EXPECT_FLOAT_EQ(w.ToUnit(-1000.0f), -1.0f);
  EXPECT_FLOAT_EQ(w.ToUnit(3000.0f), 1.0f);
  for (float hu : {-175.0f, 0.0f, 55.0f, 212.5f, 600.0f})
    EXPECT_NEAR(w.FromUnit(w.ToUnit(hu)), hu, 1e-3);
  EXPECT_TRUE(w.Validate());
  EXPECT_FALSE((HuWindow{600.0f, -175.0f}).Validate());
}

}  // namespace
}  // namespace mewm

// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/tace/tumor_features.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "../core/test_env.h"
#include "mewm/tace/patient.h"

namespace mewm {
namespace {

constexpr double kPi = 3.14159265358979323846;

class TumorFeaturesTest : public testing::VdbTest {
 protected:
  static constexpr int kN = 32;
  static constexpr double kRadius = 10.0;  // mm
  static constexpr double kCoreRadius = 5.0;
  static constexpr float kLiverHu = 55.0f;
  static constexpr float kRimHu = 100.0f;
  static constexpr float kCoreHu = 20.0f;  // below kNecroticHu

  static Geometry Lattice(double spacing = 1.0) {
    const double half = 0.5 * kN * spacing;
    return Geometry::Isotropic(spacing, {-half, -half, -half});
  }

  /// A sphere of radius kRadius: kRimHu, with a kCoreHu necrotic core when `necrotic_core`.
  struct Sphere {
    DenseFloat ct;
    DenseLabel tumor;
    int voxels = 0;
    int core_voxels = 0;
  };
  static Sphere MakeSphere(double spacing = 1.0, bool necrotic_core = true) {
    const Geometry g = Lattice(spacing);
    Sphere s{DenseFloat({kN, kN, kN}, g, kLiverHu), DenseLabel({kN, kN, kN}, g, 0)};
    for (int k = 0; k < kN; ++k)
      for (int j = 0; j < kN; ++j)
        for (int i = 0; i < kN; ++i) {
          const double r = g.IndexToWorld({double(i), double(j), double(k)}).norm();
          if (r >= kRadius * spacing) continue;
          s.tumor.at(i, j, k) = 1;
          ++s.voxels;
          const bool core = necrotic_core && r < kCoreRadius * spacing;
          s.ct.at(i, j, k) = core ? kCoreHu : kRimHu;
          s.core_voxels += core ? 1 : 0;
        }
    return s;
  }
  static Volume Ct(const DenseFloat& d) { return *Volume::FromDense(d, "ct"); }
  static LabelVolume Mask(const DenseLabel& d) { return *LabelVolume::FromDense(d, "tumor"); }
};

TEST_F(TumorFeaturesTest, SphereHasItsVolumeHuStatisticsAndNecrosis) {
  const Sphere s = MakeSphere();
  auto f = ComputeTumorFeatures(Ct(s.ct), Mask(s.tumor));
  ASSERT_TRUE(f) << f.error().ToString();
  const double expected_ml = 4.0 / 3.0 * kPi * std::pow(kRadius, 3) / 1000.0;
  EXPECT_NEAR(f->volume_ml, expected_ml, 0.05 * expected_ml);
  EXPECT_DOUBLE_EQ(f->volume_ml, s.voxels / 1000.0);

  const double p = double(s.core_voxels) / s.voxels;
  ASSERT_GT(p, 0.05);
  ASSERT_LT(p, 0.25);  // about (5/10)^3
  EXPECT_NEAR(f->necrotic_fraction, p, 1e-12);
  EXPECT_NEAR(f->mean_hu, p * kCoreHu + (1 - p) * kRimHu, 1e-6);
  EXPECT_NEAR(f->sd_hu, std::sqrt(p * (1 - p)) * (kRimHu - kCoreHu), 1e-6);
  EXPECT_NEAR(f->enhancing_hu, kRimHu, 1e-6);
  EXPECT_EQ(f->lesions, 1);
  EXPECT_GT(f->sphericity, 0.5);
  EXPECT_LE(f->sphericity, 1.0);
}

TEST_F(TumorFeaturesTest, UniformTumorHasNoSpreadAndNoNecrosis) {
  const Sphere s = MakeSphere(1.0, /*necrotic_core=*/false);
  auto f = ComputeTumorFeatures(Ct(s.ct), Mask(s.tumor));
  ASSERT_TRUE(f) << f.error().ToString();
  EXPECT_NEAR(f->mean_hu, kRimHu, 1e-6);
  EXPECT_NEAR(f->sd_hu, 0.0, 1e-3);
  EXPECT_EQ(f->necrotic_fraction, 0.0);
  EXPECT_NEAR(f->enhancing_hu, kRimHu, 1e-6);
}

TEST_F(TumorFeaturesTest, FullyNecroticTumorReportsMeanAsEnhancingHu) {
  const Geometry g = Lattice();
  DenseFloat ct({kN, kN, kN}, g, kLiverHu);
  DenseLabel tumor({kN, kN, kN}, g, 0);
  for (int k = 10; k < 14; ++k)
    for (int j = 10; j < 14; ++j)
      for (int i = 10; i < 14; ++i) {
        tumor.at(i, j, k) = 1;
        ct.at(i, j, k) = i < 12 ? 0.0f : 30.0f;
      }
  auto f = ComputeTumorFeatures(Ct(ct), Mask(tumor));
  ASSERT_TRUE(f) << f.error().ToString();
  EXPECT_EQ(f->necrotic_fraction, 1.0);
  EXPECT_NEAR(f->mean_hu, 15.0, 1e-9);
  EXPECT_NEAR(f->enhancing_hu, f->mean_hu, 1e-9);
  EXPECT_NEAR(f->sd_hu, 15.0, 1e-6);
}

TEST_F(TumorFeaturesTest, VolumeScalesWithVoxelSize) {
  const Sphere fine = MakeSphere(1.0);
  const Sphere coarse = MakeSphere(2.0);  // the same voxels, twice the spacing
  ASSERT_EQ(fine.voxels, coarse.voxels);
  auto a = ComputeTumorFeatures(Ct(fine.ct), Mask(fine.tumor));
  auto b = ComputeTumorFeatures(Ct(coarse.ct), Mask(coarse.tumor));
  ASSERT_TRUE(a && b);
  EXPECT_NEAR(b->volume_ml, 8.0 * a->volume_ml, 1e-9);
  // Sphericity is scale-free.
  EXPECT_NEAR(b->sphericity, a->sphericity, 1e-9);
}

TEST_F(TumorFeaturesTest, SphereIsRounderThanAThinSlab) {
  const Sphere s = MakeSphere();
  const Geometry g = Lattice();
  DenseLabel slab({kN, kN, kN}, g, 0);
  for (int j = 4; j < 28; ++j)
    for (int i = 4; i < 28; ++i) slab.at(i, j, 16) = 1;
  const Volume ct = Ct(s.ct);
  auto sphere = ComputeTumorFeatures(ct, Mask(s.tumor));
  auto flat = ComputeTumorFeatures(ct, Mask(slab));
  ASSERT_TRUE(sphere && flat);
  EXPECT_GT(sphere->sphericity, flat->sphericity + 0.2);
  // 24 x 24 x 1 voxels: V = 576 mm^3, S = 2*576 + 4*24 = 1248 mm^2.
  const double expected = std::cbrt(36.0 * kPi * 576.0 * 576.0) / 1248.0;
  EXPECT_NEAR(flat->sphericity, expected, 1e-9);
  EXPECT_GT(flat->sphericity, 0.0);
}

TEST_F(TumorFeaturesTest, LesionsCountDistinctLabels) {
  const Geometry g = Lattice();
  const DenseFloat ct({kN, kN, kN}, g, kLiverHu);
  DenseLabel tumor({kN, kN, kN}, g, 0);
  for (int i = 2; i < 5; ++i) tumor.at(i, 2, 2) = 1;
  for (int i = 20; i < 23; ++i) tumor.at(i, 20, 20) = 2;
  tumor.at(10, 25, 5) = 7;
  auto three = ComputeTumorFeatures(Ct(ct), Mask(tumor));
  ASSERT_TRUE(three) << three.error().ToString();
  EXPECT_EQ(three->lesions, 3);
  EXPECT_DOUBLE_EQ(three->volume_ml, 7 / 1000.0);

  // Labels, not connected components: two separate blobs with one label are one lesion.
  tumor.at(10, 25, 5) = 1;
  for (int i = 20; i < 23; ++i) tumor.at(i, 20, 20) = 1;
  auto one = ComputeTumorFeatures(Ct(ct), Mask(tumor));
  ASSERT_TRUE(one);
  EXPECT_EQ(one->lesions, 1);
}

TEST_F(TumorFeaturesTest, MismatchedLatticeIsRejected) {
  const Sphere s = MakeSphere();
  const LabelVolume mask = Mask(s.tumor);

  DenseFloat shifted = s.ct;
  shifted.geometry.origin += Eigen::Vector3d(0.5, 0, 0);
  auto moved = ComputeTumorFeatures(Ct(shifted), mask);
  ASSERT_FALSE(moved);
  EXPECT_EQ(moved.error().code, ErrorCode::kMismatch);
  EXPECT_NE(moved.error().message.find("different lattices"), std::string::npos);

  const Volume other_extent(s.ct.geometry, {kN, kN, kN + 1}, "ct");
  auto extent = ComputeTumorFeatures(other_extent, mask);
  ASSERT_FALSE(extent);
  EXPECT_EQ(extent.error().code, ErrorCode::kMismatch);

  const Volume coarse(Lattice(2.0), {kN, kN, kN}, "ct");
  auto spacing = ComputeTumorFeatures(coarse, mask);
  ASSERT_FALSE(spacing);
  EXPECT_EQ(spacing.error().code, ErrorCode::kMismatch);
}

TEST_F(TumorFeaturesTest, EmptyMaskIsInvalid) {
  const Sphere s = MakeSphere();
  auto f = ComputeTumorFeatures(Ct(s.ct), LabelVolume(s.ct.geometry, {kN, kN, kN}, "tumor"));
  ASSERT_FALSE(f);
  EXPECT_EQ(f.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(f.error().message.find("empty"), std::string::npos);
}

TEST_F(TumorFeaturesTest, LipiodolCoverageCountsVoxelsAtOrAboveTheThreshold) {
  const Geometry g = Lattice();
  DenseFloat post({kN, kN, kN}, g, kLiverHu);
  DenseLabel tumor({kN, kN, kN}, g, 0);
  for (int k = 8; k < 12; ++k)
    for (int j = 8; j < 12; ++j)
      for (int i = 8; i < 12; ++i) {
        tumor.at(i, j, k) = 1;
        // Half the voxels are covered: one plane exactly at the threshold, one far above it.
        post.at(i, j, k) = i == 8 ? float(kLipiodolHu) : i == 9 ? 600.0f : float(kLipiodolHu) - 1;
      }
  // Dense Lipiodol outside the tumor does not count.
  post.at(2, 2, 2) = 900.0f;
  auto half = LipiodolCoverage(Ct(post), Mask(tumor));
  ASSERT_TRUE(half) << half.error().ToString();
  EXPECT_DOUBLE_EQ(*half, 0.5);

  const DenseFloat bare({kN, kN, kN}, g, kLiverHu);
  auto none = LipiodolCoverage(Ct(bare), Mask(tumor));
  ASSERT_TRUE(none);
  EXPECT_DOUBLE_EQ(*none, 0.0);
}

TEST_F(TumorFeaturesTest, LipiodolCoverageRejectsMismatchAndEmptyMask) {
  const Sphere s = MakeSphere();
  const Volume post = Ct(s.ct);
  auto off = LipiodolCoverage(Volume(Lattice(2.0), {kN, kN, kN}, "post"), Mask(s.tumor));
  ASSERT_FALSE(off);
  EXPECT_EQ(off.error().code, ErrorCode::kMismatch);
  auto empty = LipiodolCoverage(post, LabelVolume(s.ct.geometry, {kN, kN, kN}, "tumor"));
  ASSERT_FALSE(empty);
  EXPECT_EQ(empty.error().code, ErrorCode::kInvalidArgument);
}

class TumorRegionTest : public testing::VdbTest {
 protected:
  static constexpr int kN = 40;
  /// A CT with a distinct non-background value in every voxel, a 6x6x6 tumor at [15, 20]^3 and
  /// a liver mask that fills the whole volume. Spacing 1 x 1 x 2 mm.
  static PatientCase Case() {
    Geometry g = Geometry::Isotropic(1.0, {-5, 3, 7});
    g.spacing = Eigen::Vector3d(1.0, 1.0, 2.0);
    DenseFloat ct({kN, kN, kN}, g, 0.0f);
    DenseLabel tumor({kN, kN, kN}, g, 0);
    DenseLabel liver({kN, kN, kN}, g, 3);
    for (int k = 0; k < kN; ++k)
      for (int j = 0; j < kN; ++j)
        for (int i = 0; i < kN; ++i) {
          ct.at(i, j, k) = float(i + 2 * j + 3 * k) - 50.0f;
          if (i >= 15 && i <= 20 && j >= 15 && j <= 20 && k >= 15 && k <= 20) {
            tumor.at(i, j, k) = (i + j + k) % 2 + 1;
          }
        }
    PatientCase c{"R1", *Volume::FromDense(ct, "ct"), *LabelVolume::FromDense(tumor, "tumor"),
                  *LabelVolume::FromDense(liver, "liver"), Covariates{}};
    c.covariates.age_years = 58;
    c.covariates.afp_ng_ml = 120;
    return c;
  }
};

TEST_F(TumorRegionTest, KeepsTheTumorNeighbourhoodAndClearsTheRest) {
  const PatientCase c = Case();
  // 3 mm margin: 3 voxels along i and j, ceil(3 / 2) = 2 voxels along k.
  auto region = TumorRegion(c, 3.0);
  ASSERT_TRUE(region) << region.error().ToString();
  EXPECT_EQ(region->id, "R1");
  EXPECT_EQ(region->covariates.age_years, 58);
  EXPECT_EQ(region->covariates.afp_ng_ml, 120);
  EXPECT_EQ(region->ct.extent(), c.ct.extent());
  EXPECT_TRUE(region->ct.geometry().ApproxEquals(c.ct.geometry()));
  EXPECT_EQ(region->tumor.extent(), c.tumor.extent());
  EXPECT_TRUE(region->tumor.geometry().ApproxEquals(c.tumor.geometry()));
  EXPECT_EQ(region->ct.name(), "ct");
  EXPECT_EQ(region->tumor.name(), "tumor");
  ASSERT_TRUE(region->liver.has_value());
  EXPECT_EQ(region->liver->extent(), c.liver->extent());
  EXPECT_TRUE(region->Validate()) << region->Validate().error().ToString();

  const Index3 lo{12, 12, 13}, hi{23, 23, 22};
  int inside = 0;
  for (int k = 0; k < kN; ++k)
    for (int j = 0; j < kN; ++j)
      for (int i = 0; i < kN; ++i) {
        const bool in =
            i >= lo[0] && i <= hi[0] && j >= lo[1] && j <= hi[1] && k >= lo[2] && k <= hi[2];
        inside += in ? 1 : 0;
        // The tumor lies wholly inside the box, so its mask is unchanged everywhere.
        ASSERT_EQ(region->tumor.GetValue(i, j, k), c.tumor.GetValue(i, j, k));
        if (in) {
          ASSERT_EQ(region->ct.GetValue(i, j, k), c.ct.GetValue(i, j, k))
              << i << " " << j << " " << k;
          ASSERT_EQ(region->liver->GetValue(i, j, k), 3);
        } else {
          ASSERT_EQ(region->ct.GetValue(i, j, k), -1000.0f) << i << " " << j << " " << k;
          ASSERT_EQ(region->liver->GetValue(i, j, k), 0);
        }
      }
  EXPECT_EQ(inside, 12 * 12 * 10);
  EXPECT_EQ(region->ct.ActiveVoxelCount(), inside);
  EXPECT_EQ(CountLabel(region->tumor), 216);
  EXPECT_EQ(CountLabel(region->tumor, 2), CountLabel(c.tumor, 2));
}

TEST_F(TumorRegionTest, ZeroMarginKeepsExactlyTheTumorBoxAndLargeMarginsClipToTheExtent) {
  const PatientCase c = Case();
  auto tight = TumorRegion(c, 0.0);
  ASSERT_TRUE(tight) << tight.error().ToString();
  EXPECT_EQ(tight->ct.ActiveVoxelCount(), 6 * 6 * 6);
  EXPECT_EQ(tight->ct.GetValue(15, 15, 15), c.ct.GetValue(15, 15, 15));
  EXPECT_EQ(tight->ct.GetValue(14, 15, 15), -1000.0f);
  EXPECT_EQ(tight->ct.GetValue(20, 20, 21), -1000.0f);

  auto whole = TumorRegion(c, 1000.0);
  ASSERT_TRUE(whole) << whole.error().ToString();
  EXPECT_EQ(whole->ct.ActiveVoxelCount(), c.ct.ActiveVoxelCount());
  EXPECT_EQ(whole->ct.GetValue(0, 0, 0), c.ct.GetValue(0, 0, 0));
  EXPECT_EQ(whole->ct.GetValue(kN - 1, kN - 1, kN - 1), c.ct.GetValue(kN - 1, kN - 1, kN - 1));
  // Nothing is written outside the declared extent.
  EXPECT_EQ(whole->ct.ActiveBoundingBox().min, (Index3{0, 0, 0}));
  EXPECT_EQ(whole->ct.ActiveBoundingBox().max, (Index3{kN - 1, kN - 1, kN - 1}));
}

TEST_F(TumorRegionTest, RegionIsACopyNotAView) {
  const PatientCase c = Case();
  auto region = TumorRegion(c, 2.0);
  ASSERT_TRUE(region);
  const float before = c.ct.GetValue(16, 16, 16);
  region->ct.SetValue(16, 16, 16, 999.0f);
  EXPECT_EQ(c.ct.GetValue(16, 16, 16), before);
}

TEST_F(TumorRegionTest, NoLiverStaysNoLiver) {
  PatientCase c = Case();
  c.liver.reset();
  auto region = TumorRegion(c, 2.0);
  ASSERT_TRUE(region);
  EXPECT_FALSE(region->liver.has_value());
}

TEST_F(TumorRegionTest, EmptyTumorOrBadMarginIsInvalid) {
  const PatientCase c = Case();
  for (const double margin : {-1.0, std::nan("")}) {
    auto bad = TumorRegion(c, margin);
    ASSERT_FALSE(bad) << margin;
    EXPECT_EQ(bad.error().code, ErrorCode::kInvalidArgument);
    EXPECT_NE(bad.error().message.find("'R1'"), std::string::npos);
  }
  PatientCase empty = Case();
  empty.tumor = LabelVolume(c.ct.geometry(), c.ct.extent(), "tumor");
  auto none = TumorRegion(empty, 5.0);
  ASSERT_FALSE(none);
  EXPECT_EQ(none.error().code, ErrorCode::kInvalidArgument);
}

}  // namespace
}  // namespace mewm

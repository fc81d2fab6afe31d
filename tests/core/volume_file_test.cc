// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/core/volume_file.h"

#include <gtest/gtest.h>

#include <Eigen/Geometry>

#include "mewm/core/nifti_io.h"
#include "test_env.h"

namespace mewm {
namespace {

class VolumeFileTest : public testing::VdbTest {
 protected:
  static Geometry Oblique() {
    Geometry g;
    g.spacing = Eigen::Vector3d(0.78, 0.78, 2.5);
    g.origin = Eigen::Vector3d(-180.2, -165.7, -310.0);
    g.direction = (Eigen::AngleAxisd(0.35, Eigen::Vector3d::UnitX()) *
                   Eigen::AngleAxisd(-0.15, Eigen::Vector3d::UnitY()))
                      .toRotationMatrix();
    return g;
  }
  static DenseFloat Ct() {
    DenseFloat ct({17, 13, 7}, Oblique(), -1000.0f);
    for (int k = 1; k < 6; ++k)
      for (int j = 2; j < 11; ++j)
        for (int i = 3; i < 15; ++i) ct.at(i, j, k) = float(i * 7 - j * 3 + k) + 0.25f;
    return ct;
  }
  testing::TempDir dir_;
};

TEST_F(VolumeFileTest, NiftiToVdbToNiftiKeepsValuesAndAffine) {
  for (const char* ext : {".nii", ".nii.gz"}) {
    const std::string nii = dir_.File(std::string("in") + ext);
    const std::string vdb = dir_.File("mid.vdb");
    const std::string out = dir_.File(std::string("out") + ext);
    const DenseFloat ct = Ct();
    ASSERT_TRUE(WriteNifti(nii, ct));
    auto set = ReadVolumeFile(nii);
    ASSERT_TRUE(set) << set.error().ToString();
    ASSERT_TRUE(WriteVolumeFile(vdb, *set));
    auto mid = ReadVolumeFile(vdb);
    ASSERT_TRUE(mid);
    ASSERT_TRUE(WriteVolumeFile(out, *mid));
    NiftiInfo in_info, out_info;
    auto back = ReadNifti(out, &out_info);
    ASSERT_TRUE(back) << back.error().ToString();
    ASSERT_TRUE(ReadNifti(nii, &in_info));
    EXPECT_EQ(back->dims, ct.dims);
    EXPECT_EQ(back->data, ct.data);
    EXPECT_LT((out_info.affine_ras - in_info.affine_ras).cwiseAbs().maxCoeff(), 1e-4);
    EXPECT_TRUE(back->geometry.ApproxEquals(ct.geometry, 1e-4));
  }
}

TEST_F(VolumeFileTest, IntegerNiftiIsReadAsLabels) {
  DenseLabel labels({5, 5, 5}, Oblique(), 0);
  labels.at(2, 2, 2) = 1;
  labels.at(3, 2, 2) = 2;
  const std::string path = dir_.File("seg.nii.gz");
  ASSERT_TRUE(WriteNiftiLabels(path, labels));
  auto set = ReadVolumeFile(path, NiftiKind::kAuto, "tumor");
  ASSERT_TRUE(set);
  auto tumor = set->Label("tumor");
  ASSERT_TRUE(tumor);
  EXPECT_EQ(CountLabel(*tumor), 2);
  const std::string back = dir_.File("seg2.nii");
  ASSERT_TRUE(WriteVolumeFile(back, *set));
  auto again = ReadNiftiLabels(back);
  ASSERT_TRUE(again);
  EXPECT_EQ(again->data, labels.data);
}

TEST_F(VolumeFileTest, AmbiguousOrUnknownTargetsAreErrors) {
  VolumeSet set;
  set.scalars.emplace("ct", *Volume::FromDense(Ct(), "ct"));
  set.labels.emplace("tumor", LabelVolume(Oblique(), {17, 13, 7}, "tumor"));
  auto ambiguous = WriteVolumeFile(dir_.File("x.nii"), set);
  ASSERT_FALSE(ambiguous);
  EXPECT_NE(ambiguous.error().message.find("ct, tumor"), std::string::npos);
  EXPECT_FALSE(WriteVolumeFile(dir_.File("x.nii"), set, "liver"));
  EXPECT_TRUE(WriteVolumeFile(dir_.File("x.nii"), set, "tumor"));
  auto unknown = ReadVolumeFile(dir_.File("x.mha"));
  ASSERT_FALSE(unknown);
  EXPECT_EQ(unknown.error().code, ErrorCode::kInvalidArgument);
  EXPECT_FALSE(WriteVolumeFile(dir_.File("x.png"), set));
}

}  // namespace
}  // namespace mewm

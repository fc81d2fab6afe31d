// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/core/volume_file.h"

#include <gtest/gtest.h>

#include <Eigen/Geometry>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

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

TEST_F(VolumeFileTest, ANiftiCoveringActiveVoxelsFarOutsideTheExtentIsRefusedByTheVoxelLimit) {
  // The NIfTI covers the extent and every active voxel. One changed byte of a .vdb put a voxel 10
  // million voxels out, and the conversion ran out of memory instead of naming the limit.
  VolumeSet set;
  Volume ct = *Volume::FromDense(Ct(), "ct");
  ct.SetValue(10'000'000, 0, 0, 50.0f);
  set.scalars.emplace("ct", std::move(ct));
  auto refused = WriteVolumeFile(dir_.File("far.nii.gz"), set);
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message.find("over the limit"), std::string::npos)
      << refused.error().message;
  EXPECT_NE(refused.error().message.find("far.nii.gz', grid 'ct'"), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(dir_.File("far.nii.gz")));
}

// --kind auto: the evidence of files written by nibabel (tests/data/nifti/make_kind_fixtures.py).
TEST_F(VolumeFileTest, AutoKindFollowsTheEvidenceOfFilesWrittenByNibabel) {
  const std::string folder = std::string(MEWM_TEST_DATA_DIR) + "/nifti/kind";
  std::ifstream in(folder + "/expected.json");
  ASSERT_TRUE(in) << folder;
  const nlohmann::json expected = nlohmann::json::parse(in);
  ASSERT_GE(expected.at("files").size(), 8u);
  for (const auto& [name, want] : expected.at("files").items()) {
    SCOPED_TRACE(name);
    const std::string path = folder + "/" + name;
    NiftiKindDecision decision;
    auto set = ReadVolumeFile(path, NiftiKind::kAuto, "", &decision);
    ASSERT_TRUE(set) << set.error().ToString();
    const bool label = want.at("kind") == "label";
    EXPECT_EQ(decision.kind, label ? NiftiKind::kLabel : NiftiKind::kScalar) << decision.reason;
    EXPECT_NE(decision.reason.find(want.at("reason").get<std::string>()), std::string::npos)
        << decision.reason;
    auto info = ReadNiftiInfo(path);
    ASSERT_TRUE(info);
    EXPECT_EQ(info->intent_code, want.at("intent_code").get<int>());
    // The values as nibabel reads them (get_fdata), whichever grid they became.
    double lo = 0, hi = 0;
    if (label) {
      ASSERT_EQ(set->labels.count("label"), 1u);
      const DenseLabel dense = set->labels.at("label").ToDense();
      lo = *std::min_element(dense.data.begin(), dense.data.end());
      hi = *std::max_element(dense.data.begin(), dense.data.end());
      EXPECT_EQ(set->metadata.modality, "SEG");
    } else {
      ASSERT_EQ(set->scalars.count("ct"), 1u);
      const DenseFloat dense = set->scalars.at("ct").ToDense();
      lo = *std::min_element(dense.data.begin(), dense.data.end());
      hi = *std::max_element(dense.data.begin(), dense.data.end());
      // The CT read through the labels path (unscaled integers) equals ReadNifti's reading.
      auto direct = ReadNifti(path);
      ASSERT_TRUE(direct);
      EXPECT_EQ(dense.data, direct->data);
    }
    EXPECT_EQ(lo, want.at("min").get<double>());
    EXPECT_EQ(hi, want.at("max").get<double>());
    // An explicit kind overrides the evidence.
    auto forced = ReadVolumeFile(path, label ? NiftiKind::kScalar : NiftiKind::kLabel);
    if (label) {
      ASSERT_TRUE(forced) << forced.error().ToString();
      EXPECT_EQ(forced->scalars.count("ct"), 1u);
    } else if (forced) {
      EXPECT_EQ(forced->labels.count("label"), 1u);
    }
  }
}

TEST_F(VolumeFileTest, AutoKindRuleOrderPutsTheFileNameLast) {
  NiftiInfo info;
  info.integer_datatype = true;
  info.datatype = 4;  // int16
  const std::vector<std::int32_t> few = {0, 1, 2, 0, 1};
  const std::vector<std::int32_t> negative = {-1000, 40, 0};
  std::vector<std::int32_t> many(300);
  for (std::size_t n = 0; n < many.size(); ++n) many[n] = std::int32_t(n);
  const auto kind = [&](const std::string& path, const std::vector<std::int32_t>* values) {
    return DecideNiftiKind(path, info, values).kind;
  };
  // Data first: negatives and many values are a CT whatever the name says.
  EXPECT_EQ(kind("seg.nii.gz", &negative), NiftiKind::kScalar);
  EXPECT_EQ(kind("tumor_mask.nii.gz", &many), NiftiKind::kScalar);
  // Few non-negative values: labels, unless the name is a CT's and not also a mask's.
  EXPECT_EQ(kind("x.nii.gz", &few), NiftiKind::kLabel);
  EXPECT_EQ(kind("/data/ct.nii.gz/scan_labels.nii.gz", &few), NiftiKind::kLabel);
  EXPECT_EQ(kind("/data/HCC_001_CT.nii.gz", &few), NiftiKind::kScalar);
  EXPECT_EQ(kind("case_00001_0000.nii.gz", &few), NiftiKind::kScalar);
  EXPECT_EQ(kind("ct_tumor.nii.gz", &few), NiftiKind::kLabel);
  EXPECT_EQ(kind("acted.nii.gz", &few), NiftiKind::kLabel);  // "ct" inside a word is no word
  // The intent code comes before everything, the datatype and scaling before the values.
  info.intent_code = 1002;
  EXPECT_EQ(kind("ct.nii.gz", &negative), NiftiKind::kLabel);
  info.intent_code = 0;
  info.scl_slope = 1.0;
  info.scl_inter = -1024.0;
  EXPECT_EQ(kind("seg.nii.gz", &few), NiftiKind::kScalar);
  info.scl_slope = std::numeric_limits<double>::quiet_NaN();  // nibabel's "no scaling"
  EXPECT_EQ(kind("seg.nii.gz", &few), NiftiKind::kLabel);
  info.integer_datatype = false;
  info.datatype = 16;  // float32
  info.scl_slope = 0.0;
  EXPECT_EQ(kind("seg.nii.gz", &few), NiftiKind::kScalar);
}

TEST_F(VolumeFileTest, LabelsAreWrittenWithTheLabelIntentAndReadBackAsLabels) {
  DenseLabel labels({4, 4, 4}, Oblique(), 0);
  labels.at(1, 1, 1) = 3;
  const std::string path = dir_.File("anything.nii.gz");
  ASSERT_TRUE(WriteNiftiLabels(path, labels));
  auto info = ReadNiftiInfo(path);
  ASSERT_TRUE(info);
  EXPECT_EQ(info->intent_code, 1002);
  ASSERT_TRUE(WriteNifti(dir_.File("ct.nii.gz"), Ct()));
  EXPECT_EQ(ReadNiftiInfo(dir_.File("ct.nii.gz"))->intent_code, 0);
}

TEST_F(VolumeFileTest, EveryGridOfASetIsWrittenToItsOwnNiftiOnOneLattice) {
  VolumeSet set;
  set.scalars.emplace("ct", *Volume::FromDense(Ct(), "ct"));
  DenseLabel tumor({17, 13, 7}, Oblique(), 0);
  tumor.at(4, 4, 3) = 1;
  set.labels.emplace("tumor", *LabelVolume::FromDense(tumor, "tumor"));
  set.labels.emplace("odd/name", *LabelVolume::FromDense(tumor, "odd/name"));
  // A label voxel outside the CT's extent widens the shared lattice of every file.
  set.labels.at("tumor").SetValue(18, 4, 3, 2);
  auto written = WriteNiftiPerGrid(dir_.File("out.nii.gz"), set);
  ASSERT_TRUE(written) << written.error().ToString();
  ASSERT_EQ(written->size(), 3u);
  EXPECT_EQ((*written)[0], dir_.File("out_ct.nii.gz"));
  EXPECT_EQ((*written)[1], dir_.File("out_odd_name.nii.gz"));
  EXPECT_EQ((*written)[2], dir_.File("out_tumor.nii.gz"));
  auto ct = ReadNifti(dir_.File("out_ct.nii.gz"));
  auto seg = ReadNiftiLabels(dir_.File("out_tumor.nii.gz"));
  ASSERT_TRUE(ct && seg);
  EXPECT_EQ(ct->dims, (Index3{19, 13, 7}));
  EXPECT_EQ(seg->dims, ct->dims);
  EXPECT_TRUE(seg->geometry.ApproxEquals(ct->geometry, 1e-9));
  EXPECT_EQ(ct->at(5, 4, 3), Ct().at(5, 4, 3));
  EXPECT_EQ(ct->at(18, 4, 3), -1000.0f);
  EXPECT_EQ(seg->at(4, 4, 3), 1);
  EXPECT_EQ(seg->at(18, 4, 3), 2);
  EXPECT_EQ(PerGridNiftiPath("/a/b.nii", "viable"), "/a/b_viable.nii");
  EXPECT_FALSE(WriteNiftiPerGrid(dir_.File("out.vdb"), set));
}

}  // namespace
}  // namespace mewm

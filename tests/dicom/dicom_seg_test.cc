// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The DICOM-SEG reader's rules that need no DICOM file: segment roles by words, --segment-map,
// and the header refusals. Placement on real SEG files is tests/tools/dicom_seg_test.py.
#include "mewm/dicom/dicom_seg.h"

#include <gtest/gtest.h>

#include <fstream>
#include <string>

#include "../core/test_env.h"

namespace mewm::dicom {
namespace {

TEST(DicomSegRolesTest, WordsOfLabelThenDescriptionThenTypeDecide) {
  std::string reason;
  // HCC-TACE-Seg's segments.
  EXPECT_EQ(SegmentRoleFor("Liver", "", "Liver", &reason), SegmentRole::kLiver);
  EXPECT_NE(reason.find("label 'Liver'"), std::string::npos) << reason;
  EXPECT_EQ(SegmentRoleFor("Mass", "", "Neoplasm"), SegmentRole::kTumor);
  EXPECT_EQ(SegmentRoleFor("Portal vein", "", ""), SegmentRole::kIgnore);
  EXPECT_EQ(SegmentRoleFor("Abdominal aorta", "", ""), SegmentRole::kIgnore);
  // Necrosis before tumor, tumor before liver, vessels before liver; whole words only.
  EXPECT_EQ(SegmentRoleFor("necrotic tumor core", "", ""), SegmentRole::kNecrosis);
  EXPECT_EQ(SegmentRoleFor("Liver_Tumor_1", "", ""), SegmentRole::kTumor);
  EXPECT_EQ(SegmentRoleFor("hepatic vein", "", ""), SegmentRole::kIgnore);
  EXPECT_EQ(SegmentRoleFor("Livers", "", ""), SegmentRole::kIgnore);
  EXPECT_EQ(SegmentRoleFor("massive", "", ""), SegmentRole::kIgnore);
  // An unhelpful label: the description, then the property type.
  EXPECT_EQ(SegmentRoleFor("Segment_2", "HCC lesion", "", &reason), SegmentRole::kTumor);
  EXPECT_NE(reason.find("description"), std::string::npos) << reason;
  EXPECT_EQ(SegmentRoleFor("Segment_1", "", "Liver", &reason), SegmentRole::kLiver);
  EXPECT_NE(reason.find("property type"), std::string::npos) << reason;
  EXPECT_EQ(SegmentRoleFor("Segment_3", "", "Spleen", &reason), SegmentRole::kIgnore);
  EXPECT_NE(reason.find("no liver, tumor or necrosis word"), std::string::npos) << reason;
}

TEST(DicomSegRolesTest, SegmentMapParsesAndRefusesWithTheItem) {
  auto map = ParseSegmentMap("1=liver, 2=Tumor;3=necrosis 4=ignore,5=lesion,6=none");
  ASSERT_TRUE(map) << map.error().message;
  ASSERT_EQ(map->size(), 6u);
  EXPECT_EQ(map->at(1), SegmentRole::kLiver);
  EXPECT_EQ(map->at(2), SegmentRole::kTumor);
  EXPECT_EQ(map->at(3), SegmentRole::kNecrosis);
  EXPECT_EQ(map->at(4), SegmentRole::kIgnore);
  EXPECT_EQ(map->at(5), SegmentRole::kTumor);
  EXPECT_EQ(map->at(6), SegmentRole::kIgnore);
  for (const auto& [text, needle] :
       std::vector<std::pair<std::string, std::string>>{{"1:liver", "no '='"},
                                                        {"0=liver", "1-65535"},
                                                        {"x=liver", "1-65535"},
                                                        {"70000=liver", "1-65535"},
                                                        {"1=bone", "unknown role 'bone'"},
                                                        {"1=liver,1=tumor", "named twice"},
                                                        {"", "empty segment map"}}) {
    auto bad = ParseSegmentMap(text);
    ASSERT_FALSE(bad) << text;
    EXPECT_EQ(bad.error().code, ErrorCode::kInvalidArgument);
    EXPECT_NE(bad.error().message.find(needle), std::string::npos) << bad.error().message;
  }
}

TEST(DicomSegRolesTest, HeaderRefusesWhatIsNotASeg) {
  testing::TempDir dir;
  auto missing = ReadSegHeader(dir.File("nowhere.dcm"));
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, ErrorCode::kNotFound);
  std::ofstream(dir.File("text.dcm")) << "not DICOM at all";
  auto text = ReadSegHeader(dir.File("text.dcm"));
  ASSERT_FALSE(text);
  EXPECT_EQ(text.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(text.error().message.find("not a DICOM file"), std::string::npos);
  EXPECT_FALSE(IsDicomFile(dir.File("text.dcm")));
  EXPECT_FALSE(IsDicomFile(dir.path().string()));  // a folder
  SegReference ct;
  ct.extent = {4, 4, 4};
  auto imported = ImportSegmentation(dir.File("text.dcm"), ct);
  ASSERT_FALSE(imported);
  EXPECT_NE(imported.error().message.find("not a DICOM file"), std::string::npos);
}

}  // namespace
}  // namespace mewm::dicom

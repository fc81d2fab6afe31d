// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The DICOM reader on series written by pydicom (tests/tools/dicom_import_test.py --write-fixture),
// compared with the NIfTI nibabel wrote them from, read by mewm's NIfTI reader.
#include "mewm/dicom/dicom_import.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "../core/test_env.h"
#include "mewm/core/volume_file.h"

namespace mewm::dicom {
namespace {

namespace fs = std::filesystem;

class DicomImportTest : public ::testing::Test {
 protected:
  /// Writes the fixture into a subfolder; false (the test skips) without pydicom or nibabel.
  bool Fixture(const std::string& name, double tilt_mm = 0.0) {
    const std::string command = "/usr/bin/python3 " MEWM_SOURCE_DIR
                                "/tests/tools/dicom_import_test.py --write-fixture " +
                                dir_.File(name) + " " + std::to_string(tilt_mm) + " > " +
                                dir_.File(name + ".log") + " 2>&1";
    const int rc = std::system(command.c_str());
    return WIFEXITED(rc) && WEXITSTATUS(rc) == 0;
  }
  testing::TempDir dir_;
};

TEST_F(DicomImportTest, SeriesByPydicomMatchesTheNiftiItWasWrittenFrom) {
  if (!Fixture("a")) GTEST_SKIP() << "needs /usr/bin/python3 with pydicom and nibabel";
  auto scan = ScanFolder(dir_.File("a/series"));
  ASSERT_TRUE(scan) << scan.error().message;
  EXPECT_EQ(scan->files, 13);
  EXPECT_EQ(scan->not_dicom, 1);  // README.txt
  ASSERT_EQ(scan->series.size(), 1u);
  EXPECT_EQ(scan->series[0].files, 12);
  EXPECT_EQ(scan->series[0].modality, "CT");
  EXPECT_NE(DescribeSeries(*scan).find("\"pydicom CT\""), std::string::npos);

  auto imported = ImportSeries(dir_.File("a/series"));
  ASSERT_TRUE(imported) << imported.error().message;
  EXPECT_EQ(imported->slices, 12);
  EXPECT_NEAR(imported->slice_step_mm, 2.5, 1e-6);
  EXPECT_EQ(imported->set.metadata.patient_id, "DCM001");
  EXPECT_EQ(imported->set.metadata.units, "HU");
  auto source = ReadVolumeFile(dir_.File("a/source.nii.gz"), NiftiKind::kScalar, "ct");
  ASSERT_TRUE(source) << source.error().message;
  const Volume& expected = source->scalars.at("ct");
  const Volume& ct = imported->set.scalars.at("ct");
  EXPECT_TRUE(ct.geometry().ApproxEquals(expected.geometry(), 1e-4))
      << ct.geometry().ToString() << "\nvs\n"
      << expected.geometry().ToString();
  ASSERT_EQ(ct.extent(), expected.extent());
  const auto a = ct.ToDense(), b = expected.ToDense();
  EXPECT_EQ(a.data, b.data);  // HU = stored x 0.5 - 1024, exactly
}

TEST_F(DicomImportTest, RefusalsAndErrorsNameTheirReason) {
  auto missing = ImportSeries(dir_.File("nowhere"));
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, ErrorCode::kNotFound);
  fs::create_directories(dir_.File("empty"));
  std::ofstream(dir_.File("empty/x.dcm")) << "not really";
  auto empty = ImportSeries(dir_.File("empty"));
  ASSERT_FALSE(empty);
  EXPECT_NE(empty.error().message.find("1 not DICOM"), std::string::npos) << empty.error().message;
  if (!Fixture("tilt", 0.4)) GTEST_SKIP() << "needs /usr/bin/python3 with pydicom and nibabel";
  auto tilted = ImportSeries(dir_.File("tilt/series"));
  ASSERT_FALSE(tilted);
  EXPECT_EQ(tilted.error().code, ErrorCode::kUnsupported);
  EXPECT_NE(tilted.error().message.find("gantry tilt"), std::string::npos);
  ImportOptions options;
  options.series_uid = "1.2.3.4";
  auto unknown = ImportSeries(dir_.File("tilt/series"), options);
  ASSERT_FALSE(unknown);
  EXPECT_NE(unknown.error().message.find("no series 1.2.3.4"), std::string::npos);
  options = {};
  options.max_files = 5;
  auto many = ImportSeries(dir_.File("tilt/series"), options);
  ASSERT_FALSE(many);
  EXPECT_EQ(many.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(many.error().message.find("more than 5 files"), std::string::npos);
}

}  // namespace
}  // namespace mewm::dicom

// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The DICOM reader on series written by pydicom (tests/tools/dicom_import_test.py --write-fixture),
// compared with the NIfTI nibabel wrote them from, read by mewm's NIfTI reader.
#include "mewm/dicom/dicom_import.h"

#include <gtest/gtest.h>

#include <cstdint>
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

  // One slice a link out of the folder: not read (confinement), so nothing is imported rather
  // than a series one slice short.
  fs::create_directories(dir_.File("partial"));
  bool linked = false;
  for (const auto& entry : fs::directory_iterator(dir_.File("a/series"))) {
    const fs::path to = fs::path(dir_.File("partial")) / entry.path().filename();
    if (!linked && entry.path().filename() != "README.txt") {
      fs::create_symlink(entry.path(), to);
      linked = true;
    } else {
      fs::copy_file(entry.path(), to);
    }
  }
  auto partial = ImportSeries(dir_.File("partial"));
  ASSERT_FALSE(partial);
  EXPECT_NE(partial.error().message.find("1 links out of the folder skipped"), std::string::npos)
      << partial.error().message;
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

TEST_F(DicomImportTest, AFileNestedDeeperThanAnyDicomObjectIsRefusedNotParsed) {
  // 20,000 undefined-length sequences, each in an item of the one before (720 KB): DCMTK reads
  // nesting by recursion, and this overflowed the stack (exit 139).
  const auto u16 = [](std::string& out, unsigned v) {
    out.push_back(char(v & 0xFF));
    out.push_back(char(v >> 8));
  };
  const auto u32 = [&](std::string& out, std::uint32_t v) {
    u16(out, v & 0xFFFF);
    u16(out, v >> 16);
  };
  const auto element = [&](std::string& out, unsigned group, unsigned elem, const char* vr,
                           const std::string& value) {
    u16(out, group);
    u16(out, elem);
    out += vr;
    u16(out, unsigned(value.size()));
    out += value;
  };
  std::string meta;
  element(meta, 0x0002, 0x0010, "UI", std::string("1.2.840.10008.1.2.1") + '\0');
  std::string file(128, '\0');
  file += "DICM";
  u16(file, 0x0002);
  u16(file, 0x0000);
  file += "UL";
  u16(file, 4);
  u32(file, std::uint32_t(meta.size()));
  file += meta;
  element(file, 0x0008, 0x0060, "CS", "CT");
  for (int level = 0; level < 20000; ++level) {
    u16(file, 0x0008);
    u16(file, 0x1115);
    file += "SQ";
    u16(file, 0);
    u32(file, 0xFFFFFFFFu);
    u16(file, 0xFFFE);
    u16(file, 0xE000);
    u32(file, 0xFFFFFFFFu);
  }
  for (int level = 0; level < 20000; ++level) {
    for (unsigned delimiter : {0xE00Du, 0xE0DDu}) {
      u16(file, 0xFFFE);
      u16(file, delimiter);
      u32(file, 0);
    }
  }
  fs::create_directories(dir_.File("deep"));
  std::ofstream(dir_.File("deep/a.dcm"), std::ios::binary) << file;
  auto scan = ScanFolder(dir_.File("deep"));
  ASSERT_TRUE(scan) << scan.error().message;
  ASSERT_EQ(scan->damaged.size(), 1u);
  EXPECT_NE(scan->damaged[0].find("nest more than 64 levels"), std::string::npos)
      << scan->damaged[0];
  EXPECT_FALSE(ImportSeries(dir_.File("deep")));
}

}  // namespace
}  // namespace mewm::dicom

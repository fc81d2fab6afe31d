// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/core/nifti_io.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <Eigen/Geometry>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "mewm/core/limits.h"

namespace mewm {
namespace {

namespace fs = std::filesystem;

const std::string kFixtures = std::string(MEWM_TEST_DATA_DIR) + "/nifti";

/// Sets MEWM_MAX_VOXELS for one scope.
class ScopedMaxVoxels {
 public:
  explicit ScopedMaxVoxels(const char* value) { ::setenv("MEWM_MAX_VOXELS", value, 1); }
  ~ScopedMaxVoxels() { ::unsetenv("MEWM_MAX_VOXELS"); }
};

TEST(ImageLimitTest, TheVoxelLimitComesFromTheEnvironment) {
  {
    ScopedMaxVoxels unset("");
    auto limit = MaxImageVoxels();
    ASSERT_TRUE(limit);
    EXPECT_EQ(*limit, 512ull * 512ull * 512ull);
  }
  for (const char* bad : {"abc", "0", "-5", "12x"}) {
    ScopedMaxVoxels set(bad);
    auto limit = MaxImageVoxels();
    ASSERT_FALSE(limit) << bad;
    EXPECT_NE(limit.error().message.find("MEWM_MAX_VOXELS"), std::string::npos);
  }
  ScopedMaxVoxels set("1000");
  ASSERT_TRUE(MaxImageVoxels());
  EXPECT_EQ(*MaxImageVoxels(), 1000u);
  EXPECT_TRUE(CheckImageVoxels("a.nii", "10 x 10 x 10", 1000, 8));
  auto over = CheckImageVoxels("a.nii", "10 x 10 x 11", 1100, 8);
  ASSERT_FALSE(over);
  EXPECT_NE(over.error().message.find("'a.nii'"), std::string::npos) << over.error().message;
  EXPECT_NE(over.error().message.find("10 x 10 x 11 = 1100 voxels"), std::string::npos);

  // ReadNifti and ReadNiftiLabels check it before reading the voxels; the header still reads.
  const std::string path =
      (fs::path(::testing::TempDir()) / ("mewm_limit_" + std::to_string(::getpid()) + ".nii.gz"))
          .string();
  ASSERT_TRUE(WriteNifti(path, DenseFloat({11, 10, 10}, Geometry{}, 1.0f)));
  auto image = ReadNifti(path);
  ASSERT_FALSE(image);
  EXPECT_EQ(image.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(image.error().message.find(path), std::string::npos) << image.error().message;
  EXPECT_FALSE(ReadNiftiLabels(path));
  EXPECT_TRUE(ReadNiftiInfo(path));
  fs::remove(path);
}

// NIFTI_TYPE_* codes (nifti1.h), spelled out so that the test needs no niftilib headers.
constexpr int kInt16 = 4;
constexpr int kInt32 = 8;
constexpr int kFloat32 = 16;

// An oblique, anisotropic grid; `improper` mirrors the k axis (det(direction) = -1).
Geometry ObliqueGeometry(bool improper) {
  Geometry g;
  g.spacing = {0.7, 1.3, 2.5};
  g.origin = {-31.5, 12.25, 47.0};
  g.direction = Eigen::AngleAxisd(0.4, Eigen::Vector3d(1, 2, 3).normalized()).toRotationMatrix();
  if (improper) g.direction.col(2) *= -1.0;
  return g;
}

DenseFloat Ramp(const Geometry& g) {
  DenseFloat image({6, 5, 4}, g);
  for (std::size_t n = 0; n < image.size(); ++n) {
    image.data[n] = 0.125f * static_cast<float>(n) - 3.0f + (n % 7 == 0 ? 1e-3f : 0.0f);
  }
  return image;
}

DenseLabel Labels(const Geometry& g, std::int32_t scale) {
  DenseLabel labels({6, 5, 4}, g);
  for (std::size_t n = 0; n < labels.size(); ++n) {
    labels.data[n] = static_cast<std::int32_t>(n % 9) * scale - 2 * scale;
  }
  return labels;
}

Eigen::Matrix4d RasToLps() { return Eigen::Vector4d(-1, -1, 1, 1).asDiagonal(); }

double MaxAbsDiff(const Eigen::Matrix4d& a, const Eigen::Matrix4d& b) {
  return (a - b).cwiseAbs().maxCoeff();
}

template <typename T>
void Poke(const std::string& path, std::size_t offset, T value) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  ASSERT_TRUE(f.is_open()) << path;
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(reinterpret_cast<const char*>(&value), sizeof value);
  ASSERT_TRUE(f.good()) << path;
}

void WriteRaw(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f << bytes;
}

class NiftiIoTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::path(::testing::TempDir()) /
           ("mewm_nifti_" + std::to_string(::getpid()) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::permissions(dir_, fs::perms::owner_all, fs::perm_options::add, ec);
    fs::remove_all(dir_, ec);
  }
  std::string Path(const std::string& name) const { return (dir_ / name).string(); }
  std::vector<std::string> Listing() const {
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(dir_)) {
      names.push_back(entry.path().filename().string());
    }
    return names;
  }

  fs::path dir_;
};

struct Format {
  NiftiVersion version;
  const char* extension;
};
constexpr Format kFormats[] = {{NiftiVersion::kNifti1, ".nii"},
                               {NiftiVersion::kNifti1, ".nii.gz"},
                               {NiftiVersion::kNifti2, ".nii"},
                               {NiftiVersion::kNifti2, ".nii.gz"}};

// ----------------------------------------------------------------------------------------------
// Round trips

TEST_F(NiftiIoTest, FloatImageRoundTripsThroughEveryFormat) {
  for (const Format& format : kFormats) {
    for (const bool improper : {false, true}) {
      SCOPED_TRACE(std::string("NIfTI-") + std::to_string(static_cast<int>(format.version)) +
                   format.extension + (improper ? " improper" : " proper"));
      const DenseFloat image = Ramp(ObliqueGeometry(improper));
      const std::string path =
          Path(std::string("f") + (improper ? "i" : "p") +
               std::to_string(static_cast<int>(format.version)) + format.extension);
      ASSERT_TRUE(WriteNifti(path, image, format.version).has_value());

      NiftiInfo info;
      Expected<DenseFloat> back = ReadNifti(path, &info);
      ASSERT_TRUE(back.has_value()) << back.error().ToString();
      EXPECT_EQ(back->dims, image.dims);
      ASSERT_EQ(back->data, image.data);  // float32 on disk: bit-exact
      EXPECT_TRUE(back->geometry.ApproxEquals(image.geometry, 1e-5))
          << back->geometry.ToString() << " vs " << image.geometry.ToString();
      EXPECT_LT(MaxAbsDiff(back->geometry.Affine(), image.geometry.Affine()), 1e-5);
      EXPECT_EQ(info.version, static_cast<int>(format.version));
      EXPECT_EQ(info.datatype, kFloat32);
      EXPECT_FALSE(info.integer_datatype);
    }
  }
}

TEST_F(NiftiIoTest, LabelsRoundTripThroughEveryFormat) {
  for (const Format& format : kFormats) {
    for (const std::int32_t scale : {1, 1000, 100000}) {  // int16, int16, int32 on disk
      SCOPED_TRACE(std::string("NIfTI-") + std::to_string(static_cast<int>(format.version)) +
                   format.extension + " scale " + std::to_string(scale));
      const DenseLabel labels = Labels(ObliqueGeometry(scale == 1000), scale);
      const std::string path =
          Path("labels" + std::to_string(scale) + "_" +
               std::to_string(static_cast<int>(format.version)) + format.extension);
      ASSERT_TRUE(WriteNiftiLabels(path, labels, format.version).has_value());

      NiftiInfo info;
      Expected<DenseLabel> back = ReadNiftiLabels(path, &info);
      ASSERT_TRUE(back.has_value()) << back.error().ToString();
      EXPECT_EQ(back->dims, labels.dims);
      EXPECT_EQ(back->data, labels.data);
      EXPECT_TRUE(back->geometry.ApproxEquals(labels.geometry, 1e-5));
      EXPECT_TRUE(info.integer_datatype);
      EXPECT_EQ(info.datatype, scale < 100000 ? kInt16 : kInt32);
    }
  }
}

TEST_F(NiftiIoTest, LabelsReadAsFloatAndFloatsReadAsLabels) {
  const DenseLabel labels = Labels(Geometry::Isotropic(2.0), 3);
  ASSERT_TRUE(WriteNiftiLabels(Path("l.nii"), labels).has_value());
  Expected<DenseFloat> as_float = ReadNifti(Path("l.nii"));
  ASSERT_TRUE(as_float.has_value()) << as_float.error().ToString();
  for (std::size_t n = 0; n < labels.size(); ++n) {
    ASSERT_EQ(as_float->data[n], static_cast<float>(labels.data[n]));
  }
  ASSERT_TRUE(WriteNifti(Path("f.nii.gz"), *as_float).has_value());
  Expected<DenseLabel> as_labels = ReadNiftiLabels(Path("f.nii.gz"));
  ASSERT_TRUE(as_labels.has_value()) << as_labels.error().ToString();
  EXPECT_EQ(as_labels->data, labels.data);
}

TEST_F(NiftiIoTest, WrittenHeaderHasScannerSformAndQformInRasMillimetres) {
  for (const Format& format : kFormats) {
    SCOPED_TRACE(format.extension);
    const DenseFloat image = Ramp(ObliqueGeometry(true));
    const std::string path =
        Path("h" + std::to_string(static_cast<int>(format.version)) + format.extension);
    ASSERT_TRUE(WriteNifti(path, image, format.version).has_value());
    Expected<NiftiInfo> info = ReadNiftiInfo(path);
    ASSERT_TRUE(info.has_value()) << info.error().ToString();
    EXPECT_EQ(info->sform_code, 1);
    EXPECT_EQ(info->qform_code, 1);
    EXPECT_EQ(info->scl_slope, 0.0);
    EXPECT_LT(MaxAbsDiff(info->affine_ras, RasToLps() * image.geometry.Affine()), 1e-5);
  }
}

// The qform alone (sform_code patched to 0) must give the same grid, qfac included.
TEST_F(NiftiIoTest, QformAloneReproducesProperAndImproperGeometry) {
  for (const NiftiVersion version : {NiftiVersion::kNifti1, NiftiVersion::kNifti2}) {
    for (const bool improper : {false, true}) {
      SCOPED_TRACE(std::to_string(static_cast<int>(version)) + (improper ? " improper" : ""));
      const DenseFloat image = Ramp(ObliqueGeometry(improper));
      const std::string path =
          Path("q" + std::to_string(static_cast<int>(version)) + (improper ? "i" : "p") + ".nii");
      ASSERT_TRUE(WriteNifti(path, image, version).has_value());
      if (version == NiftiVersion::kNifti1) {
        Poke<std::int16_t>(path, 254, 0);  // sform_code
      } else {
        Poke<std::int32_t>(path, 348, 0);
      }
      NiftiInfo info;
      Expected<DenseFloat> back = ReadNifti(path, &info);
      ASSERT_TRUE(back.has_value()) << back.error().ToString();
      EXPECT_EQ(info.sform_code, 0);
      EXPECT_EQ(info.qform_code, 1);
      EXPECT_TRUE(back->geometry.ApproxEquals(image.geometry, 1e-5))
          << back->geometry.ToString() << " vs " << image.geometry.ToString();
      EXPECT_NEAR(back->geometry.direction.determinant(), improper ? -1.0 : 1.0, 1e-6);
    }
  }
}

TEST_F(NiftiIoTest, HeaderOnlyReadDoesNotTouchVoxels) {
  DenseFloat image = Ramp(ObliqueGeometry(false));
  ASSERT_TRUE(WriteNifti(Path("a.nii.gz"), image, NiftiVersion::kNifti2).has_value());
  // Cut the compressed stream well after the header: the header still reads, the data does not.
  fs::resize_file(Path("a.nii.gz"), fs::file_size(Path("a.nii.gz")) - 8);
  Expected<NiftiInfo> info = ReadNiftiInfo(Path("a.nii.gz"));
  ASSERT_TRUE(info.has_value()) << info.error().ToString();
  EXPECT_EQ(info->version, 2);
  EXPECT_EQ(info->dims, (Index3{6, 5, 4}));
  EXPECT_EQ(info->datatype, kFloat32);
  EXPECT_FALSE(info->integer_datatype);
  EXPECT_EQ(info->sform_code, 1);
  EXPECT_EQ(info->qform_code, 1);
  EXPECT_LT(MaxAbsDiff(info->affine_ras, RasToLps() * image.geometry.Affine()), 1e-9);
  Expected<DenseFloat> data = ReadNifti(Path("a.nii.gz"));
  ASSERT_FALSE(data.has_value());
  EXPECT_EQ(data.error().code, ErrorCode::kCorruptData);
}

TEST_F(NiftiIoTest, WriteReplacesExistingFileAndLeavesNoTemporaries) {
  const Geometry g = Geometry::Isotropic(1.0);
  ASSERT_TRUE(WriteNifti(Path("a.nii.gz"), DenseFloat({2, 2, 2}, g, 1.0f)).has_value());
  ASSERT_TRUE(WriteNifti(Path("a.nii.gz"), DenseFloat({3, 2, 2}, g, 2.0f)).has_value());
  Expected<DenseFloat> back = ReadNifti(Path("a.nii.gz"));
  ASSERT_TRUE(back.has_value()) << back.error().ToString();
  EXPECT_EQ(back->dims, (Index3{3, 2, 2}));
  EXPECT_EQ(back->data.front(), 2.0f);
  EXPECT_EQ(Listing(), std::vector<std::string>{"a.nii.gz"});
}

TEST_F(NiftiIoTest, UppercaseExtensionsAreNiftiPaths) {
  EXPECT_TRUE(IsNiftiPath("a.nii"));
  EXPECT_TRUE(IsNiftiPath("dir.x/a.b.nii.gz"));
  EXPECT_TRUE(IsNiftiPath("A.NII.GZ"));
  EXPECT_FALSE(IsNiftiPath("a.gz"));
  EXPECT_FALSE(IsNiftiPath("a.nii.bak"));
  EXPECT_FALSE(IsNiftiPath("a.hdr"));
  EXPECT_FALSE(IsNiftiPath(".nii"));
  EXPECT_FALSE(IsNiftiPath("nii"));
  ASSERT_TRUE(WriteNifti(Path("UP.NII.GZ"), Ramp(Geometry::Isotropic(1.0))).has_value());
  Expected<DenseFloat> back = ReadNifti(Path("UP.NII.GZ"));
  ASSERT_TRUE(back.has_value()) << back.error().ToString();
}

// ----------------------------------------------------------------------------------------------
// Compatibility: files written by nibabel (tests/data/nifti/make_fixtures.py)

TEST_F(NiftiIoTest, AgreesWithNibabelOnAffineShapeAndValues) {
  std::ifstream in(kFixtures + "/expected.json");
  ASSERT_TRUE(in.is_open()) << kFixtures;
  const nlohmann::json expected = nlohmann::json::parse(in);
  ASSERT_GE(expected.at("files").size(), 10u);
  for (const auto& [name, want] : expected.at("files").items()) {
    SCOPED_TRACE(name);
    const std::string path = kFixtures + "/" + name;
    Eigen::Matrix4d affine;
    for (int r = 0; r < 4; ++r) {
      for (int c = 0; c < 4; ++c) affine(r, c) = want.at("affine").at(r).at(c).get<double>();
    }

    Expected<NiftiInfo> info = ReadNiftiInfo(path);
    ASSERT_TRUE(info.has_value()) << info.error().ToString();
    EXPECT_LT(MaxAbsDiff(info->affine_ras, affine), 1e-9) << info->affine_ras;
    EXPECT_EQ(info->version, want.at("version").get<int>());
    EXPECT_EQ(info->datatype, want.at("datatype").get<int>());
    EXPECT_EQ(info->sform_code, want.at("sform_code").get<int>());
    EXPECT_EQ(info->qform_code, want.at("qform_code").get<int>());

    Expected<DenseFloat> image = ReadNifti(path);
    ASSERT_TRUE(image.has_value()) << image.error().ToString();
    const auto shape = want.at("shape").get<std::vector<std::int64_t>>();
    ASSERT_GE(shape.size(), 3u);
    EXPECT_EQ(image->dims, (Index3{shape[0], shape[1], shape[2]}));
    EXPECT_LT(MaxAbsDiff(image->geometry.Affine(), RasToLps() * affine), 1e-6);
    for (const auto& voxel : want.at("voxels")) {
      const auto index = voxel.at("index").get<std::vector<std::int64_t>>();
      const double value = voxel.at("value").get<double>();
      EXPECT_NEAR(image->at(index[0], index[1], index[2]), value,
                  1e-6 * std::max(1.0, std::abs(value)))
          << "at (" << index[0] << ", " << index[1] << ", " << index[2] << ")";
    }
  }
}

TEST_F(NiftiIoTest, ReadsNibabelLabelsAndScaledIntegers) {
  Expected<DenseLabel> labels = ReadNiftiLabels(kFixtures + "/labels_uint8.nii");
  ASSERT_TRUE(labels.has_value()) << labels.error().ToString();
  EXPECT_EQ(labels->at(4, 3, 2), (4 + 30 + 200) % 7);
  EXPECT_EQ(labels->at(1, 2, 1), (1 + 20 + 100) % 7);

  NiftiInfo info;
  Expected<DenseFloat> scaled = ReadNifti(kFixtures + "/scaled_int16.nii", &info);
  ASSERT_TRUE(scaled.has_value()) << scaled.error().ToString();
  EXPECT_EQ(info.datatype, kInt16);
  EXPECT_DOUBLE_EQ(info.scl_slope, 0.5);
  EXPECT_DOUBLE_EQ(info.scl_inter, -10.0);
  EXPECT_FLOAT_EQ(scaled->at(3, 2, 1), (3 + 20 + 100) * 0.5f - 10.0f);
  // 0.5 * odd - 10 is not an integer.
  Expected<DenseLabel> not_labels = ReadNiftiLabels(kFixtures + "/scaled_int16.nii");
  ASSERT_FALSE(not_labels.has_value());
  EXPECT_EQ(not_labels.error().code, ErrorCode::kCorruptData);
}

TEST_F(NiftiIoTest, RejectsNibabelFilesThatAreNot3DOrNotFinite) {
  std::ifstream in(kFixtures + "/expected.json");
  const nlohmann::json expected = nlohmann::json::parse(in);
  ASSERT_EQ(expected.at("rejected").size(), 4u);
  for (const auto& [name, want] : expected.at("rejected").items()) {
    SCOPED_TRACE(name);
    Expected<DenseFloat> image = ReadNifti(kFixtures + "/" + name);
    ASSERT_FALSE(image.has_value());
    EXPECT_EQ(ErrorCodeName(image.error().code), want.at("error").get<std::string>());
    EXPECT_NE(image.error().message.find(name), std::string::npos) << image.error().message;
  }
  Expected<NiftiInfo> info4d = ReadNiftiInfo(kFixtures + "/image_4d.nii");
  ASSERT_FALSE(info4d.has_value());
  EXPECT_NE(info4d.error().message.find("5x4x3x2"), std::string::npos) << info4d.error().message;
  Expected<DenseFloat> info2d = ReadNifti(kFixtures + "/image_2d.nii");
  ASSERT_FALSE(info2d.has_value());
  EXPECT_NE(info2d.error().message.find("2-D"), std::string::npos) << info2d.error().message;
}

// ----------------------------------------------------------------------------------------------
// Read errors

TEST_F(NiftiIoTest, MissingFileIsNotFound) {
  for (const char* name : {"missing.nii", "missing.nii.gz"}) {
    Expected<DenseFloat> image = ReadNifti(Path(name));
    ASSERT_FALSE(image.has_value());
    EXPECT_EQ(image.error().code, ErrorCode::kNotFound);
    EXPECT_NE(image.error().message.find(Path(name)), std::string::npos);
  }
  // niftilib would fall back from a.nii to a.nii.gz; we must not.
  ASSERT_TRUE(WriteNifti(Path("a.nii.gz"), Ramp(Geometry::Isotropic(1.0))).has_value());
  Expected<NiftiInfo> info = ReadNiftiInfo(Path("a.nii"));
  ASSERT_FALSE(info.has_value());
  EXPECT_EQ(info.error().code, ErrorCode::kNotFound);
}

TEST_F(NiftiIoTest, FolderIsAnIoError) {
  fs::create_directories(Path("folder.nii"));
  Expected<DenseFloat> image = ReadNifti(Path("folder.nii"));
  ASSERT_FALSE(image.has_value());
  EXPECT_EQ(image.error().code, ErrorCode::kIo);
  EXPECT_NE(image.error().message.find("folder"), std::string::npos);
}

TEST_F(NiftiIoTest, NonNiftiPathIsInvalidArgument) {
  WriteRaw(Path("a.img"), std::string(400, '\0'));
  Expected<NiftiInfo> info = ReadNiftiInfo(Path("a.img"));
  ASSERT_FALSE(info.has_value());
  EXPECT_EQ(info.error().code, ErrorCode::kInvalidArgument);
}

TEST_F(NiftiIoTest, GarbageBytesAreCorruptData) {
  std::string random(1000, '\0');
  std::uint32_t state = 12345;
  for (char& c : random) {
    state = state * 1664525u + 1013904223u;
    c = static_cast<char>(state >> 24);
  }
  std::string fake_header(600, '\x7f');  // sizeof_hdr = 348, but no magic
  const std::int32_t size348 = 348;
  std::memcpy(fake_header.data(), &size348, 4);
  const std::pair<const char*, std::string> cases[] = {
      {"empty.nii", ""},
      {"short.nii", "hello"},
      {"random.nii", random},
      {"random.nii.gz", random},
      {"gzip_magic.nii.gz", "\x1f\x8b\x08\x00garbage"},
      {"analyze.nii", fake_header},
  };
  for (const auto& [name, bytes] : cases) {
    SCOPED_TRACE(name);
    WriteRaw(Path(name), bytes);
    Expected<NiftiInfo> info = ReadNiftiInfo(Path(name));
    ASSERT_FALSE(info.has_value());
    EXPECT_EQ(info.error().code, ErrorCode::kCorruptData) << info.error().ToString();
    EXPECT_NE(info.error().message.find(Path(name)), std::string::npos);
    EXPECT_FALSE(ReadNifti(Path(name)).has_value());
    EXPECT_FALSE(ReadNiftiLabels(Path(name)).has_value());
  }
}

TEST_F(NiftiIoTest, GzipDataNamedNiiIsCorruptDataWithAHint) {
  ASSERT_TRUE(WriteNifti(Path("a.nii.gz"), Ramp(Geometry::Isotropic(1.0))).has_value());
  fs::rename(Path("a.nii.gz"), Path("a.nii"));
  Expected<DenseFloat> image = ReadNifti(Path("a.nii"));
  ASSERT_FALSE(image.has_value());
  EXPECT_EQ(image.error().code, ErrorCode::kCorruptData);
  EXPECT_NE(image.error().message.find(".nii.gz"), std::string::npos) << image.error().message;
}

TEST_F(NiftiIoTest, TruncatedNiiIsCorruptData) {
  for (const NiftiVersion version : {NiftiVersion::kNifti1, NiftiVersion::kNifti2}) {
    const std::string path = Path("t.nii");
    ASSERT_TRUE(WriteNifti(path, Ramp(ObliqueGeometry(false)), version).has_value());
    const std::uintmax_t full = fs::file_size(path);
    for (const std::uintmax_t size :
         {full - 1, full / 2, std::uintmax_t{400}, std::uintmax_t{200}, std::uintmax_t{0}}) {
      SCOPED_TRACE(std::to_string(static_cast<int>(version)) + ": " + std::to_string(size) +
                   " of " + std::to_string(full) + " bytes");
      ASSERT_TRUE(WriteNifti(path, Ramp(ObliqueGeometry(false)), version).has_value());
      fs::resize_file(path, size);
      Expected<DenseFloat> image = ReadNifti(path);
      ASSERT_FALSE(image.has_value());
      EXPECT_EQ(image.error().code, ErrorCode::kCorruptData) << image.error().ToString();
      EXPECT_NE(image.error().message.find(path), std::string::npos);
      EXPECT_FALSE(ReadNiftiLabels(path).has_value());
    }
  }
}

TEST_F(NiftiIoTest, TruncatedNiiGzIsCorruptData) {
  for (const NiftiVersion version : {NiftiVersion::kNifti1, NiftiVersion::kNifti2}) {
    const std::string path = Path("t.nii.gz");
    ASSERT_TRUE(WriteNifti(path, Ramp(ObliqueGeometry(false)), version).has_value());
    const std::uintmax_t full = fs::file_size(path);
    // full - 4 and full - 8 cut only the gzip trailer (length, CRC): the voxels still inflate.
    for (const std::uintmax_t size :
         {full - 1, full - 4, full - 8, full - 12, full / 2, std::uintmax_t{20}}) {
      SCOPED_TRACE(std::to_string(static_cast<int>(version)) + ": " + std::to_string(size) +
                   " of " + std::to_string(full) + " bytes");
      ASSERT_TRUE(WriteNifti(path, Ramp(ObliqueGeometry(false)), version).has_value());
      fs::resize_file(path, size);
      Expected<DenseFloat> image = ReadNifti(path);
      ASSERT_FALSE(image.has_value());
      EXPECT_EQ(image.error().code, ErrorCode::kCorruptData) << image.error().ToString();
      EXPECT_NE(image.error().message.find(path), std::string::npos);
    }
  }
}

TEST_F(NiftiIoTest, GzipChecksumMismatchIsCorruptData) {
  const std::string path = Path("c.nii.gz");
  ASSERT_TRUE(WriteNifti(path, Ramp(ObliqueGeometry(false))).has_value());
  const std::uintmax_t size = fs::file_size(path);
  Poke<std::uint32_t>(path, size - 8, 0xdeadbeef);  // the CRC-32
  Expected<DenseFloat> image = ReadNifti(path);
  ASSERT_FALSE(image.has_value());
  EXPECT_EQ(image.error().code, ErrorCode::kCorruptData) << image.error().ToString();
}

TEST_F(NiftiIoTest, DataLongAfterTheVoxelsOfANiiGzIsRefusedUnread) {
  // An image followed by compressed zeros: up to 16 MiB are inflated (for the gzip trailer's
  // check) and tolerated; more is refused rather than inflated to the end (20 GiB took minutes).
  for (const std::uint64_t trailing : {std::uint64_t(1) << 20, std::uint64_t(32) << 20}) {
    const std::string plain = Path("tail.nii"), packed = Path("tail.nii.gz");
    ASSERT_TRUE(WriteNifti(plain, Ramp(ObliqueGeometry(false))).has_value());
    std::ofstream(plain, std::ios::binary | std::ios::app) << std::string(trailing, '\0');
    fs::remove(packed);
    ASSERT_EQ(std::system(("gzip -c '" + plain + "' > '" + packed + "'").c_str()), 0);
    Expected<DenseFloat> image = ReadNifti(packed);
    if (trailing <= (std::uint64_t(16) << 20)) {
      EXPECT_TRUE(image.has_value()) << image.error().message;
    } else {
      ASSERT_FALSE(image.has_value());
      EXPECT_EQ(image.error().code, ErrorCode::kCorruptData);
      EXPECT_NE(image.error().message.find("bytes after its voxel data"), std::string::npos)
          << image.error().message;
    }
  }
}

TEST_F(NiftiIoTest, NonFiniteVoxelsAreReportedWithCountAndFirstIndex) {
  for (const NiftiVersion version : {NiftiVersion::kNifti1, NiftiVersion::kNifti2}) {
    const std::string path = Path("nan" + std::to_string(static_cast<int>(version)) + ".nii");
    const DenseFloat image = Ramp(Geometry::Isotropic(1.0));  // dims 6x5x4
    ASSERT_TRUE(WriteNifti(path, image, version).has_value());
    const std::size_t offset = version == NiftiVersion::kNifti1 ? 352 : 544;
    Poke(path, offset + 4 * image.Offset(2, 3, 1), std::numeric_limits<float>::quiet_NaN());
    Poke(path, offset + 4 * image.Offset(5, 0, 3), -std::numeric_limits<float>::infinity());
    Expected<DenseFloat> back = ReadNifti(path);
    ASSERT_FALSE(back.has_value());
    EXPECT_EQ(back.error().code, ErrorCode::kCorruptData);
    EXPECT_NE(back.error().message.find("2 voxel"), std::string::npos) << back.error().message;
    EXPECT_NE(back.error().message.find("(2, 3, 1)"), std::string::npos) << back.error().message;
    EXPECT_NE(back.error().message.find(path), std::string::npos);
    EXPECT_EQ(ReadNiftiLabels(path).error().code, ErrorCode::kCorruptData);
  }
}

TEST_F(NiftiIoTest, NonIntegerLabelsAreCorruptData) {
  DenseFloat image({3, 3, 3}, Geometry::Isotropic(1.0), 4.0f);
  image.at(1, 2, 0) = 1.5f;
  ASSERT_TRUE(WriteNifti(Path("f.nii"), image).has_value());
  Expected<DenseLabel> labels = ReadNiftiLabels(Path("f.nii"));
  ASSERT_FALSE(labels.has_value());
  EXPECT_EQ(labels.error().code, ErrorCode::kCorruptData);
  EXPECT_NE(labels.error().message.find("(1, 2, 0)"), std::string::npos) << labels.error().message;
  EXPECT_NE(labels.error().message.find("1.5"), std::string::npos) << labels.error().message;

  image.at(1, 2, 0) = 3e9f;  // an integer, but not an int32
  ASSERT_TRUE(WriteNifti(Path("g.nii"), image).has_value());
  EXPECT_EQ(ReadNiftiLabels(Path("g.nii")).error().code, ErrorCode::kCorruptData);
}

TEST_F(NiftiIoTest, ShearedAffineIsUnsupportedButHeaderStillReads) {
  const std::string path = Path("shear.nii");
  ASSERT_TRUE(WriteNifti(path, Ramp(Geometry::Isotropic(1.0))).has_value());
  Poke<float>(path, 280 + 4, 0.5f);  // srow_x[1]: x now depends on j
  Expected<NiftiInfo> info = ReadNiftiInfo(path);
  ASSERT_TRUE(info.has_value()) << info.error().ToString();
  EXPECT_DOUBLE_EQ(info->affine_ras(0, 1), 0.5);
  Expected<DenseFloat> image = ReadNifti(path);
  ASSERT_FALSE(image.has_value());
  EXPECT_EQ(image.error().code, ErrorCode::kUnsupported) << image.error().ToString();
}

TEST_F(NiftiIoTest, UnsupportedDatatypeIsUnsupported) {
  const std::string path = Path("complex.nii");
  ASSERT_TRUE(WriteNifti(path, Ramp(Geometry::Isotropic(1.0))).has_value());
  Poke<std::int16_t>(path, 70, 32);  // datatype: complex64
  Poke<std::int16_t>(path, 72, 64);  // bitpix
  Expected<DenseFloat> image = ReadNifti(path);
  ASSERT_FALSE(image.has_value());
  EXPECT_EQ(image.error().code, ErrorCode::kUnsupported) << image.error().ToString();
}

TEST_F(NiftiIoTest, HeaderClaimingMoreDataThanTheFileHoldsIsCorruptData) {
  const std::string path = Path("huge.nii");
  ASSERT_TRUE(WriteNifti(path, Ramp(Geometry::Isotropic(1.0))).has_value());
  for (int d = 1; d <= 3; ++d) Poke<std::int16_t>(path, 40 + 2 * d, 30000);  // dim[1..3]
  Expected<DenseFloat> plain = ReadNifti(path);
  ASSERT_FALSE(plain.has_value());
  EXPECT_EQ(plain.error().code, ErrorCode::kCorruptData);
  // The gzip variant of this is the fixture implausible_size.nii.gz (expected.json, "rejected").
}

TEST_F(NiftiIoTest, AnOffsetThatIsNoNumberIsNamedAsStored) {
  // NIfTI-1 stores vox_offset as a float; NaN and 1e30 were reported as "vox_offset -1".
  const std::string path = Path("offset.nii");
  for (const auto& [value, shown] : {std::pair{std::nanf(""), "vox_offset nan "},
                                     {1e30f, "vox_offset 1e+30 "},
                                     {-5.0f, "vox_offset -5 "}}) {
    ASSERT_TRUE(WriteNifti(path, Ramp(Geometry::Isotropic(1.0))).has_value());
    Poke<float>(path, 108, value);
    Expected<NiftiInfo> info = ReadNiftiInfo(path);
    ASSERT_FALSE(info.has_value()) << shown;
    EXPECT_EQ(info.error().code, ErrorCode::kCorruptData);
    EXPECT_NE(info.error().message.find(std::string(shown) + "is not a byte offset"),
              std::string::npos)
        << info.error().message;
  }
}

// ----------------------------------------------------------------------------------------------
// Write errors

TEST_F(NiftiIoTest, WriteRejectsNonNiftiExtension) {
  const DenseFloat image = Ramp(Geometry::Isotropic(1.0));
  for (const char* name : {"a.nii.bak", "a.gz", "a.img", "a"}) {
    Status status = WriteNifti(Path(name), image);
    ASSERT_FALSE(status.has_value()) << name;
    EXPECT_EQ(status.error().code, ErrorCode::kInvalidArgument);
    EXPECT_FALSE(WriteNiftiLabels(Path(name), Labels(Geometry::Isotropic(1.0), 1)).has_value());
  }
  EXPECT_TRUE(Listing().empty());
}

TEST_F(NiftiIoTest, WriteRejectsEmptyOrInconsistentImages) {
  const Geometry g = Geometry::Isotropic(1.0);
  DenseFloat empty;
  EXPECT_EQ(WriteNifti(Path("e.nii"), empty).error().code, ErrorCode::kInvalidArgument);
  DenseFloat zero_dim({4, 0, 2}, g);
  EXPECT_EQ(WriteNifti(Path("z.nii"), zero_dim).error().code, ErrorCode::kInvalidArgument);
  DenseFloat mismatch({2, 2, 2}, g);
  mismatch.data.pop_back();
  EXPECT_EQ(WriteNifti(Path("m.nii"), mismatch).error().code, ErrorCode::kInvalidArgument);
  DenseLabel label_mismatch({2, 2, 2}, g);
  label_mismatch.dims = {2, 2, 3};
  EXPECT_EQ(WriteNiftiLabels(Path("l.nii"), label_mismatch).error().code,
            ErrorCode::kInvalidArgument);
  DenseFloat bad_geometry({2, 2, 2}, g);
  bad_geometry.geometry.spacing[1] = 0.0;
  EXPECT_EQ(WriteNifti(Path("g.nii"), bad_geometry).error().code, ErrorCode::kInvalidArgument);
  DenseFloat too_wide({40000, 1, 1}, g);
  EXPECT_EQ(WriteNifti(Path("w.nii"), too_wide).error().code, ErrorCode::kInvalidArgument);
  EXPECT_TRUE(WriteNifti(Path("w.nii"), too_wide, NiftiVersion::kNifti2).has_value());
  EXPECT_EQ(Listing(), std::vector<std::string>{"w.nii"});
}

TEST_F(NiftiIoTest, WriteRejectsNonFiniteVoxels) {
  DenseFloat image({3, 3, 3}, Geometry::Isotropic(1.0));
  image.at(2, 1, 0) = std::numeric_limits<float>::quiet_NaN();
  Status status = WriteNifti(Path("nan.nii"), image);
  ASSERT_FALSE(status.has_value());
  EXPECT_EQ(status.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(status.error().message.find("(2, 1, 0)"), std::string::npos) << status.error().message;
  EXPECT_TRUE(Listing().empty());
}

TEST_F(NiftiIoTest, MissingFolderFailsAndLeavesNoFile) {
  Status status = WriteNifti(Path("no/such/a.nii"), Ramp(Geometry::Isotropic(1.0)));
  ASSERT_FALSE(status.has_value());
  EXPECT_EQ(status.error().code, ErrorCode::kIo);
  EXPECT_TRUE(Listing().empty());
}

TEST_F(NiftiIoTest, UnwritableFolderFailsAndLeavesNoFile) {
  const std::string folder = Path("locked");
  fs::create_directories(folder);
  fs::permissions(folder, fs::perms::owner_read | fs::perms::owner_exec);
  if (::access(folder.c_str(), W_OK) == 0) {
    GTEST_SKIP() << "running with privileges that ignore folder permissions";
  }
  for (const char* name : {"/a.nii", "/a.nii.gz"}) {
    Status status = WriteNifti(folder + name, Ramp(Geometry::Isotropic(1.0)));
    ASSERT_FALSE(status.has_value());
    EXPECT_EQ(status.error().code, ErrorCode::kIo);
    EXPECT_NE(status.error().message.find(folder + name), std::string::npos);
  }
  fs::permissions(folder, fs::perms::owner_all);
  EXPECT_TRUE(fs::is_empty(folder));
}

// A folder nobody can create files in, not even root: exercises the writer's own failure path.
TEST_F(NiftiIoTest, WriteThatCannotCreateTheFileFailsCleanly) {
  if (!fs::is_directory("/proc/self")) GTEST_SKIP() << "no /proc";
  for (const char* name : {"/proc/self/mewm.nii", "/proc/self/mewm.nii.gz"}) {
    Status status = WriteNiftiLabels(name, Labels(Geometry::Isotropic(1.0), 1));
    ASSERT_FALSE(status.has_value());
    EXPECT_EQ(status.error().code, ErrorCode::kIo) << status.error().ToString();
    EXPECT_FALSE(fs::exists(name));
  }
}

}  // namespace
}  // namespace mewm

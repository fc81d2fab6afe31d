// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/core/vdb_io.h"

#include <gtest/gtest.h>
#include <sys/resource.h>

#include <Eigen/Geometry>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "mewm/core/file_util.h"
#include "test_env.h"

namespace mewm {
namespace {

class VdbIoTest : public testing::VdbTest {
 protected:
  static VolumeSet Patient() {
    Geometry g;
    g.spacing = Eigen::Vector3d(0.9, 0.9, 2.0);
    g.origin = Eigen::Vector3d(-50, -60, 20);
    g.direction = Eigen::AngleAxisd(0.25, Eigen::Vector3d(1, 2, 3).normalized()).toRotationMatrix();
    DenseFloat ct({24, 20, 10}, g, -1000.0f);
    DenseLabel tumor({24, 20, 10}, g, 0);
    for (int k = 2; k < 8; ++k)
      for (int j = 3; j < 17; ++j)
        for (int i = 2; i < 22; ++i) {
          ct.at(i, j, k) = 40.0f + 0.5f * float(i + j + k);
          if (i > 8 && i < 13 && j > 8 && j < 12) tumor.at(i, j, k) = 1;
        }
    VolumeSet set;
    set.metadata.patient_id = "P007";
    set.metadata.provenance_json = R"({"generator":"test","seed":7})";
    set.scalars.emplace("ct", *Volume::FromDense(ct, "ct"));
    set.labels.emplace("tumor", *LabelVolume::FromDense(tumor, "tumor"));
    return set;
  }
  testing::TempDir dir_;
};

TEST_F(VdbIoTest, RoundTripKeepsGridsGeometryValuesAndMetadata) {
  const VolumeSet set = Patient();
  const std::string path = dir_.File("p.vdb");
  ASSERT_TRUE(WriteVdb(path, set));
  auto back = ReadVdb(path);
  ASSERT_TRUE(back) << back.error().ToString();
  EXPECT_EQ(back->metadata.patient_id, "P007");
  EXPECT_EQ(back->metadata.modality, "CT");
  EXPECT_EQ(back->metadata.units, "HU");
  EXPECT_EQ(back->metadata.provenance_json, set.metadata.provenance_json);
  EXPECT_EQ(back->GridNames(), (std::vector<std::string>{"ct", "tumor"}));
  auto ct = back->Scalar("ct");
  ASSERT_TRUE(ct);
  EXPECT_EQ(ct->extent(), (Index3{24, 20, 10}));
  EXPECT_TRUE(ct->geometry().ApproxEquals(set.scalars.at("ct").geometry(), 1e-9));
  EXPECT_EQ(ct->ToDense().data, set.scalars.at("ct").ToDense().data);
  auto tumor = back->Label("tumor");
  ASSERT_TRUE(tumor);
  EXPECT_EQ(tumor->ToDense().data, set.labels.at("tumor").ToDense().data);
}

TEST_F(VdbIoTest, AnUnusableTransformInTheFileIsAnErrorNotACrash) {
  // A voxel size of 0 or a NaN origin, patched into a valid file: OpenVDB threw while inverting the
  // map, out of ReadVdb (`mewm inspect` exited 70).
  Geometry g;
  g.spacing = Eigen::Vector3d(0.8125, 0.8125, 0.8125);
  g.origin = Eigen::Vector3d(-51.375, 7.0, 3.0);
  DenseFloat ct({8, 8, 8}, g, 10.0f);
  VolumeSet set;
  set.scalars.emplace("ct", *Volume::FromDense(ct, "ct"));
  const std::string path = dir_.File("p.vdb");
  ASSERT_TRUE(WriteVdb(path, set));
  ASSERT_TRUE(ReadVdb(path));
  const std::string bytes = *ReadFile(path);
  const auto patched = [&](double from, double to) {
    std::string text = bytes, a(8, '\0'), b(8, '\0');
    std::memcpy(a.data(), &from, 8);
    std::memcpy(b.data(), &to, 8);
    int count = 0;
    for (auto at = text.find(a); at != std::string::npos; at = text.find(a, at + 8), ++count) {
      text.replace(at, 8, b);
    }
    EXPECT_GT(count, 0) << from;
    const std::string out = dir_.File("patched.vdb");
    std::ofstream(out, std::ios::binary) << text;
    return out;
  };
  for (const auto& [from, to] : std::vector<std::pair<double, double>>{
           {0.8125, 0.0}, {0.8125, 1e-300}, {-51.375, std::nan("")}, {-51.375, 1e30}}) {
    auto read = ReadVdb(patched(from, to));
    ASSERT_FALSE(read) << from << " -> " << to;
    EXPECT_NE(read.error().message.find("'ct'"), std::string::npos) << read.error().message;
  }
}

TEST_F(VdbIoTest, HalfFloatStorageKeepsValuesWithinHalfAHounsfieldUnit) {
  const VolumeSet set = Patient();
  ASSERT_TRUE(WriteVdb(dir_.File("full.vdb"), set));
  ASSERT_TRUE(WriteVdb(dir_.File("half.vdb"), set, VdbWriteOptions{true}));
  auto back = ReadVdb(dir_.File("half.vdb"));
  ASSERT_TRUE(back);
  const DenseFloat a = set.scalars.at("ct").ToDense();
  const DenseFloat b = back->scalars.at("ct").ToDense();
  for (std::size_t n = 0; n < a.data.size(); ++n) ASSERT_NEAR(a.data[n], b.data[n], 0.5);
  EXPECT_EQ(back->labels.at("tumor").ToDense().data, set.labels.at("tumor").ToDense().data);
}

TEST_F(VdbIoTest, ValuesAHalfCannotHoldAreRefusedNotStoredAsInfinity) {
  // 65504 is the largest half; OpenVDB wrote 100000 as inf without a word.
  VolumeSet set = Patient();
  DenseFloat dense = set.scalars.at("ct").ToDense();
  ASSERT_TRUE(WriteVdb(dir_.File("edge.vdb"), set, VdbWriteOptions{true}));
  dense.data[dense.data.size() / 2] = 100000.0f;
  set.scalars.insert_or_assign("ct", *Volume::FromDense(dense, "ct"));
  const Status refused = WriteVdb(dir_.File("over.vdb"), set, VdbWriteOptions{true});
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(refused.error().message.find("to 100000"), std::string::npos)
      << refused.error().message;
  EXPECT_NE(refused.error().message.find("without --half"), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(dir_.File("over.vdb")));
  EXPECT_TRUE(WriteVdb(dir_.File("full.vdb"), set));  // full floats hold it
}

TEST_F(VdbIoTest, AGridBelowIndexZeroIsNamedAsSuchNotAsTooManyVoxels) {
  // A foreign grid (no extent of mewm's) whose only voxel lies at negative indices.
  openvdb::FloatGrid::Ptr grid = openvdb::FloatGrid::create(-1000.0f);
  grid->tree().setValue(openvdb::Coord(-5, -5, -5), 40.0f);
  grid->setName("ct");
  openvdb::io::File file(dir_.File("below.vdb"));
  file.write({grid});
  file.close();
  auto read = ReadVdb(dir_.File("below.vdb"));
  ASSERT_FALSE(read);
  EXPECT_EQ(read.error().code, ErrorCode::kCorruptData) << read.error().message;
  EXPECT_NE(read.error().message.find("extent -4 x -4 x -4 is negative"), std::string::npos)
      << read.error().message;
}

TEST_F(VdbIoTest, SameGridsGiveByteIdenticalFiles) {
  const VolumeSet set = Patient();
  ASSERT_TRUE(WriteVdb(dir_.File("a.vdb"), set));
  ASSERT_TRUE(WriteVdb(dir_.File("b.vdb"), set));
  EXPECT_EQ(*ReadFile(dir_.File("a.vdb")), *ReadFile(dir_.File("b.vdb")));
  ASSERT_TRUE(ReadVdb(dir_.File("a.vdb")));  // the rewritten UUID keeps the file valid
}

TEST_F(VdbIoTest, MissingGridNamesTheGridsThatExist) {
  const std::string path = dir_.File("p.vdb");
  ASSERT_TRUE(WriteVdb(path, Patient()));
  auto back = ReadVdb(path);
  ASSERT_TRUE(back);
  auto liver = back->Label("liver");
  ASSERT_FALSE(liver);
  EXPECT_EQ(liver.error().code, ErrorCode::kNotFound);
  EXPECT_NE(liver.error().message.find("'liver'"), std::string::npos);
  EXPECT_NE(liver.error().message.find("ct, tumor"), std::string::npos);
}

TEST_F(VdbIoTest, StockVdbPrintListsTheGrids) {
  if (std::system("command -v vdb_print >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "vdb_print (libopenvdb-tools) is not installed";
  }
  const std::string path = dir_.File("p.vdb");
  ASSERT_TRUE(WriteVdb(path, Patient()));
  const std::string out = dir_.File("print.txt");
  ASSERT_EQ(std::system(("vdb_print " + path + " > " + out + " 2>&1").c_str()), 0);
  auto text = ReadFile(out);
  ASSERT_TRUE(text);
  EXPECT_NE(text->find("ct"), std::string::npos);
  EXPECT_NE(text->find("tumor"), std::string::npos);
}

TEST_F(VdbIoTest, MissingFileIsNotFound) {
  auto r = ReadVdb(dir_.File("nope.vdb"));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
  EXPECT_NE(r.error().message.find("nope.vdb"), std::string::npos);
}

TEST_F(VdbIoTest, GarbageFileIsCorruptData) {
  const std::string path = dir_.File("garbage.vdb");
  ASSERT_TRUE(WriteFileAtomic(path, std::string(4096, 'x')));
  auto r = ReadVdb(path);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::kCorruptData);
  EXPECT_NE(r.error().message.find("garbage.vdb"), std::string::npos);
}

TEST_F(VdbIoTest, TruncatedFilesFailCleanlyAtEveryCut) {
  const std::string path = dir_.File("p.vdb");
  ASSERT_TRUE(WriteVdb(path, Patient()));
  const auto size = std::filesystem::file_size(path);
  for (double fraction : {0.0, 0.05, 0.2, 0.5, 0.8, 0.95, 0.999}) {
    const std::string cut = dir_.File("cut.vdb");
    std::filesystem::copy_file(path, cut, std::filesystem::copy_options::overwrite_existing);
    testing::Truncate(cut, std::uintmax_t(double(size) * fraction));
    auto r = ReadVdb(cut);
    EXPECT_FALSE(r) << "truncated at " << fraction;
    if (!r) {
      EXPECT_EQ(r.error().code, ErrorCode::kCorruptData);
    }
  }
}

TEST_F(VdbIoTest, WriteRejectsBadPathsAndLeavesNothingBehind) {
  auto bad_ext = WriteVdb(dir_.File("p.nii"), Patient());
  ASSERT_FALSE(bad_ext);
  EXPECT_EQ(bad_ext.error().code, ErrorCode::kInvalidArgument);
  auto no_dir = WriteVdb(dir_.File("missing/p.vdb"), Patient());
  ASSERT_FALSE(no_dir);
  EXPECT_EQ(no_dir.error().code, ErrorCode::kIo);
  EXPECT_TRUE(std::filesystem::is_empty(dir_.path()));
}

TEST_F(VdbIoTest, AShortWriteIsAnErrorAndLeavesNothingBehind) {
  // A full disk, made reproducible by a file-size limit: OpenVDB's stream stops at the limit and
  // reports success; WriteVdb must report the short file and remove it.
  const std::string whole = dir_.File("whole.vdb");
  ASSERT_TRUE(WriteVdb(whole, Patient()));
  rlimit old{};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old), 0);
  rlimit low = old;
  low.rlim_cur = rlim_t(std::filesystem::file_size(whole) / 2);
  const auto previous = std::signal(SIGXFSZ, SIG_IGN);  // EFBIG instead of a fatal signal
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &low), 0);
  auto r = WriteVdb(dir_.File("short.vdb"), Patient());
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &old), 0);
  std::signal(SIGXFSZ, previous);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::kIo);
  EXPECT_NE(r.error().message.find("short write"), std::string::npos) << r.error().message;
  EXPECT_EQ(testing::FileNames(dir_.path().string()), std::set<std::string>{"whole.vdb"});
}

TEST_F(VdbIoTest, DuplicateGridNameIsRejected) {
  VolumeSet set = Patient();
  set.labels.emplace("ct", set.labels.at("tumor"));
  auto r = WriteVdb(dir_.File("p.vdb"), set);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("'ct' used twice"), std::string::npos);
}

}  // namespace
}  // namespace mewm

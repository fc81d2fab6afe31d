// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/core/file_util.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "mewm/core/sha256.h"
#include "test_env.h"

namespace mewm {
namespace {

TEST(ModelChecksumTest, RecordedChecksumsAreVerified) {
  testing::TempDir dir;
  const std::string model = dir.File("model.bin");
  ASSERT_TRUE(WriteFileAtomic(model, "weights"));
  auto unrecorded = VerifyModelChecksum(model);
  ASSERT_TRUE(unrecorded) << unrecorded.error().message;
  EXPECT_FALSE(unrecorded->recorded);
  // sha256("weights"), as sha256sum prints it.
  EXPECT_EQ(unrecorded->sha256, ToHex(Sha256("weights")));
  ASSERT_TRUE(WriteModelChecksum(model));
  auto text = ReadFile(model + ".sha256");
  ASSERT_TRUE(text);
  EXPECT_EQ(*text, unrecorded->sha256 + "  model.bin\n");
  auto recorded = VerifyModelChecksum(model);
  ASSERT_TRUE(recorded);
  EXPECT_TRUE(recorded->recorded);
  auto same = VerifyModelChecksum(model, "weights");
  ASSERT_TRUE(same);
  EXPECT_TRUE(same->recorded);

  ASSERT_TRUE(WriteFileAtomic(model, "weightz"));
  auto damaged = VerifyModelChecksum(model);
  ASSERT_FALSE(damaged);
  EXPECT_EQ(damaged.error().code, ErrorCode::kCorruptData);
  EXPECT_NE(damaged.error().message.find(model), std::string::npos);
  EXPECT_NE(damaged.error().message.find(ToHex(Sha256("weightz"))), std::string::npos);
  EXPECT_NE(damaged.error().message.find(ToHex(Sha256("weights"))), std::string::npos);

  ASSERT_TRUE(WriteFileAtomic(model + ".sha256", "not a checksum\n"));
  auto malformed = VerifyModelChecksum(model);
  ASSERT_FALSE(malformed);
  EXPECT_NE(malformed.error().message.find(model + ".sha256"), std::string::npos);
  EXPECT_EQ(ToHex(Sha256("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(FileUtilTest, AtomicWriteThenRead) {
  testing::TempDir dir;
  ASSERT_TRUE(WriteFileAtomic(dir.File("a.txt"), "hello"));
  auto text = ReadFile(dir.File("a.txt"));
  ASSERT_TRUE(text);
  EXPECT_EQ(*text, "hello");
  ASSERT_TRUE(WriteFileAtomic(dir.File("a.txt"), "again"));
  EXPECT_EQ(*ReadFile(dir.File("a.txt")), "again");
}

TEST(FileUtilTest, FailedWriterLeavesNeitherTargetNorTemporary) {
  testing::TempDir dir;
  auto r = WriteAtomically(dir.File("x.nii.gz"), [](const std::string& temp) -> Status {
    EXPECT_EQ(FileExtension(temp), ".nii.gz");
    EXPECT_TRUE(WriteFileAtomic(temp, "partial"));
    return MakeError(ErrorCode::kIo, "disk full");
  });
  ASSERT_FALSE(r);
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

TEST(FileUtilTest, ErrorsNameThePath) {
  testing::TempDir dir;
  auto missing = ReadFile(dir.File("none.txt"));
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, ErrorCode::kNotFound);
  EXPECT_NE(missing.error().message.find("none.txt"), std::string::npos);
  auto folder = ReadFile(dir.path().string());
  ASSERT_FALSE(folder);
  auto no_parent = WriteFileAtomic(dir.File("a/b/c.txt"), "x");
  ASSERT_FALSE(no_parent);
  EXPECT_EQ(no_parent.error().code, ErrorCode::kIo);
}

TEST(FileUtilTest, ExtensionsAreLowerCaseAndCompound) {
  EXPECT_EQ(FileExtension("/a/b/Scan.NII.GZ"), ".nii.gz");
  EXPECT_EQ(FileExtension("x.vdb"), ".vdb");
  EXPECT_EQ(FileExtension("noext"), "");
  EXPECT_EQ(FileExtension(".hidden"), "");
}

}  // namespace
}  // namespace mewm

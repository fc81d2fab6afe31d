// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/core/file_util.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "test_env.h"

namespace mewm {
namespace {

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

TEST(FileUtilTest, CheckWritableProbesWithoutLeavingFiles) {
  testing::TempDir dir;
  EXPECT_TRUE(CheckWritable(dir.File("model.pt")));
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
  ASSERT_TRUE(WriteFileAtomic(dir.File("kept.txt"), "mine"));
  EXPECT_TRUE(CheckWritable(dir.File("kept.txt")));  // replaceable later, untouched now
  EXPECT_EQ(*ReadFile(dir.File("kept.txt")), "mine");
  auto no_folder = CheckWritable(dir.File("missing/model.pt"));
  ASSERT_FALSE(no_folder);
  EXPECT_NE(no_folder.error().message.find("does not exist"), std::string::npos);
  auto folder = CheckWritable(dir.path().string());
  ASSERT_FALSE(folder);
  EXPECT_NE(folder.error().message.find("folder"), std::string::npos);
  if (::geteuid() != 0) {  // root writes anywhere
    std::filesystem::create_directory(dir.File("ro"));
    std::filesystem::permissions(
        dir.File("ro"), std::filesystem::perms::owner_read | std::filesystem::perms::owner_exec);
    EXPECT_FALSE(CheckWritable(dir.File("ro/model.pt")));
    std::filesystem::permissions(dir.File("ro"), std::filesystem::perms::owner_all);
  }
}

TEST(FileUtilTest, ExtensionsAreLowerCaseAndCompound) {
  EXPECT_EQ(FileExtension("/a/b/Scan.NII.GZ"), ".nii.gz");
  EXPECT_EQ(FileExtension("x.vdb"), ".vdb");
  EXPECT_EQ(FileExtension("noext"), "");
  EXPECT_EQ(FileExtension(".hidden"), "");
}

}  // namespace
}  // namespace mewm

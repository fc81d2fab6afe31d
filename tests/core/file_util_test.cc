// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/core/file_util.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include "mewm/core/regular_file.h"
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

  // A checksum file is found, not named: one that is no regular file, or a link that leads
  // nowhere, is refused, not read (a FIFO blocked every load) nor taken for absent.
  std::filesystem::remove(model + ".sha256");
  ASSERT_EQ(::mkfifo((model + ".sha256").c_str(), 0600), 0);
  auto fifo = VerifyModelChecksum(model);
  ASSERT_FALSE(fifo);
  EXPECT_NE(fifo.error().message.find("expected a regular file"), std::string::npos)
      << fifo.error().message;
  std::filesystem::remove(model + ".sha256");
  std::filesystem::create_symlink(dir.File("nowhere"), model + ".sha256");
  EXPECT_FALSE(VerifyModelChecksum(model));
  std::filesystem::remove(model + ".sha256");

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
  // A device never ends: /dev/zero given as a calibration read until memory ran out.
  for (const char* device : {"/dev/zero", "/dev/null"}) {
    auto read = ReadFile(device);
    ASSERT_FALSE(read) << device;
    EXPECT_EQ(read.error().code, ErrorCode::kInvalidArgument);
    EXPECT_NE(read.error().message.find(std::string(device) + "' is a device"), std::string::npos)
        << read.error().message;
  }
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

TEST(FileUtilTest, ReadRegularFileRefusesFifosDevicesFoldersAndLargeFilesWithoutReading) {
  testing::TempDir dir;
  ASSERT_TRUE(WriteFileAtomic(dir.File("ok.txt"), "twelve bytes"));
  auto ok = ReadRegularFile(dir.File("ok.txt"), 12);
  ASSERT_TRUE(ok) << ok.error().message;
  EXPECT_EQ(*ok, "twelve bytes");
  auto large = ReadRegularFile(dir.File("ok.txt"), 11);
  ASSERT_FALSE(large);
  EXPECT_EQ(large.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(large.error().message.find("too large"), std::string::npos);
  EXPECT_NE(large.error().message.find("ok.txt"), std::string::npos);
  // A FIFO with no writer would block a plain read forever; it is refused at once.
  ASSERT_EQ(::mkfifo(dir.File("fifo").c_str(), 0600), 0);
  auto fifo = ReadRegularFile(dir.File("fifo"), 1 << 20);
  ASSERT_FALSE(fifo);
  EXPECT_NE(fifo.error().message.find("a FIFO, expected a regular file"), std::string::npos)
      << fifo.error().message;
  // /dev/zero never ends: a plain read grows until bad_alloc.
  auto zero = ReadRegularFile("/dev/zero", 1 << 20);
  ASSERT_FALSE(zero);
  EXPECT_NE(zero.error().message.find("character device"), std::string::npos);
  auto folder = ReadRegularFile(dir.path().string(), 1 << 20);
  ASSERT_FALSE(folder);
  EXPECT_NE(folder.error().message.find("a folder"), std::string::npos);
  auto missing = ReadRegularFile(dir.File("none"), 1 << 20);
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, ErrorCode::kNotFound);
}

TEST(FileUtilTest, RegularFileOpensWithTheSameChecksAndReadsInPieces) {
  testing::TempDir dir;
  ASSERT_TRUE(WriteFileAtomic(dir.File("ok.txt"), "twelve bytes"));
  auto opened = RegularFile::Open(dir.File("ok.txt"), 12);
  ASSERT_TRUE(opened) << opened.error().message;
  RegularFile file = std::move(*opened);  // moved: the new owner reads, the old closes nothing
  EXPECT_EQ(file.size(), 12u);
  char piece[5] = {};
  std::string read;
  for (;;) {
    auto n = file.Read(piece, sizeof(piece));
    ASSERT_TRUE(n) << n.error().message;
    if (*n == 0) break;
    EXPECT_LE(*n, sizeof(piece));
    read.append(piece, *n);
  }
  EXPECT_EQ(read, "twelve bytes");
  // Every refusal of ReadRegularFile, before anything is read.
  auto large = RegularFile::Open(dir.File("ok.txt"), 11);
  ASSERT_FALSE(large);
  EXPECT_EQ(large.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(large.error().message.find("too large"), std::string::npos);
  ASSERT_EQ(::mkfifo(dir.File("fifo").c_str(), 0600), 0);
  auto fifo = RegularFile::Open(dir.File("fifo"), 1 << 20);
  ASSERT_FALSE(fifo);
  EXPECT_NE(fifo.error().message.find("a FIFO"), std::string::npos);
  auto zero = RegularFile::Open("/dev/zero", 1 << 20);
  ASSERT_FALSE(zero);
  EXPECT_NE(zero.error().message.find("character device"), std::string::npos);
  auto folder = RegularFile::Open(dir.path().string(), 1 << 20);
  ASSERT_FALSE(folder);
  EXPECT_NE(folder.error().message.find("a folder"), std::string::npos);
  auto missing = RegularFile::Open(dir.File("none"), 1 << 20);
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, ErrorCode::kNotFound);
  // Opened files are closed: a thousand opens leave no descriptor behind.
  const auto open_fds = [] {
    std::size_t n = 0;
    for ([[maybe_unused]] const auto& entry :
         std::filesystem::directory_iterator("/proc/self/fd")) {
      ++n;
    }
    return n;
  };
  const std::size_t before = open_fds();
  for (int i = 0; i < 1000; ++i) {
    auto again = RegularFile::Open(dir.File("ok.txt"), 12);
    ASSERT_TRUE(again);
    RegularFile moved = std::move(*again);
    moved = std::move(*RegularFile::Open(dir.File("ok.txt"), 12));
    auto refused = RegularFile::Open(dir.File("ok.txt"), 11);
    ASSERT_FALSE(refused);
  }
  EXPECT_EQ(open_fds(), before);
}

TEST(FileUtilTest, IsPathInsideComparesResolvedComponents) {
  testing::TempDir dir;
  const std::string root = dir.File("root");
  std::filesystem::create_directories(root + "/a");
  std::filesystem::create_directories(dir.File("outside"));
  std::filesystem::create_directory_symlink(dir.File("outside"), root + "/link");
  EXPECT_TRUE(IsPathInside(root, root));
  EXPECT_TRUE(IsPathInside(root + "/", root));
  EXPECT_TRUE(IsPathInside(root + "/a/new/file", root + "/"));
  EXPECT_TRUE(IsPathInside(root + "/a/../b", root));
  EXPECT_FALSE(IsPathInside(root + "/a/../../outside", root));
  EXPECT_FALSE(IsPathInside(root + "2/x", root));      // a sibling whose name starts alike
  EXPECT_FALSE(IsPathInside(root + "/link/x", root));  // a symbolic link that leads out
  EXPECT_FALSE(IsPathInside(root + "/link", root));
  EXPECT_FALSE(IsPathInside("/etc/passwd", root));
  EXPECT_TRUE(IsPathInside("/etc/passwd", "/"));
  EXPECT_EQ(ResolvedPath(root + "/link/x/"), ResolvedPath(dir.File("outside")) + "/x");
}

TEST(FileUtilTest, ExtensionsAreLowerCaseAndCompound) {
  EXPECT_EQ(FileExtension("/a/b/Scan.NII.GZ"), ".nii.gz");
  EXPECT_EQ(FileExtension("x.vdb"), ".vdb");
  EXPECT_EQ(FileExtension("noext"), "");
  EXPECT_EQ(FileExtension(".hidden"), "");
}

}  // namespace
}  // namespace mewm

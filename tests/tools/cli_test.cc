// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Runs the real `mewm` binary on real files and checks exit codes, outputs and messages.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <thread>

#include "../core/test_env.h"
#include "mewm/core/nifti_io.h"
#include "mewm/core/render.h"
#include "mewm/core/vdb_io.h"

namespace mewm {
namespace {

struct Result {
  int code = -1;
  std::string output;  // stdout and stderr together
};

Result RunMewm(const std::string& args) {
  Result r;
  const std::string command = std::string(MEWM_CLI) + " " + args + " 2>&1";
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) return r;
  std::array<char, 4096> buffer{};
  std::size_t n;
  while ((n = std::fread(buffer.data(), 1, buffer.size(), pipe)) > 0)
    r.output.append(buffer.data(), n);
  const int status = ::pclose(pipe);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

class CliTest : public testing::VdbTest {
 protected:
  void SetUp() override {
    Geometry g;
    g.spacing = Eigen::Vector3d(0.8, 0.8, 2.0);
    g.origin = Eigen::Vector3d(-10, -20, 30);
    DenseFloat ct({20, 18, 6}, g, -1000.0f);
    DenseLabel tumor({20, 18, 6}, g, 0);
    for (int k = 0; k < 6; ++k)
      for (int j = 2; j < 16; ++j)
        for (int i = 2; i < 18; ++i) {
          ct.at(i, j, k) = 55.0f + float(i);
          if (i > 8 && i < 12 && j > 7 && j < 11) tumor.at(i, j, k) = 1;
        }
    ct_path_ = dir_.File("ct.nii.gz");
    tumor_path_ = dir_.File("tumor.nii.gz");
    ASSERT_TRUE(WriteNifti(ct_path_, ct));
    ASSERT_TRUE(WriteNiftiLabels(tumor_path_, tumor));
  }
  testing::TempDir dir_;
  std::string ct_path_, tumor_path_;
};

TEST_F(CliTest, VersionAndHelp) {
  const Result version = RunMewm("--version");
  EXPECT_EQ(version.code, 0);
  EXPECT_NE(version.output.find("mewm 0."), std::string::npos);
  for (const char* sub : {"inspect", "convert", "render", "bench", "cohort", "cohort generate"}) {
    const Result help = RunMewm(std::string(sub) + " --help");
    EXPECT_EQ(help.code, 0) << sub;
    EXPECT_NE(help.output.find("Usage"), std::string::npos) << sub;
  }
  EXPECT_NE(RunMewm("frobnicate").code, 0);
}

TEST_F(CliTest, ConvertNiftiToVdbAndBackThenInspect) {
  const std::string vdb = dir_.File("ct.vdb");
  const std::string back = dir_.File("back.nii");
  Result r = RunMewm("convert " + ct_path_ + " " + vdb + " --patient-id P1");
  ASSERT_EQ(r.code, 0) << r.output;
  r = RunMewm("convert " + vdb + " " + back);
  ASSERT_EQ(r.code, 0) << r.output;
  auto a = ReadNifti(ct_path_);
  auto b = ReadNifti(back);
  ASSERT_TRUE(a && b);
  EXPECT_EQ(a->data, b->data);
  EXPECT_TRUE(a->geometry.ApproxEquals(b->geometry, 1e-5));

  r = RunMewm("inspect " + vdb);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("grid 'ct'"), std::string::npos);
  EXPECT_NE(r.output.find("patient 'P1'"), std::string::npos);
  EXPECT_NE(r.output.find("[20,18,6]"), std::string::npos);
  r = RunMewm("inspect --json " + ct_path_);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("\"affine_ras\""), std::string::npos);
}

TEST_F(CliTest, RenderWithOverlayWritesAPng) {
  const std::string png = dir_.File("slice.png");
  const Result r =
      RunMewm("render " + ct_path_ + " --plane axial --index 3 --window -175,600 --overlay " +
              tumor_path_ + " --out " + png);
  ASSERT_EQ(r.code, 0) << r.output;
  auto image = ReadPng(png);
  ASSERT_TRUE(image);
  EXPECT_EQ(image->width, 20);
}

TEST_F(CliTest, ErrorsExitNonZeroAndNameTheFileAndProblem) {
  Result r = RunMewm("inspect " + dir_.File("missing.vdb"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("missing.vdb"), std::string::npos);
  EXPECT_NE(r.output.find("does not exist"), std::string::npos);

  r = RunMewm("render " + ct_path_ + " --window 600 --out " + dir_.File("x.png"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("--window"), std::string::npos);

  r = RunMewm("render " + ct_path_ + " --index 99 --out " + dir_.File("x.png"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("outside"), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(dir_.File("x.png")));

  r = RunMewm("convert " + ct_path_ + " " + dir_.File("out.mha"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("unknown image format"), std::string::npos);

  std::filesystem::copy_file(ct_path_, dir_.File("cut.nii.gz"));
  testing::Truncate(dir_.File("cut.nii.gz"), std::filesystem::file_size(ct_path_) / 2);
  r = RunMewm("convert " + dir_.File("cut.nii.gz") + " " + dir_.File("cut.vdb"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("cut.nii.gz"), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(dir_.File("cut.vdb")));
}

TEST_F(CliTest, CohortGenerateThenStats) {
  const std::string out = dir_.File("cohort");
  Result r = RunMewm("cohort generate --n 4 --seed 3 --spacing 3 --no-nifti --quiet --out " + out);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(std::filesystem::exists(out + "/patients/P0004/pre.vdb"));
  r = RunMewm("cohort stats " + out + " --hu-patients 2");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("oracle C-index"), std::string::npos);
  EXPECT_NE(r.output.find("liver HU"), std::string::npos);
  r = RunMewm("inspect " + out + "/patients/P0001/pre.vdb");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("grid 'tumor'"), std::string::npos);
}

TEST_F(CliTest, InterruptedCohortLeavesOnlyCompletePatients) {
  const std::string out = dir_.File("interrupted");
  const std::string command = std::string(MEWM_CLI) +
                              " cohort generate --n 40 --spacing 3 --no-nifti --quiet --out " +
                              out + " > /dev/null 2>&1 & echo $!";
  FILE* pipe = ::popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  int pid = 0;
  ASSERT_EQ(std::fscanf(pipe, "%d", &pid), 1);
  ::pclose(pipe);
  // Wait (bounded) until at least one patient is complete, then kill the generator mid-run.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (!std::filesystem::exists(out + "/patients/P0001") &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
  ASSERT_TRUE(std::filesystem::exists(out + "/patients/P0001"));
  EXPECT_FALSE(std::filesystem::exists(out + "/manifest.json"));  // the run did not finish
  for (const auto& entry : std::filesystem::directory_iterator(out + "/patients")) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(".tmp-", 0) == 0) continue;  // hidden, and removed by the next run
    for (const char* file : {"pre.vdb", "post_administered.vdb", "truth.json"}) {
      EXPECT_TRUE(std::filesystem::exists(entry.path() / file)) << name << "/" << file;
    }
  }
  // A rerun with --force completes the cohort and clears the leftovers.
  const Result r =
      RunMewm("cohort generate --n 2 --spacing 3 --no-nifti --quiet --force --out " + out);
  ASSERT_EQ(r.code, 0) << r.output;
  for (const auto& entry : std::filesystem::directory_iterator(out + "/patients")) {
    EXPECT_NE(entry.path().filename().string().rfind(".tmp-", 0), 0u);
  }
}

TEST_F(CliTest, CohortRefusesBadRequests) {
  Result r = RunMewm("cohort generate --n 0 --out " + dir_.File("x"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("--n must be >= 1"), std::string::npos);
  std::filesystem::create_directories(dir_.File("full"));
  std::filesystem::copy_file(ct_path_, dir_.File("full/keep.nii.gz"));
  r = RunMewm("cohort generate --n 1 --spacing 3 --out " + dir_.File("full"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("not empty"), std::string::npos);
  EXPECT_TRUE(std::filesystem::exists(dir_.File("full/keep.nii.gz")));
  r = RunMewm("cohort generate --n 1 --out /proc/mewm-no");
  EXPECT_EQ(r.code, 1);
  r = RunMewm("cohort generate --n abc --out " + dir_.File("y"));
  EXPECT_NE(r.code, 0);
  r = RunMewm("cohort stats " + dir_.File("nothing"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("truth.json"), std::string::npos);
}

}  // namespace
}  // namespace mewm

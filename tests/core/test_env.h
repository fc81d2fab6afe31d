// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Shared test helpers: a per-test temporary folder, and OpenVDB initialisation.
#pragma once

#include <gtest/gtest.h>
#include <openvdb/openvdb.h>
#include <unistd.h>

#include <filesystem>
#include <set>
#include <string>

namespace mewm::testing {

/// A fresh folder under the system temp dir, removed when the object dies.
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = std::string("mewm-") + (info ? info->test_suite_name() : "t") + "-" +
                       (info ? info->name() : "x") + "-" + std::to_string(::getpid());
    path_ = std::filesystem::temp_directory_path() / name;
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  std::string File(const std::string& name) const { return (path_ / name).string(); }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

/// Base fixture for tests that touch OpenVDB.
class VdbTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { openvdb::initialize(); }
};

/// The names of the entries of folder `dir` (files and folders, hidden ones included).
inline std::set<std::string> FileNames(const std::string& dir) {
  std::set<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(dir))
    names.insert(entry.path().filename().string());
  return names;
}

/// Truncates a file to `size` bytes.
inline void Truncate(const std::string& path, std::uintmax_t size) {
  std::filesystem::resize_file(path, size);
}

}  // namespace mewm::testing

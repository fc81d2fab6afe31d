// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/core/file_util.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace mewm {
namespace fs = std::filesystem;

namespace {

std::string TempSibling(const std::string& path) {
  static std::atomic<unsigned> counter{0};
  const fs::path p(path);
  const std::string name = ".tmp-" + std::to_string(::getpid()) + "-" +
                           std::to_string(counter.fetch_add(1)) + "-" + p.filename().string();
  return (p.parent_path() / name).string();
}

}  // namespace

std::string FileExtension(const std::string& path) {
  std::string name = fs::path(path).filename().string();
  std::transform(name.begin(), name.end(), name.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  const auto ends_with = [&](const std::string& s) {
    return name.size() > s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
  };
  if (ends_with(".nii.gz")) return ".nii.gz";
  const auto dot = name.rfind('.');
  if (dot == std::string::npos || dot == 0) return "";
  return name.substr(dot);
}

Status WriteAtomically(const std::string& path,
                       const std::function<Status(const std::string& temp_path)>& writer) {
  const fs::path target(path);
  if (target.filename().empty()) {
    return MakeError(ErrorCode::kInvalidArgument, "output path '" + path + "' names no file");
  }
  std::error_code ec;
  const fs::path parent = target.parent_path().empty() ? fs::path(".") : target.parent_path();
  if (!fs::is_directory(parent, ec)) {
    return MakeError(ErrorCode::kIo, "cannot write '" + path + "': folder '" + parent.string() +
                                         "' does not exist");
  }
  const std::string temp = TempSibling(path);
  Status written = writer(temp);
  if (!written) {
    fs::remove(temp, ec);
    return written;
  }
  if (std::rename(temp.c_str(), path.c_str()) != 0) {
    const std::string reason = std::strerror(errno);
    fs::remove(temp, ec);
    return MakeError(ErrorCode::kIo, "cannot rename into '" + path + "': " + reason);
  }
  return {};
}

Status CheckWritable(const std::string& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    return MakeError(ErrorCode::kIo, "cannot write '" + path + "': it is a folder");
  }
  const std::string probe = TempSibling(path);
  std::FILE* f = std::fopen(probe.c_str(), "wbx");  // x: fail rather than touch an existing file
  if (f == nullptr) {
    const fs::path parent = fs::path(path).parent_path();
    return MakeError(ErrorCode::kIo, "cannot write '" + path + "': " +
                                         (fs::is_directory(parent.empty() ? "." : parent, ec)
                                              ? std::string(std::strerror(errno))
                                              : "folder '" + parent.string() + "' does not exist"));
  }
  std::fclose(f);
  fs::remove(probe, ec);
  return {};
}

Status WriteFileAtomic(const std::string& path, const std::string& bytes) {
  return WriteAtomically(path, [&](const std::string& temp) -> Status {
    std::FILE* f = std::fopen(temp.c_str(), "wb");
    if (f == nullptr) {
      return MakeError(ErrorCode::kIo,
                       "cannot write '" + path + "': " + std::string(std::strerror(errno)));
    }
    const bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size() &&
                    std::fflush(f) == 0 && ::fsync(::fileno(f)) == 0;
    const bool closed = std::fclose(f) == 0;
    if (!ok || !closed) {
      return MakeError(ErrorCode::kIo, "short write to '" + path + "'");
    }
    return {};
  });
}

Expected<std::string> ReadFile(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) {
    return MakeError(ErrorCode::kNotFound, "file '" + path + "' does not exist");
  }
  if (fs::is_directory(path, ec)) {
    return MakeError(ErrorCode::kIo, "'" + path + "' is a folder, expected a file");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return MakeError(ErrorCode::kIo,
                     "cannot read '" + path + "': " + std::string(std::strerror(errno)));
  }
  std::ostringstream out;
  out << in.rdbuf();
  if (in.bad()) return MakeError(ErrorCode::kIo, "error while reading '" + path + "'");
  return out.str();
}

}  // namespace mewm

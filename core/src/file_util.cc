// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/core/file_util.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <utility>
#include <vector>

#include "mewm/core/regular_file.h"

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
  const fs::file_status status = fs::status(path, ec);
  if (!fs::exists(status)) {
    return MakeError(ErrorCode::kNotFound, "file '" + path + "' does not exist");
  }
  if (fs::is_directory(status)) {
    return MakeError(ErrorCode::kIo, "'" + path + "' is a folder, expected a file");
  }
  // A device never ends (/dev/zero given as a calibration read until memory ran out) and a socket
  // is no file. A FIFO is read: it is what a shell's <(command) gives.
  if (fs::is_character_file(status) || fs::is_block_file(status) || fs::is_socket(status)) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "'" + path + "' is " + (fs::is_socket(status) ? "a socket" : "a device") +
                         ", expected a file");
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

namespace {

/// What a stat() mode is, for "... is a FIFO, expected a regular file".
const char* FileKind(mode_t mode) {
  if (S_ISDIR(mode)) return "a folder";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a regular file";
}

Unexpected NotRegular(const std::string& path, mode_t mode) {
  return MakeError(ErrorCode::kInvalidArgument,
                   "'" + path + "' is " + FileKind(mode) + ", expected a regular file");
}

Unexpected TooLarge(const std::string& path, std::uint64_t size, std::uint64_t max_bytes) {
  return MakeError(ErrorCode::kInvalidArgument,
                   "'" + path + "' is too large: " + std::to_string(size) +
                       " bytes or more, at most " + std::to_string(max_bytes) + " allowed");
}

}  // namespace

Expected<RegularFile> RegularFile::Open(const std::string& path, std::uint64_t max_bytes) {
  const auto failed = [&path] {
    return MakeError(ErrorCode::kIo,
                     "cannot read '" + path + "': " + std::string(std::strerror(errno)));
  };
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT || errno == ENOTDIR) {
      return MakeError(ErrorCode::kNotFound, "file '" + path + "' does not exist");
    }
    return failed();
  }
  if (!S_ISREG(st.st_mode)) return NotRegular(path, st.st_mode);
  if (std::uint64_t(st.st_size) > max_bytes) return TooLarge(path, st.st_size, max_bytes);
  // O_NONBLOCK: should the path have become a FIFO since stat(), open() still returns at once.
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) return failed();
  RegularFile file(fd, 0, path);  // closes fd on every return below
  if (::fstat(fd, &st) != 0) return failed();
  if (!S_ISREG(st.st_mode)) return NotRegular(path, st.st_mode);
  if (std::uint64_t(st.st_size) > max_bytes) return TooLarge(path, st.st_size, max_bytes);
  file.size_ = std::uint64_t(st.st_size);
  return file;
}

RegularFile::RegularFile(int fd, std::uint64_t size, std::string path)
    : fd_(fd), size_(size), path_(std::move(path)) {}

RegularFile::RegularFile(RegularFile&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)), size_(other.size_), path_(std::move(other.path_)) {}

RegularFile& RegularFile::operator=(RegularFile&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = std::exchange(other.fd_, -1);
    size_ = other.size_;
    path_ = std::move(other.path_);
  }
  return *this;
}

RegularFile::~RegularFile() {
  if (fd_ >= 0) ::close(fd_);
}

Expected<std::size_t> RegularFile::Read(char* out, std::size_t count) {
  for (;;) {
    const ssize_t n = ::read(fd_, out, count);
    if (n >= 0) return std::size_t(n);
    if (errno != EINTR) {
      return MakeError(ErrorCode::kIo,
                       "error while reading '" + path_ + "': " + std::strerror(errno));
    }
  }
}

Expected<std::string> ReadRegularFile(const std::string& path, std::uint64_t max_bytes) {
  MEWM_TRY(RegularFile file, RegularFile::Open(path, max_bytes));
  // Reads at most max_bytes + 1, so a file that grows meanwhile is caught without reading it.
  std::string out;
  std::vector<char> buffer(64 * 1024);
  for (;;) {
    const std::uint64_t room = max_bytes + 1 - out.size();
    MEWM_TRY(const std::size_t n,
             file.Read(buffer.data(), std::size_t(std::min<std::uint64_t>(room, buffer.size()))));
    if (n == 0) return out;
    out.append(buffer.data(), n);
    if (out.size() > max_bytes) return TooLarge(path, out.size(), max_bytes);
  }
}

std::string ResolvedPath(const std::string& path) {
  std::error_code ec;
  fs::path absolute = fs::absolute(path, ec);
  if (ec) absolute = fs::path(path);
  fs::path resolved = fs::weakly_canonical(absolute, ec);
  if (ec) resolved = absolute;
  std::string text = resolved.lexically_normal().string();
  while (text.size() > 1 && text.back() == '/') text.pop_back();
  return text;
}

bool IsPathInside(const std::string& path, const std::string& root) {
  const fs::path p(ResolvedPath(path));
  const fs::path r(ResolvedPath(root));
  auto pi = p.begin();
  for (auto ri = r.begin(); ri != r.end(); ++ri) {
    if (ri->empty()) continue;  // a trailing separator
    if (pi == p.end() || *pi != *ri) return false;
    ++pi;
  }
  return true;
}

}  // namespace mewm

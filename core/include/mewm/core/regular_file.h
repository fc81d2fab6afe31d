// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// A regular file named by untrusted input, opened for reading in pieces: what ReadRegularFile
// (file_util.h) reads whole, for a server that sends a large file while its client takes it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "mewm/core/expected.h"

namespace mewm {

class RegularFile {
 public:
  /// Opens `path` with ReadRegularFile's checks and errors, reading nothing: never blocks (a
  /// FIFO, device, socket or folder is kInvalidArgument, before and after the open), and a file
  /// larger than `max_bytes` is kInvalidArgument naming both sizes; kNotFound, kIo.
  static Expected<RegularFile> Open(const std::string& path, std::uint64_t max_bytes);

  RegularFile(RegularFile&& other) noexcept;
  RegularFile& operator=(RegularFile&& other) noexcept;
  RegularFile(const RegularFile&) = delete;
  RegularFile& operator=(const RegularFile&) = delete;
  ~RegularFile();

  /// The size fstat() gave when it was opened.
  std::uint64_t size() const { return size_; }
  /// Reads at most `count` bytes at the current position into `out`: how many, 0 at the end of
  /// the file. kIo naming the file.
  Expected<std::size_t> Read(char* out, std::size_t count);

 private:
  RegularFile(int fd, std::uint64_t size, std::string path);
  int fd_ = -1;
  std::uint64_t size_ = 0;
  std::string path_;
};

}  // namespace mewm

// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Files that appear whole or not at all: write to a temporary name in the same folder, then
// rename (atomic on POSIX within one file system).
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "mewm/core/expected.h"

namespace mewm {

/// Writes `bytes` to `path` atomically. kIo naming the path and the OS reason.
Status WriteFileAtomic(const std::string& path, const std::string& bytes);

/// Calls `writer(temp_path)`, which must create temp_path; on success renames it to `path`, on
/// failure removes it. The temporary name keeps the final extension (writers like niftilib pick
/// the format from it): "dir/.tmp-<pid>-<n>-name.nii.gz".
Status WriteAtomically(const std::string& path,
                       const std::function<Status(const std::string& temp_path)>& writer);

/// Whether a file can later be written at `path` by WriteAtomically, checked now so that a long
/// job fails before it starts rather than after: the folder exists and accepts a new file (probed
/// with a temporary file that is removed again), and `path` is not a folder. Creates nothing that
/// stays. kIo naming the path and the reason.
Status CheckWritable(const std::string& path);

/// Reads a whole file, a FIFO's included. kNotFound or kIo; kInvalidArgument for a device or a
/// socket, which never end or are no file (ReadRegularFile also refuses FIFOs and bounds the size).
Expected<std::string> ReadFile(const std::string& path);

/// Reads a whole regular file of at most `max_bytes`, for files named by untrusted input. It never
/// blocks and never reads without bound: the path is checked with stat() before it is opened
/// (O_NONBLOCK) and again with fstat() on the open file, so a FIFO, device, socket or folder is
/// refused before any read (kInvalidArgument), and so is a file larger than `max_bytes`
/// (kInvalidArgument naming both sizes). kNotFound when it does not exist, kIo for other failures.
Expected<std::string> ReadRegularFile(const std::string& path, std::uint64_t max_bytes);

/// Whether `path` lies inside the folder `root`, or is `root` itself. Both are made absolute
/// (against the working directory), and the symbolic links of their existing parts are resolved
/// (std::filesystem::weakly_canonical) before their components are compared, so "root/link/x"
/// with link -> /etc is outside, "root/a/../../x" is outside and "/srv/ab" is not inside "/srv/a".
bool IsPathInside(const std::string& path, const std::string& root);

/// The form IsPathInside compares: absolute, symbolic links of existing parts resolved, normal,
/// without a trailing separator.
std::string ResolvedPath(const std::string& path);

/// Lower-case extension including compound ".nii.gz"; "" when none.
std::string FileExtension(const std::string& path);

}  // namespace mewm

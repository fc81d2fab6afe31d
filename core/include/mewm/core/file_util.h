// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Files that appear whole or not at all: write to a temporary name in the same folder, then
// rename (atomic on POSIX within one file system).
#pragma once

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

/// Reads a whole file. kNotFound or kIo.
Expected<std::string> ReadFile(const std::string& path);

/// Lower-case extension including compound ".nii.gz"; "" when none.
std::string FileExtension(const std::string& path);

}  // namespace mewm

// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/core/limits.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <limits>

#include "extent_limit.h"

namespace mewm {

Expected<std::uint64_t> MaxImageVoxels() {
  const char* text = std::getenv("MEWM_MAX_VOXELS");
  if (text == nullptr || *text == '\0') return kDefaultMaxImageVoxels;
  char* end = nullptr;
  errno = 0;
  const unsigned long long value = std::strtoull(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0' || value == 0 || text[0] == '-') {
    return MakeError(ErrorCode::kInvalidArgument, "MEWM_MAX_VOXELS='" + std::string(text) +
                                                      "' is not a positive integer (the most "
                                                      "voxels an image may have)");
  }
  return static_cast<std::uint64_t>(value);
}

Status CheckImageVoxels(const std::string& path, const std::string& shape, std::uint64_t voxels,
                        std::uint64_t bytes_per_voxel) {
  MEWM_TRY(const std::uint64_t limit, MaxImageVoxels());
  if (voxels <= limit) return {};
  const double gib = double(voxels) * double(bytes_per_voxel) / double(1ull << 30);
  char need[64];
  std::snprintf(need, sizeof(need), "%.1f GiB", gib);
  return MakeError(ErrorCode::kInvalidArgument,
                   "'" + path + "': the image is " + shape + " = " + std::to_string(voxels) +
                       " voxels, over the limit of " + std::to_string(limit) +
                       " (MEWM_MAX_VOXELS); reading it would need about " + need +
                       " of memory. Set MEWM_MAX_VOXELS higher if the machine has it");
}

Status CheckExtentVoxels(const std::string& path, const Index3& extent,
                         std::uint64_t bytes_per_voxel, const std::string& note) {
  const std::string shape = std::to_string(extent[0]) + " x " + std::to_string(extent[1]) + " x " +
                            std::to_string(extent[2]);
  if (extent[0] < 0 || extent[1] < 0 || extent[2] < 0) {
    // A damaged extent, or a foreign grid whose voxels all lie below index 0 (it was reported as
    // 18446744073709551615 voxels over the limit).
    return MakeError(ErrorCode::kCorruptData,
                     "'" + path + "': the image's extent " + shape + note +
                         " is negative: mewm reads images whose voxels start at index 0");
  }
  std::uint64_t voxels = 1;
  for (int d = 0; d < 3; ++d) {
    if (__builtin_mul_overflow(voxels, std::uint64_t(extent[d]), &voxels)) {
      voxels = std::numeric_limits<std::uint64_t>::max();
    }
  }
  return CheckImageVoxels(path, shape + note, voxels, bytes_per_voxel);
}

}  // namespace mewm

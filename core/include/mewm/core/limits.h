// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Bounds on what mewm reads from files, checked before it allocates.
#pragma once

#include <cstdint>
#include <string>

#include "mewm/core/expected.h"

namespace mewm {

/// The default of MaxImageVoxels(): 512^3 voxels (134,217,728), 512 MiB as float32. The largest
/// CT a clinic takes (512 x 512 slices, a few hundred of them) fits.
inline constexpr std::uint64_t kDefaultMaxImageVoxels = 512ull * 512ull * 512ull;

/// The most voxels an image mewm reads into memory may have: the environment variable
/// MEWM_MAX_VOXELS (a positive integer) when set, else kDefaultMaxImageVoxels. kInvalidArgument
/// when MEWM_MAX_VOXELS is set but not a positive integer.
Expected<std::uint64_t> MaxImageVoxels();

/// OK when an image of `voxels` voxels may be read. Otherwise kInvalidArgument naming `path`, the
/// shape, the limit and how much memory the read would need (`bytes_per_voxel` bytes each).
/// `shape` is shown as given, e.g. "1024 x 1024 x 1024".
Status CheckImageVoxels(const std::string& path, const std::string& shape, std::uint64_t voxels,
                        std::uint64_t bytes_per_voxel);

}  // namespace mewm

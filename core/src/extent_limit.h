// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The voxel limit (mewm/core/limits.h) for a dense lattice given by its extent, shared by the
// readers and writers of core that densify a grid. Private to core.
#pragma once

#include <cstdint>
#include <string>

#include "mewm/core/expected.h"
#include "mewm/core/geometry.h"

namespace mewm {

/// CheckImageVoxels for a lattice of `extent` voxels per axis (a product past 2^64 counts as too
/// many), its shape shown as "X x Y x Z" followed by `note`; kCorruptData for a negative axis.
Status CheckExtentVoxels(const std::string& path, const Index3& extent,
                         std::uint64_t bytes_per_voxel, const std::string& note = "");

}  // namespace mewm

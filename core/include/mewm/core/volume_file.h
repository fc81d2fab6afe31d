// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// One entry point for image files of either format: .vdb (many named grids) or NIfTI (one grid).
#pragma once

#include <string>

#include "mewm/core/expected.h"
#include "mewm/core/vdb_io.h"

namespace mewm {

/// How to read a NIfTI file: as CT (float) or labels (int), or decided by its datatype (integer
/// types without intensity scaling are labels).
enum class NiftiKind { kAuto, kScalar, kLabel };

/// Reads a .vdb (every grid) or a NIfTI file (one grid called `nifti_grid`, default "ct" for CT and
/// "label" for labels). kInvalidArgument for another extension; otherwise the readers' errors.
Expected<VolumeSet> ReadVolumeFile(const std::string& path, NiftiKind kind = NiftiKind::kAuto,
                                   const std::string& nifti_grid = "");

/// Writes a set: all grids to a .vdb, or the grid `grid` to a NIfTI file (the only grid when
/// `grid` is empty and the set has one; kInvalidArgument when the choice is ambiguous).
Status WriteVolumeFile(const std::string& path, const VolumeSet& set, const std::string& grid = "",
                       const VdbWriteOptions& vdb_options = {});

/// The dense box that covers a grid's extent and every active voxel (foreign .vdb files may have
/// voxels at negative indices or beyond the recorded extent).
template <typename VolumeT>
IndexBox CoveringBox(const VolumeT& volume);

}  // namespace mewm

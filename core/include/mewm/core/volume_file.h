// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// One entry point for image files of either format: .vdb (many named grids) or NIfTI (one grid).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "mewm/core/expected.h"
#include "mewm/core/nifti_io.h"
#include "mewm/core/vdb_io.h"

namespace mewm {

/// How to read a NIfTI file: as CT (float) or labels (int), or decided by evidence (kAuto, see
/// DecideNiftiKind).
enum class NiftiKind { kAuto, kScalar, kLabel };

/// What kAuto decided for one NIfTI file, and on which evidence.
struct NiftiKindDecision {
  NiftiKind kind = NiftiKind::kScalar;  ///< kScalar or kLabel
  std::string reason;                   ///< one line, e.g. "int16 data with negative values"
};

/// Integer images with at most this many distinct values (and none negative) count as labels.
inline constexpr std::size_t kMaxLabelValues = 256;

/// The kAuto rule, first match wins:
///  1. intent code NIFTI_INTENT_LABEL (1002) or NIFTI_INTENT_NEURONAME (1003): labels;
///  2. a floating-point datatype: CT;
///  3. integer data with intensity scaling (a finite scl_slope other than 0, unless slope 1 and
///     scl_inter 0): CT, as dcm2niix's uint16 with scl_inter -1024;
///  4. integer data with a negative value (an int16 CT in HU, as dcm2niix writes it): CT;
///  5. integer data with more than kMaxLabelValues distinct values: CT;
///  6. otherwise (few non-negative integers) the file name decides: a name whose words (split at
///     anything but letters and digits) include ct, cect, image, img, scan or 0000 (nnU-Net's
///     channel suffix), and none of seg, segmentation, label, labels, mask, tumor, tumour,
///     liver, lesion or roi, is CT; every other such file is labels.
/// `values` are the voxels (needed for rules 4-6 only; nullptr when the header decides).
NiftiKindDecision DecideNiftiKind(const std::string& path, const NiftiInfo& info,
                                  const std::vector<std::int32_t>* values);

/// Reads a .vdb (every grid) or a NIfTI file (one grid called `nifti_grid`, default "ct" for CT and
/// "label" for labels). kInvalidArgument for another extension; otherwise the readers' errors.
/// With kAuto, `decision` (when given) receives what DecideNiftiKind decided for a NIfTI file.
Expected<VolumeSet> ReadVolumeFile(const std::string& path, NiftiKind kind = NiftiKind::kAuto,
                                   const std::string& nifti_grid = "",
                                   NiftiKindDecision* decision = nullptr);

/// Writes a set: all grids to a .vdb, or the grid `grid` to a NIfTI file (the only grid when
/// `grid` is empty and the set has one; kInvalidArgument when the choice is ambiguous).
Status WriteVolumeFile(const std::string& path, const VolumeSet& set, const std::string& grid = "",
                       const VdbWriteOptions& vdb_options = {});

/// The NIfTI path of one grid when a set is written one file per grid: "out.nii.gz" and grid
/// "ct" give "out_ct.nii.gz". Characters of the grid name other than A-Z a-z 0-9 . _ - become _.
std::string PerGridNiftiPath(const std::string& path, const std::string& grid);

/// Writes every grid of `set` to its own NIfTI file (PerGridNiftiPath of `path`), and returns the
/// paths in GridNames() order. When every grid has the same geometry, all files share one lattice
/// (the box covering every grid), so viewers that need a segmentation of the image's shape
/// (ITK-SNAP) accept them together. kInvalidArgument when `path` is not a NIfTI name or two grid
/// names give one file name; otherwise WriteNifti's errors. Each file appears atomically.
Expected<std::vector<std::string>> WriteNiftiPerGrid(const std::string& path, const VolumeSet& set);

/// The dense box that covers a grid's extent and every active voxel (foreign .vdb files may have
/// voxels at negative indices or beyond the recorded extent).
template <typename VolumeT>
IndexBox CoveringBox(const VolumeT& volume);

}  // namespace mewm

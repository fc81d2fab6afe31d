// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// .vdb files holding one patient's named grids ("ct", "liver", "tumor", ...) plus file metadata.
// Files are plain OpenVDB files: `vdb_print` lists their grids. mewm stores its extra facts as
// grid metadata (mewm_extent) and file metadata (patient_id, modality, units, provenance).
#pragma once

#include <map>
#include <string>
#include <vector>

#include "mewm/core/expected.h"
#include "mewm/core/volume.h"

namespace mewm {

/// File-level facts, stored as OpenVDB file metadata.
struct VolumeMetadata {
  std::string patient_id;
  std::string modality = "CT";
  std::string units = "HU";
  std::string provenance_json = "{}";  ///< JSON text: generator, command, seed, source files
};

/// The contents of one .vdb file. Grid names are unique across both maps.
struct VolumeSet {
  VolumeMetadata metadata;
  std::map<std::string, Volume> scalars;      ///< float grids, e.g. "ct"
  std::map<std::string, LabelVolume> labels;  ///< int32 grids, e.g. "liver", "tumor"

  /// kNotFound naming the missing grid and the grids that exist.
  Expected<Volume> Scalar(const std::string& name) const;
  Expected<LabelVolume> Label(const std::string& name) const;
  std::vector<std::string> GridNames() const;
};

/// How to store grids.
struct VdbWriteOptions {
  /// Store float grids as 16-bit halves (Blosc-compressed either way). Halves keep 11 significant
  /// bits: steps of at most 0.5 HU below 1024 HU and 1 HU up to 2048 HU, well under CT noise
  /// (10-20 HU), for roughly half the file size. Off by default so conversions are exact.
  bool half_float = false;
  /// Blosc/zip and active-mask compression (OpenVDB's default). Off: a file's size follows its
  /// grids' topology alone, not their values (the Turing-test export needs that).
  bool compress = true;
};

/// Writes all grids atomically (temporary file, then rename). kInvalidArgument for a grid name
/// used twice or empty; kIo when the folder is not writable.
Status WriteVdb(const std::string& path, const VolumeSet& set, const VdbWriteOptions& options = {});

/// Reads every float and int32 grid; grids of other types are skipped with a warning, and a file
/// with none that mewm can read is kCorruptData. Reading is eager (no delayed loading), so a
/// truncated file fails here rather than on first voxel access. kNotFound, kIo, kCorruptData;
/// kInvalidArgument when a grid's extent (which readers densify) is over MaxImageVoxels()
/// (MEWM_MAX_VOXELS, mewm/core/limits.h).
Expected<VolumeSet> ReadVdb(const std::string& path);

/// True for paths ending in .vdb.
bool IsVdbPath(const std::string& path);

}  // namespace mewm

// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// NIfTI-1 and NIfTI-2 (.nii, .nii.gz) reading and writing.
//
// Frames: NIfTI's affine maps voxels to RAS+ millimetres; mewm works in LPS+ (geometry.h). On read
// the affine is chosen as nibabel does (sform if sform_code != 0, else qform if qform_code != 0,
// else the shape-centred "base affine" with x flipped), then x and y rows are negated to give LPS.
// On write both sform and qform are set (code 1, scanner anatomical) from the LPS->RAS affine.
#pragma once

#include <Eigen/Core>
#include <cstdint>
#include <string>

#include "mewm/core/dense.h"
#include "mewm/core/expected.h"

namespace mewm {

/// Header facts of a NIfTI file (as read, before frame conversion where noted).
struct NiftiInfo {
  int version = 1;  ///< 1 or 2
  Index3 dims{0, 0, 0};
  int datatype = 0;               ///< NIFTI_TYPE_* code
  bool integer_datatype = false;  ///< true for the integer NIfTI types
  int intent_code = 0;            ///< NIFTI_INTENT_* code (1002 label, 1003 NeuroNames)
  int sform_code = 0;
  int qform_code = 0;
  Eigen::Matrix4d affine_ras = Eigen::Matrix4d::Identity();  ///< as nibabel's img.affine
  double scl_slope = 0.0;
  double scl_inter = 0.0;
};

enum class NiftiVersion { kNifti1 = 1, kNifti2 = 2 };

/// Reads the header only. kInvalidArgument (path not .nii/.nii.gz), kNotFound, kIo (a folder, an
/// unreadable file), kCorruptData (not NIfTI, bad magic, bad or non-3D dims, an uncompressed file
/// shorter than its header says, singular affine), kUnsupported (complex, RGB, ... datatypes).
Expected<NiftiInfo> ReadNiftiInfo(const std::string& path);

/// Reads a 3D image (trailing dimensions of size 1, e.g. a 4th, are accepted) as float, applying
/// scl_slope/inter as nibabel does. The errors of ReadNiftiInfo, plus kCorruptData on truncated
/// data or a damaged gzip stream (CRC, missing trailer) and on NaN/Inf voxels (the message gives
/// the count and the first offending index), kUnsupported when the affine is sheared, and
/// kInvalidArgument when the header's voxel count is over MaxImageVoxels() (MEWM_MAX_VOXELS,
/// mewm/core/limits.h), checked before anything is allocated.
/// Geometry is in LPS.
Expected<DenseFloat> ReadNifti(const std::string& path, NiftiInfo* info = nullptr);

/// Reads an integer-valued image (any datatype) as labels. kCorruptData when a voxel, after
/// scaling, is not an integer in int32 range; otherwise the errors of ReadNifti.
Expected<DenseLabel> ReadNiftiLabels(const std::string& path, NiftiInfo* info = nullptr);

/// Writes float32 data. The file type follows the extension (.nii or .nii.gz). The file appears
/// atomically: it is written to a temporary name in the same folder, then renamed.
/// kInvalidArgument for another extension, empty dims, dims that do not match data.size(), an
/// invalid geometry, NIfTI-1 dims over 32767, or NaN/Inf voxels (which ReadNifti would refuse);
/// kIo when the folder is missing or the file cannot be written in full.
Status WriteNifti(const std::string& path, const DenseFloat& image,
                  NiftiVersion version = NiftiVersion::kNifti1);

/// Writes labels as int16 when they fit, else int32, with intent code NIFTI_INTENT_LABEL (1002),
/// so readers that look at the intent (and ReadVolumeFile's kAuto) take them as labels. Same
/// atomicity and errors (NaN aside).
Status WriteNiftiLabels(const std::string& path, const DenseLabel& labels,
                        NiftiVersion version = NiftiVersion::kNifti1);

/// True for paths ending in .nii or .nii.gz.
bool IsNiftiPath(const std::string& path);

}  // namespace mewm

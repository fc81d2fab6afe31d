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
  int version = 1;                ///< 1 or 2
  Index3 dims{0, 0, 0};
  int datatype = 0;               ///< NIFTI_TYPE_* code
  bool integer_datatype = false;  ///< true for the integer NIfTI types
  int sform_code = 0;
  int qform_code = 0;
  Eigen::Matrix4d affine_ras = Eigen::Matrix4d::Identity();  ///< as nibabel's img.affine
  double scl_slope = 0.0;
  double scl_inter = 0.0;
};

enum class NiftiVersion { kNifti1 = 1, kNifti2 = 2 };

/// Reads the header only. kNotFound, kIo, kCorruptData (bad magic, bad dims, singular affine).
Expected<NiftiInfo> ReadNiftiInfo(const std::string& path);

/// Reads a 3D image (a 4th dimension of size 1 is accepted) as float, applying scl_slope/inter.
/// kCorruptData on truncated data, non-3D images or NaN/Inf voxels (the message gives the count
/// and the first offending index). Geometry is in LPS.
Expected<DenseFloat> ReadNifti(const std::string& path, NiftiInfo* info = nullptr);

/// Reads an integer-valued image as labels. kCorruptData when a voxel is not an integer.
Expected<DenseLabel> ReadNiftiLabels(const std::string& path, NiftiInfo* info = nullptr);

/// Writes float32 data. The file type follows the extension (.nii or .nii.gz). The file appears
/// atomically: it is written to a temporary name in the same folder, then renamed.
Status WriteNifti(const std::string& path, const DenseFloat& image,
                  NiftiVersion version = NiftiVersion::kNifti1);

/// Writes labels as int16 when they fit, else int32. Same atomicity.
Status WriteNiftiLabels(const std::string& path, const DenseLabel& labels,
                        NiftiVersion version = NiftiVersion::kNifti1);

/// True for paths ending in .nii or .nii.gz.
bool IsNiftiPath(const std::string& path);

}  // namespace mewm

// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// DICOM CT series in (`mewm import dicom`, docs/ECOSYSTEM.md "DICOM in"), read with DCMTK.
//
// A folder (searched recursively) may hold several series and files that are not DICOM; the
// latter are skipped and counted. One series becomes a CT volume in HU on mewm's LPS lattice:
//   - slices sorted by their position along the slice normal (IOP row x column), never by file
//     name or instance number;
//   - values = stored value x RescaleSlope + RescaleIntercept;
//   - voxel (i, j, k) = column i, row j, slice k; direction = [row cosine, column cosine, normal],
//     spacing = (PixelSpacing[1], PixelSpacing[0], slice step), origin = the first slice's
//     ImagePositionPatient. Written as NIfTI this is the RAS affine nibabel and dcm2niix give.
// Series that cannot be one regular lattice are refused, naming the reason: mixed orientations,
// gantry tilt (slice positions off the normal), uneven slice spacing (missing slices), two slices
// at one position, differing rows/columns/pixel spacing, multi-frame or colour images, and
// compressed transfer syntaxes DCMTK cannot decode here (JPEG, JPEG-LS and RLE are decoded; JPEG
// 2000 is not).
#pragma once

#include <string>
#include <vector>

#include "mewm/core/expected.h"
#include "mewm/core/vdb_io.h"

namespace mewm::dicom {

struct SeriesInfo {
  std::string series_uid, modality, description, patient_id;
  int files = 0;
  std::string
      frame_of_reference_uid;  ///< FrameOfReferenceUID of the series' first file ("" = none)
};

/// The DICOM series under a folder.
struct FolderScan {
  std::vector<SeriesInfo> series;  ///< by series UID
  int files = 0;                   ///< regular files looked at
  int not_dicom = 0;               ///< files skipped: no DICOM preamble, or not an image
  /// Files with the DICOM preamble that DCMTK cannot read (truncated, damaged), each with the
  /// reason. ImportSeries refuses a folder holding any: one may be a slice of the series.
  std::vector<std::string> damaged;
  int outside = 0;  ///< files skipped: symbolic links leading out of the folder (not read)
};

/// Lists the series under `folder` (recursively, at most `max_files` files). kNotFound when the
/// folder does not exist, kInvalidArgument when it holds more than max_files files.
Expected<FolderScan> ScanFolder(const std::string& folder, int max_files = 100000);

/// One line per series: UID, modality, files, description.
std::string DescribeSeries(const FolderScan& scan);

struct ImportOptions {
  std::string series_uid;  ///< "" = the only series in the folder (an error when there are more)
  int max_files = 100000;
};

struct ImportResult {
  VolumeSet set;  ///< one scalar grid "ct" (HU), metadata from the series
  SeriesInfo series;
  int slices = 0;
  double slice_step_mm = 0.0;
  int not_dicom = 0;  ///< files skipped in the folder
};

/// Reads one series as a CT volume (see the file comment). Errors name the file or the rule.
Expected<ImportResult> ImportSeries(const std::string& folder, const ImportOptions& options = {});

}  // namespace mewm::dicom

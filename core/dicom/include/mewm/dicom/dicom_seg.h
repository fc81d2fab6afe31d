// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// DICOM-SEG masks in (`mewm import dicom-seg`, docs/ECOSYSTEM.md "DICOM-SEG in"), read with
// DCMTK's dcmseg, placed on the lattice of the CT series they segment.
//
// Input: one Segmentation Storage file (SOP class 1.2.840.10008.5.1.4.1.1.66.4), BINARY or
// FRACTIONAL, and the CT it refers to (ImportSeries' result). Output: label grids on the CT's
// lattice (same geometry and extent), the grids mewm's patients use:
//   "liver": 1 where a liver segment is;
//   "tumor": 1 where a tumor segment is, 2 where a necrosis segment is (necrosis is tumor tissue;
//            every non-zero voxel counts as tumor, as PatientCase::tumor says).
// Each segment gets a role (SegmentRoleFor, or the --segment-map override by segment number):
// liver, tumor, necrosis or ignore. Frames are placed by their own ImagePositionPatient (per-frame
// Plane Position); a FRACTIONAL frame's voxel is in the segment when its value is at least half
// of MaximumFractionalValue.
// Refused, naming the reason: a file that is not a SEG; a SEG on another frame of reference than
// the CT, or referencing other series; frames whose orientation or pixel spacing differ from the
// CT's, or that lie off its lattice or outside it; frames without a position or segment number;
// PixelData shorter than NumberOfFrames frames (missing frames); two frames of one segment at one
// slice. Overlapping segments are not refused: segments of one role are joined, necrosis wins
// over tumor where both claim a voxel, liver and tumor are separate grids; each overlap is
// counted in the result's notes.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "mewm/core/expected.h"
#include "mewm/core/geometry.h"
#include "mewm/core/vdb_io.h"
#include "mewm/dicom/dicom_import.h"

namespace mewm::dicom {

/// The SOP class UID of Segmentation Storage.
inline constexpr const char* kSegmentationStorage = "1.2.840.10008.5.1.4.1.1.66.4";

/// What a segment becomes in mewm's label grids.
enum class SegmentRole { kIgnore, kLiver, kTumor, kNecrosis };

/// "liver", "tumor", "necrosis", "ignore".
const char* SegmentRoleName(SegmentRole role);

/// The role a segment's words give, with the reason ("label 'Mass': tumor word 'mass'"). The
/// segment label, then its description, then the meaning of its Segmented Property Type code are
/// searched, in that order, for whole words (case-insensitive; split at anything but letters and
/// digits); the first field with a match decides, and within a field the first rule that matches:
///   1. necrosis, necrotic: necrosis;
///   2. tumor, tumour, lesion, mass, hcc, carcinoma, neoplasm, cancer, nodule, metastasis
///      (and plurals): tumor;
///   3. vessel, vein, artery, aorta, portal, vena, cava, ivc, vasculature, blood: ignore;
///   4. liver, hepatic: liver.
/// A segment no field matches is ignored.
SegmentRole SegmentRoleFor(const std::string& label, const std::string& description,
                           const std::string& property_meaning, std::string* reason = nullptr);

/// Parses "1=liver,2=tumor" (separators , ; or space; roles as SegmentRoleName gives them, also
/// "lesion" for tumor and "none" for ignore). kInvalidArgument naming the bad item.
Expected<std::map<int, SegmentRole>> ParseSegmentMap(const std::string& text);

/// The lattice and identity of the CT a SEG is placed on.
struct SegReference {
  std::string series_uid;
  std::string frame_of_reference_uid;  ///< "" when the CT series has none (not checked then)
  Geometry geometry;                   ///< LPS, as ImportSeries gives it
  Index3 extent{0, 0, 0};
};

/// The reference of an imported CT series.
SegReference ReferenceOf(const ImportResult& ct);

/// The header of a SEG file, read without its pixels.
struct SegHeader {
  std::string series_uid, frame_of_reference_uid, patient_id;
  std::vector<std::string> referenced_series;  ///< ReferencedSeriesSequence's SeriesInstanceUIDs
};

/// True when `path` is a regular file with the DICOM Part 10 preamble.
bool IsDicomFile(const std::string& path);

/// Reads the header of a SEG. kNotFound for a missing file; kInvalidArgument for a file that is
/// not DICOM, or a DICOM object of another SOP class than Segmentation Storage (naming it).
Expected<SegHeader> ReadSegHeader(const std::string& path);

/// The series of `folder` a SEG is meant for: `series_uid` when given; else the folder's only
/// series; else the one of the folder's series the SEG references (the error lists them when none
/// or several are). Errors of ScanFolder.
Expected<std::string> ChooseSeriesForSeg(const std::string& folder, const SegHeader& seg,
                                         const std::string& series_uid = "");

struct SegImportOptions {
  std::map<int, SegmentRole> segment_map;  ///< by SegmentNumber; overrides SegmentRoleFor
};

/// One segment of the SEG, as imported.
struct SegmentInfo {
  int number = 0;
  std::string label, description, property;  ///< property: Segmented Property Type's meaning
  SegmentRole role = SegmentRole::kIgnore;
  std::string reason;       ///< why this role ("--segment-map", or SegmentRoleFor's reason)
  int frames = 0;           ///< frames of this segment
  std::int64_t voxels = 0;  ///< voxels set by this segment (before overlaps are resolved)
};

struct SegImportResult {
  VolumeSet set;  ///< label grids "liver" and/or "tumor" on the CT's lattice; metadata of the SEG
  std::vector<SegmentInfo> segments;  ///< by segment number
  std::string type;                   ///< "BINARY" or "FRACTIONAL"
  int frames = 0;
  std::vector<std::string> notes;  ///< overlaps and what was done with them, one line each
};

/// Reads `seg_path` onto the CT `ct` (see the file comment for the rules and refusals).
/// kInvalidArgument: not a SEG, a --segment-map number the SEG lacks, or no segment mapped to
/// liver, tumor or necrosis (the message lists the segments and their roles); kMismatch: frame of
/// reference, referenced series, orientation or spacing differ from the CT, or a frame lies off
/// or outside the lattice; kCorruptData: missing frames, frames without position or segment, two
/// frames of a segment at one slice; kUnsupported: what DCMTK cannot decode.
Expected<SegImportResult> ImportSegmentation(const std::string& seg_path, const SegReference& ct,
                                             const SegImportOptions& options = {});

}  // namespace mewm::dicom

// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/dicom/dicom_seg.h"

#include <dcmtk/config/osconfig.h>  // first, as DCMTK asks
//
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcxfer.h>
#include <dcmtk/dcmfg/fgpixmsr.h>
#include <dcmtk/dcmfg/fgplanor.h>
#include <dcmtk/dcmfg/fgplanpo.h>
#include <dcmtk/dcmfg/fgseg.h>
#include <dcmtk/dcmiod/iodmacro.h>
#include <dcmtk/dcmseg/segdoc.h>
#include <dcmtk/dcmseg/segment.h>
#include <dcmtk/dcmseg/segutils.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "dcmtk_util.h"
#include "mewm/core/dense.h"

namespace mewm::dicom {
namespace {

namespace fs = std::filesystem;
using detail::HasPreamble;
using detail::InitDcmtk;
using detail::LoadDicomFile;
using detail::Text;

/// Lower-case words of `text` (split at anything but letters and digits).
std::vector<std::string> Words(const std::string& text) {
  std::vector<std::string> words(1);
  for (char c : text) {
    if (std::isalnum(static_cast<unsigned char>(c))) {
      words.back() += char(std::tolower(static_cast<unsigned char>(c)));
    } else if (!words.back().empty()) {
      words.emplace_back();
    }
  }
  if (words.back().empty()) words.pop_back();
  return words;
}

struct RoleRule {
  SegmentRole role;
  const char* kind;
  std::vector<const char*> words;
};

const std::vector<RoleRule>& Rules() {
  static const std::vector<RoleRule> rules = {
      {SegmentRole::kNecrosis, "necrosis", {"necrosis", "necrotic"}},
      {SegmentRole::kTumor,
       "tumor",
       {"tumor", "tumors", "tumour", "tumours", "lesion", "lesions", "mass", "masses", "hcc",
        "carcinoma", "neoplasm", "cancer", "nodule", "nodules", "metastasis", "metastases"}},
      {SegmentRole::kIgnore,
       "vessel",
       {"vessel", "vessels", "vein", "veins", "artery", "arteries", "aorta", "portal", "vena",
        "cava", "ivc", "vasculature", "blood"}},
      {SegmentRole::kLiver, "liver", {"liver", "hepatic"}},
  };
  return rules;
}

std::string Vec(const Eigen::Vector3d& v) {
  std::ostringstream out;
  out.precision(6);
  out << "(" << v.x() << ", " << v.y() << ", " << v.z() << ")";
  return out.str();
}

/// Grid value of a role in its grid.
std::int32_t RoleValue(SegmentRole role) { return role == SegmentRole::kNecrosis ? 2 : 1; }

}  // namespace

const char* SegmentRoleName(SegmentRole role) {
  switch (role) {
    case SegmentRole::kLiver:
      return "liver";
    case SegmentRole::kTumor:
      return "tumor";
    case SegmentRole::kNecrosis:
      return "necrosis";
    case SegmentRole::kIgnore:
      break;
  }
  return "ignore";
}

SegmentRole SegmentRoleFor(const std::string& label, const std::string& description,
                           const std::string& property_meaning, std::string* reason) {
  const std::pair<const char*, const std::string*> fields[] = {
      {"label", &label}, {"description", &description}, {"property type", &property_meaning}};
  for (const auto& [field, text] : fields) {
    const std::vector<std::string> words = Words(*text);
    for (const RoleRule& rule : Rules()) {
      for (const char* word : rule.words) {
        if (std::find(words.begin(), words.end(), word) == words.end()) continue;
        if (reason) {
          *reason = std::string(field) + " '" + *text + "': " + rule.kind + " word '" + word + "'";
        }
        return rule.role;
      }
    }
  }
  if (reason) *reason = "no liver, tumor or necrosis word in its label, description or type";
  return SegmentRole::kIgnore;
}

Expected<std::map<int, SegmentRole>> ParseSegmentMap(const std::string& text) {
  std::map<int, SegmentRole> map;
  std::string item;
  std::vector<std::string> items;
  for (char c : text) {
    if (c == ',' || c == ';' || c == ' ') {
      if (!item.empty()) items.push_back(item);
      item.clear();
    } else {
      item += c;
    }
  }
  if (!item.empty()) items.push_back(item);
  for (const std::string& entry : items) {
    const auto eq = entry.find('=');
    const auto bad = [&](const std::string& why) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "segment map item '" + entry + "': " + why +
                           " (expected NUMBER=ROLE, e.g. 1=liver,2=tumor; roles liver, tumor, "
                           "necrosis, ignore)");
    };
    if (eq == std::string::npos) return bad("no '='");
    const std::string number = entry.substr(0, eq);
    std::string role = entry.substr(eq + 1);
    std::transform(role.begin(), role.end(), role.begin(),
                   [](unsigned char c) { return char(std::tolower(c)); });
    if (number.empty() || number.size() > 5 ||
        !std::all_of(number.begin(), number.end(),
                     [](unsigned char c) { return std::isdigit(c) != 0; }) ||
        std::stoi(number) < 1 || std::stoi(number) > 65535) {
      return bad("the segment number must be 1-65535");
    }
    SegmentRole parsed;
    if (role == "liver") {
      parsed = SegmentRole::kLiver;
    } else if (role == "tumor" || role == "tumour" || role == "lesion") {
      parsed = SegmentRole::kTumor;
    } else if (role == "necrosis") {
      parsed = SegmentRole::kNecrosis;
    } else if (role == "ignore" || role == "none") {
      parsed = SegmentRole::kIgnore;
    } else {
      return bad("unknown role '" + role + "'");
    }
    if (!map.emplace(std::stoi(number), parsed).second) return bad("segment named twice");
  }
  if (map.empty()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "empty segment map (expected e.g. 1=liver,2=tumor)");
  }
  return map;
}

SegReference ReferenceOf(const ImportResult& ct) {
  const Volume& volume = ct.set.scalars.at("ct");
  return {ct.series.series_uid, ct.series.frame_of_reference_uid, volume.geometry(),
          volume.extent()};
}

bool IsDicomFile(const std::string& path) {
  std::error_code ec;
  return fs::is_regular_file(path, ec) && HasPreamble(path);
}

Expected<SegHeader> ReadSegHeader(const std::string& path) {
  InitDcmtk();
  std::error_code ec;
  if (!fs::exists(path, ec)) {
    return MakeError(ErrorCode::kNotFound, "'" + path + "' does not exist");
  }
  if (!IsDicomFile(path)) {
    return MakeError(
        ErrorCode::kInvalidArgument,
        "'" + path + "' is not a DICOM file (no DICM preamble); a DICOM-SEG file was expected");
  }
  DcmFileFormat file;
  if (OFCondition loaded = LoadDicomFile(file, path, 4096); loaded.bad()) {
    return MakeError(ErrorCode::kCorruptData,
                     "'" + path + "': DCMTK cannot read it: " + loaded.text());
  }
  DcmDataset& ds = *file.getDataset();
  const std::string sop_class = Text(ds, DCM_SOPClassUID);
  if (sop_class != kSegmentationStorage) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "'" + path + "' is not a DICOM-SEG: its SOP class is '" + sop_class +
                         "' (modality '" + Text(ds, DCM_Modality) + "'); Segmentation Storage is " +
                         kSegmentationStorage);
  }
  SegHeader header;
  header.series_uid = Text(ds, DCM_SeriesInstanceUID);
  header.frame_of_reference_uid = Text(ds, DCM_FrameOfReferenceUID);
  header.patient_id = Text(ds, DCM_PatientID);
  DcmItem* item = nullptr;
  for (unsigned long i = 0;
       ds.findAndGetSequenceItem(DCM_ReferencedSeriesSequence, item, long(i)).good() && item; ++i) {
    if (std::string uid = Text(*item, DCM_SeriesInstanceUID); !uid.empty()) {
      header.referenced_series.push_back(uid);
    }
  }
  return header;
}

Expected<std::string> ChooseSeriesForSeg(const std::string& folder, const SegHeader& seg,
                                         const std::string& series_uid) {
  if (!series_uid.empty()) return series_uid;
  MEWM_TRY(const FolderScan scan, ScanFolder(folder));
  std::vector<const SeriesInfo*> images, referenced;
  for (const SeriesInfo& s : scan.series) {
    if (s.modality == "SEG" || s.series_uid == seg.series_uid) continue;  // a SEG beside the CT
    images.push_back(&s);
    if (std::find(seg.referenced_series.begin(), seg.referenced_series.end(), s.series_uid) !=
        seg.referenced_series.end()) {
      referenced.push_back(&s);
    }
  }
  if (images.empty()) {
    return detail::NoImageSeries(scan, folder);
  }
  if (images.size() == 1) return images.front()->series_uid;
  if (referenced.size() == 1) return referenced.front()->series_uid;
  std::string refs;
  for (const std::string& uid : seg.referenced_series) refs += (refs.empty() ? "" : ", ") + uid;
  return MakeError(ErrorCode::kInvalidArgument,
                   "'" + folder + "' holds " + std::to_string(images.size()) +
                       " series and the SEG references " +
                       (referenced.empty() ? "none of them" : "several of them") + " (" +
                       (refs.empty() ? "no ReferencedSeriesSequence" : refs) +
                       "); choose one with --series-uid:\n" + DescribeSeries(scan));
}

namespace {

/// Refuses a SEG that was not drawn on `ct`: another frame of reference or referenced series.
Status CheckSegDrawnOnCt(const SegHeader& header, const SegReference& ct,
                         const std::string& where) {
  if (header.frame_of_reference_uid.empty()) {
    return MakeError(ErrorCode::kCorruptData, where + ": no FrameOfReferenceUID (0020,0052)");
  }
  if (!ct.frame_of_reference_uid.empty() &&
      header.frame_of_reference_uid != ct.frame_of_reference_uid) {
    return MakeError(ErrorCode::kMismatch, where + " lies in frame of reference " +
                                               header.frame_of_reference_uid + ", the CT series " +
                                               ct.series_uid + " in " + ct.frame_of_reference_uid +
                                               ": the SEG was not drawn on this CT");
  }
  if (!header.referenced_series.empty() &&
      std::find(header.referenced_series.begin(), header.referenced_series.end(), ct.series_uid) ==
          header.referenced_series.end()) {
    std::string refs;
    for (const std::string& uid : header.referenced_series)
      refs += (refs.empty() ? "" : ", ") + uid;
    return MakeError(ErrorCode::kMismatch, where + " references series " + refs +
                                               ", not the CT series " + ct.series_uid +
                                               " (choose the referenced series with --series-uid)");
  }
  return {};
}

/// The SEG's frame size, frame count and segmentation type, as its dataset declares them.
struct SegLayout {
  Uint16 rows = 0, columns = 0, max_fraction = 0;
  Sint32 declared_frames = 0;
  std::string type;  ///< "BINARY" or "FRACTIONAL"
  std::uint64_t frame_pixels = 0;
};

/// Reads and checks the SEG's layout, including that PixelData holds every declared frame.
Expected<SegLayout> ReadSegLayout(DcmDataset& ds, const std::string& where) {
  SegLayout layout;
  Uint16 bits = 0;
  ds.findAndGetUint16(DCM_Rows, layout.rows);
  ds.findAndGetUint16(DCM_Columns, layout.columns);
  ds.findAndGetUint16(DCM_BitsAllocated, bits);
  ds.findAndGetSint32(DCM_NumberOfFrames, layout.declared_frames);
  layout.type = Text(ds, DCM_SegmentationType);
  const Uint16 rows = layout.rows, columns = layout.columns;
  const Sint32 declared_frames = layout.declared_frames;
  const std::string& type = layout.type;
  if (rows == 0 || columns == 0 || declared_frames <= 0) {
    return MakeError(ErrorCode::kCorruptData,
                     where + ": Rows, Columns and NumberOfFrames must be positive (got " +
                         std::to_string(rows) + ", " + std::to_string(columns) + ", " +
                         std::to_string(declared_frames) + ")");
  }
  if (type != "BINARY" && type != "FRACTIONAL") {
    return MakeError(ErrorCode::kUnsupported,
                     where + ": SegmentationType '" + type + "'; BINARY and FRACTIONAL are read");
  }
  if (type == "FRACTIONAL" &&
      (ds.findAndGetUint16(DCM_MaximumFractionalValue, layout.max_fraction).bad() ||
       layout.max_fraction == 0)) {
    return MakeError(ErrorCode::kCorruptData,
                     where + ": a FRACTIONAL SEG needs a positive MaximumFractionalValue");
  }
  // Missing frames: PixelData shorter than NumberOfFrames frames (checked here, before dcmseg,
  // to name the numbers; compressed PixelData is left to dcmseg).
  layout.frame_pixels = std::uint64_t(rows) * columns;
  if (!DcmXfer(ds.getOriginalXfer()).isEncapsulated()) {
    DcmElement* pixels = nullptr;
    if (ds.findAndGetElement(DCM_PixelData, pixels).bad() || pixels == nullptr) {
      return MakeError(ErrorCode::kCorruptData, where + ": no PixelData");
    }
    const std::uint64_t have = pixels->getLength();
    const std::uint64_t frame_bits = layout.frame_pixels * (type == "BINARY" ? 1 : 8);
    const std::uint64_t need = (frame_bits * std::uint64_t(declared_frames) + 7) / 8;
    if (have < need) {
      return MakeError(ErrorCode::kCorruptData,
                       where + ": NumberOfFrames says " + std::to_string(declared_frames) +
                           " frames of " + std::to_string(columns) + " x " + std::to_string(rows) +
                           ", but PixelData holds " + std::to_string(have) + " bytes, enough for " +
                           std::to_string(have * 8 / frame_bits) + ": frames are missing");
    }
  }
  return layout;
}

/// Lists the SEG's segments with their roles: from --segment-map, else from their names.
Expected<std::vector<SegmentInfo>> ReadSegments(DcmSegmentation& seg,
                                                const SegImportOptions& options,
                                                const std::string& where) {
  const std::size_t segment_count = seg.getNumberOfSegments();
  for (const auto& [number, role] : options.segment_map) {
    if (number < 1 || std::size_t(number) > segment_count) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "--segment-map names segment " + std::to_string(number) + ", but " + where +
                           " has segments 1-" + std::to_string(segment_count));
    }
  }
  std::vector<SegmentInfo> segments;
  for (std::size_t n = 1; n <= segment_count; ++n) {
    DcmSegment* segment = seg.getSegment(n);
    if (!segment) {
      return MakeError(ErrorCode::kCorruptData, where + ": segment " + std::to_string(n) + " of " +
                                                    std::to_string(segment_count) +
                                                    " cannot be read");
    }
    OFString label, description, meaning;
    segment->getSegmentLabel(label);
    segment->getSegmentDescription(description);
    segment->getSegmentedPropertyTypeCode().getCodeMeaning(meaning);
    SegmentInfo info;
    info.number = int(n);
    info.label = label.c_str();
    info.description = description.c_str();
    info.property = meaning.c_str();
    if (auto it = options.segment_map.find(int(n)); it != options.segment_map.end()) {
      info.role = it->second;
      info.reason = "--segment-map";
    } else {
      info.role = SegmentRoleFor(info.label, info.description, info.property, &info.reason);
    }
    segments.push_back(info);
  }
  return segments;
}

/// One line per segment: number, label, role and why, for error messages.
std::string DescribeSegments(const std::vector<SegmentInfo>& segments) {
  std::string out;
  for (const SegmentInfo& s : segments) {
    out += "\n  " + std::to_string(s.number) + " '" + s.label + "' -> " + SegmentRoleName(s.role) +
           " (" + s.reason + ")";
  }
  return out;
}

/// Where one frame lies on the CT's lattice, and the segment it belongs to.
struct FramePlacement {
  Uint16 segment_number = 0;
  std::int64_t i0 = 0, j0 = 0, k = 0;  ///< CT voxel of the frame's first pixel
};

/// Reads frame `f`'s segment number and plane, and checks it lies on the CT's lattice, inside it.
Expected<FramePlacement> PlaceFrame(FGInterface& groups, std::size_t f, std::size_t segment_count,
                                    const SegLayout& layout, const SegReference& ct,
                                    const std::string& frame_name) {
  const Uint16 rows = layout.rows, columns = layout.columns;
  const Index3 dims = ct.extent;
  const Eigen::Vector3d row_cosine = ct.geometry.direction.col(0);
  const Eigen::Vector3d column_cosine = ct.geometry.direction.col(1);
  const auto fg = [&](DcmFGTypes::E_FGType kind) { return groups.get(Uint32(f), kind); };
  auto* identification = static_cast<FGSegmentation*>(fg(DcmFGTypes::EFG_SEGMENTATION));
  Uint16 segment_number = 0;
  if (!identification || identification->getReferencedSegmentNumber(segment_number).bad() ||
      segment_number < 1 || segment_number > segment_count) {
    return MakeError(ErrorCode::kCorruptData,
                     frame_name + ": no Segment Identification with a segment of 1-" +
                         std::to_string(segment_count));
  }
  auto* position = static_cast<FGPlanePosPatient*>(fg(DcmFGTypes::EFG_PLANEPOSPATIENT));
  Float64 px = 0, py = 0, pz = 0;
  if (!position || position->getImagePositionPatient(px, py, pz).bad()) {
    return MakeError(ErrorCode::kCorruptData,
                     frame_name + ": no Plane Position (Patient) ImagePositionPatient");
  }
  auto* orientation =
      static_cast<FGPlaneOrientationPatient*>(fg(DcmFGTypes::EFG_PLANEORIENTPATIENT));
  Float64 o[6] = {};
  if (!orientation ||
      orientation->getImageOrientationPatient(o[0], o[1], o[2], o[3], o[4], o[5]).bad()) {
    return MakeError(ErrorCode::kCorruptData,
                     frame_name + ": no Plane Orientation (Patient) ImageOrientationPatient");
  }
  const Eigen::Vector3d row(o[0], o[1], o[2]), column(o[3], o[4], o[5]);
  if ((row - row_cosine).cwiseAbs().maxCoeff() > 1e-3 ||
      (column - column_cosine).cwiseAbs().maxCoeff() > 1e-3) {
    return MakeError(ErrorCode::kMismatch, frame_name + ": ImageOrientationPatient rows " +
                                               Vec(row) + ", columns " + Vec(column) +
                                               " differ from the CT's " + Vec(row_cosine) + ", " +
                                               Vec(column_cosine) + "; not resampled");
  }
  auto* measures = static_cast<FGPixelMeasures*>(fg(DcmFGTypes::EFG_PIXELMEASURES));
  Float64 row_spacing = 0, column_spacing = 0;
  if (!measures || measures->getPixelSpacing(row_spacing, 0).bad() ||
      measures->getPixelSpacing(column_spacing, 1).bad()) {
    return MakeError(ErrorCode::kCorruptData, frame_name + ": no Pixel Measures PixelSpacing");
  }
  const auto differs = [](double a, double b) {
    return std::abs(a - b) > 1e-4 + 1e-3 * std::abs(b);
  };
  if (differs(column_spacing, ct.geometry.spacing.x()) ||
      differs(row_spacing, ct.geometry.spacing.y())) {
    return MakeError(ErrorCode::kMismatch,
                     frame_name + ": PixelSpacing " + std::to_string(row_spacing) + "\\" +
                         std::to_string(column_spacing) + " mm differs from the CT's " +
                         std::to_string(ct.geometry.spacing.y()) + "\\" +
                         std::to_string(ct.geometry.spacing.x()) + " mm; not resampled");
  }
  const Eigen::Vector3d world(px, py, pz);
  const Eigen::Vector3d index = ct.geometry.WorldToIndex(world);
  const Eigen::Vector3d rounded = index.array().round();
  if ((index - rounded).cwiseAbs().maxCoeff() > 0.05) {
    return MakeError(ErrorCode::kMismatch,
                     frame_name + " (segment " + std::to_string(segment_number) +
                         "): ImagePositionPatient " + Vec(world) +
                         " mm falls between the CT's voxels (index " + Vec(index) +
                         "); the SEG was made on another lattice");
  }
  const std::int64_t i0 = std::int64_t(rounded.x()), j0 = std::int64_t(rounded.y()),
                     k = std::int64_t(rounded.z());
  if (i0 < 0 || j0 < 0 || k < 0 || i0 + columns > dims[0] || j0 + rows > dims[1] || k >= dims[2]) {
    return MakeError(ErrorCode::kMismatch,
                     frame_name + " (segment " + std::to_string(segment_number) +
                         "): at ImagePositionPatient " + Vec(world) + " mm it covers columns " +
                         std::to_string(i0) + "-" + std::to_string(i0 + columns - 1) + ", rows " +
                         std::to_string(j0) + "-" + std::to_string(j0 + rows - 1) + ", slice " +
                         std::to_string(k) + ", outside the CT's " + std::to_string(dims[0]) +
                         " x " + std::to_string(dims[1]) + " x " + std::to_string(dims[2]) +
                         " voxels");
  }
  return FramePlacement{segment_number, i0, j0, k};
}

/// The bytes of a BINARY SEG's PixelData when it is stored natively (not compressed), else
/// nullptr. ReadSegLayout has checked that they hold every declared frame.
const Uint8* NativeBinaryBits(DcmDataset& ds, const SegLayout& layout) {
  if (layout.type != "BINARY" || DcmXfer(ds.getOriginalXfer()).isEncapsulated()) return nullptr;
  DcmElement* pixels = nullptr;
  if (ds.findAndGetElement(DCM_PixelData, pixels).bad() || pixels == nullptr) return nullptr;
  Uint8* bytes = nullptr;
  if (pixels->getUint8Array(bytes).good() && bytes != nullptr) return bytes;
  Uint16* words = nullptr;  // OW: the same bytes on a little-endian machine
  if (pixels->getUint16Array(words).good() && words != nullptr) {
    return reinterpret_cast<const Uint8*>(words);
  }
  return nullptr;
}

/// Frame `f`'s pixel values, one byte per pixel. A BINARY frame is unpacked into `unpacked`:
/// from `native_bits` when set, else by dcmseg. Frames are packed back to back, the first pixel in
/// the lowest bit, so a frame whose pixel count is not a multiple of 8 starts inside a byte;
/// dcmseg (3.6.7) starts every frame at a byte, which read every frame after the first wrong.
Expected<const Uint8*> FramePixels(DcmSegmentation& seg, std::size_t f, const SegLayout& layout,
                                   const std::string& frame_name, const Uint8* native_bits,
                                   std::vector<Uint8>& own,
                                   std::unique_ptr<DcmIODTypes::Frame>& unpacked) {
  if (native_bits != nullptr) {
    own.resize(layout.frame_pixels);
    const std::uint64_t first = std::uint64_t(f) * layout.frame_pixels;
    for (std::uint64_t p = 0; p < layout.frame_pixels; ++p) {
      const std::uint64_t bit = first + p;
      own[p] = Uint8((native_bits[bit >> 3] >> (bit & 7)) & 1);
    }
    return own.data();
  }
  const DcmIODTypes::Frame* frame = seg.getFrame(f);
  if (!frame || !frame->pixData) {
    return MakeError(ErrorCode::kCorruptData, frame_name + ": no pixel data (a missing frame)");
  }
  const Uint8* values = frame->pixData;
  if (layout.type == "BINARY") {
    unpacked.reset(DcmSegUtils::unpackBinaryFrame(frame, layout.rows, layout.columns));
    if (!unpacked || unpacked->length < layout.frame_pixels) {
      return MakeError(ErrorCode::kCorruptData, frame_name + ": cannot unpack its bits");
    }
    values = unpacked->pixData;
  } else if (frame->length < layout.frame_pixels) {
    return MakeError(ErrorCode::kCorruptData, frame_name + ": holds " +
                                                  std::to_string(frame->length) + " of " +
                                                  std::to_string(layout.frame_pixels) + " pixels");
  }
  return values;
}

/// The liver and tumor grids being filled, with the segment that owns each voxel and overlaps.
struct SegCanvas {
  DenseVolume<std::int32_t> liver, tumor;
  std::vector<std::uint16_t> liver_owner, tumor_owner;
  std::map<std::pair<int, int>, std::int64_t> overlaps;  ///< (segment, segment) -> voxels
};

/// Paints one frame's inside pixels into its role's grid; where two segments claim a voxel the
/// higher role value wins (necrosis over tumor) and the overlap is counted.
void PaintFrame(const Uint8* values, const SegLayout& layout, const FramePlacement& at_plane,
                SegmentInfo& info, SegCanvas& canvas) {
  const bool is_liver = info.role == SegmentRole::kLiver;
  DenseVolume<std::int32_t>& grid = is_liver ? canvas.liver : canvas.tumor;
  std::vector<std::uint16_t>& owner = is_liver ? canvas.liver_owner : canvas.tumor_owner;
  const std::int32_t value = RoleValue(info.role);
  const Uint16 rows = layout.rows, columns = layout.columns;
  const Uint16 segment_number = at_plane.segment_number;
  for (std::int64_t j = 0; j < rows; ++j) {
    for (std::int64_t i = 0; i < columns; ++i) {
      const Uint8 v = values[std::size_t(j) * columns + std::size_t(i)];
      const bool inside = layout.type == "BINARY" ? v != 0 : 2u * v >= layout.max_fraction;
      if (!inside) continue;
      const std::size_t at = grid.Offset(at_plane.i0 + i, at_plane.j0 + j, at_plane.k);
      ++info.voxels;
      if (owner[at] == 0) {
        owner[at] = segment_number;
        grid.data[at] = value;
        continue;
      }
      ++canvas.overlaps[{std::min<int>(owner[at], segment_number),
                         std::max<int>(owner[at], segment_number)}];
      if (value > grid.data[at]) {
        grid.data[at] = value;
        owner[at] = segment_number;
      }
    }
  }
}

/// One note per overlapping pair of segments: how many voxels, and how they were merged.
std::vector<std::string> OverlapNotes(const std::map<std::pair<int, int>, std::int64_t>& overlaps,
                                      const std::vector<SegmentInfo>& segments) {
  std::vector<std::string> notes;
  for (const auto& [pair, count] : overlaps) {
    const SegmentInfo& a = segments[pair.first - 1];
    const SegmentInfo& b = segments[pair.second - 1];
    std::string what;
    if (a.role == b.role) {
      what = "joined (both " + std::string(SegmentRoleName(a.role)) + ")";
    } else {
      what = "kept as necrosis (tumor value 2; tumor either way)";
    }
    notes.push_back("segments " + std::to_string(a.number) + " '" + a.label + "' (" +
                    SegmentRoleName(a.role) + ") and " + std::to_string(b.number) + " '" + b.label +
                    "' (" + SegmentRoleName(b.role) + ") overlap in " + std::to_string(count) +
                    " voxels: " + what);
  }
  return notes;
}

/// The label set's provenance: the SEG file, both series, the type, segments and overlaps.
std::string SegProvenanceJson(const std::string& seg_path, const SegHeader& header,
                              const SegReference& ct, const SegImportResult& result) {
  nlohmann::json segments = nlohmann::json::array();
  for (const SegmentInfo& s : result.segments) {
    segments.push_back({{"number", s.number},
                        {"label", s.label},
                        {"role", SegmentRoleName(s.role)},
                        {"reason", s.reason},
                        {"frames", s.frames},
                        {"voxels", s.voxels}});
  }
  return nlohmann::json{{"source", "dicom-seg"},
                        {"reader", "DCMTK dcmseg"},
                        {"file", fs::absolute(seg_path).lexically_normal().string()},
                        {"seg_series_uid", header.series_uid},
                        {"ct_series_uid", ct.series_uid},
                        {"frame_of_reference_uid", header.frame_of_reference_uid},
                        {"segmentation_type", result.type},
                        {"segments", segments},
                        {"overlaps", result.notes}}
      .dump();
}

}  // namespace

Expected<SegImportResult> ImportSegmentation(const std::string& seg_path, const SegReference& ct,
                                             const SegImportOptions& options) {
  MEWM_TRY(const SegHeader header, ReadSegHeader(seg_path));
  const std::string where = "'" + seg_path + "'";
  // The SEG must have been drawn on this CT: its frame of reference and referenced series.
  MEWM_RETURN_IF_ERROR(CheckSegDrawnOnCt(header, ct, where));

  DcmFileFormat file;
  if (OFCondition loaded = LoadDicomFile(file, seg_path); loaded.bad()) {
    return MakeError(ErrorCode::kIo, where + ": " + loaded.text());
  }
  DcmDataset& ds = *file.getDataset();
  MEWM_TRY(const SegLayout layout, ReadSegLayout(ds, where));

  DcmSegmentation* raw = nullptr;
  const OFCondition read = DcmSegmentation::loadDataset(ds, raw);
  std::unique_ptr<DcmSegmentation> seg(raw);
  if (read.bad() || !seg) {
    return MakeError(ErrorCode::kCorruptData,
                     where + ": DCMTK's dcmseg cannot read it as a segmentation: " + read.text());
  }

  // Segments and their roles.
  SegImportResult result;
  result.type = layout.type;
  const std::size_t segment_count = seg->getNumberOfSegments();
  MEWM_TRY(result.segments, ReadSegments(*seg, options, where));
  const bool any_liver =
                 std::any_of(result.segments.begin(), result.segments.end(),
                             [](const SegmentInfo&s) { return s.role == SegmentRole::kLiver; }),
             any_tumor = std::any_of(
                 result.segments.begin(), result.segments.end(), [](const SegmentInfo&s) {
                   return s.role == SegmentRole::kTumor || s.role == SegmentRole::kNecrosis;
                 });
  if (!any_liver && !any_tumor) {
    return MakeError(ErrorCode::kInvalidArgument,
                     where +
                         ": no segment maps to liver, tumor or necrosis; map them with "
                         "--segment-map (e.g. 1=liver,2=tumor). Segments:" +
                         DescribeSegments(result.segments));
  }

  // Frames onto the CT's lattice.
  const Index3 dims = ct.extent;
  const std::size_t voxels = std::size_t(dims[0]) * std::size_t(dims[1]) * std::size_t(dims[2]);
  SegCanvas canvas{DenseVolume<std::int32_t>(dims, ct.geometry, 0),
                   DenseVolume<std::int32_t>(dims, ct.geometry, 0),
                   std::vector<std::uint16_t>(any_liver ? voxels : 0),
                   std::vector<std::uint16_t>(any_tumor ? voxels : 0),
                   {}};
  std::map<std::pair<int, std::int64_t>, std::size_t> slice_of;  // (segment, k) -> frame
  FGInterface& groups = seg->getFunctionalGroups();
  const std::size_t frame_count = seg->getNumberOfFrames();
  if (frame_count != std::size_t(layout.declared_frames)) {
    return MakeError(ErrorCode::kCorruptData,
                     where + ": NumberOfFrames says " + std::to_string(layout.declared_frames) +
                         ", dcmseg read " + std::to_string(frame_count) + " frames");
  }
  result.frames = int(frame_count);
  const Uint8* native_bits = NativeBinaryBits(ds, layout);
  std::vector<Uint8> own;
  for (std::size_t f = 0; f < frame_count; ++f) {
    const std::string frame_name = where + " frame " + std::to_string(f + 1);
    MEWM_TRY(const FramePlacement placement,
             PlaceFrame(groups, f, segment_count, layout, ct, frame_name));
    const Uint16 segment_number = placement.segment_number;
    if (auto [it, inserted] = slice_of.emplace(std::make_pair(int(segment_number), placement.k), f);
        !inserted) {
      return MakeError(ErrorCode::kCorruptData,
                       where + ": segment " + std::to_string(segment_number) + " has two frames (" +
                           std::to_string(it->second + 1) + " and " + std::to_string(f + 1) +
                           ") at CT slice " + std::to_string(placement.k));
    }
    SegmentInfo& info = result.segments[segment_number - 1];
    ++info.frames;
    if (info.role == SegmentRole::kIgnore) continue;
    std::unique_ptr<DcmIODTypes::Frame> unpacked;
    MEWM_TRY(const Uint8* values,
             FramePixels(*seg, f, layout, frame_name, native_bits, own, unpacked));
    PaintFrame(values, layout, placement, info, canvas);
  }
  result.notes = OverlapNotes(canvas.overlaps, result.segments);
  if (any_liver) {
    MEWM_TRY(LabelVolume grid, LabelVolume::FromDense(canvas.liver, "liver"));
    result.set.labels.emplace("liver", std::move(grid));
  }
  if (any_tumor) {
    MEWM_TRY(LabelVolume grid, LabelVolume::FromDense(canvas.tumor, "tumor"));
    result.set.labels.emplace("tumor", std::move(grid));
  }
  result.set.metadata.patient_id = header.patient_id;
  result.set.metadata.modality = "SEG";
  result.set.metadata.units = "";
  result.set.metadata.provenance_json = SegProvenanceJson(seg_path, header, ct, result);
  return result;
}

}  // namespace mewm::dicom

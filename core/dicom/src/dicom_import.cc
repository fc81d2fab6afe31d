// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/dicom/dicom_import.h"

#include <dcmtk/config/osconfig.h>  // first, as DCMTK asks
//
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcxfer.h>

#include <Eigen/Geometry>
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "dcmtk_util.h"
#include "mewm/core/dense.h"
#include "mewm/core/file_util.h"
#include "mewm/core/limits.h"

namespace mewm::dicom {
namespace {

namespace fs = std::filesystem;

using detail::HasPreamble;
using detail::InitDcmtk;
using detail::LoadDicomFile;
using detail::Text;

/// `count` decimal values of a multi-valued tag, or kCorruptData naming it.
Expected<std::vector<double>> Numbers(DcmDataset& ds, const DcmTagKey& tag, unsigned count,
                                      const char* name, const std::string& file) {
  std::vector<double> out(count);
  for (unsigned i = 0; i < count; ++i) {
    Float64 value = 0;
    if (ds.findAndGetFloat64(tag, value, i).bad() || !std::isfinite(value)) {
      return MakeError(ErrorCode::kCorruptData, "'" + file + "': " + name +
                                                    " is missing or has fewer than " +
                                                    std::to_string(count) + " numbers");
    }
    out[i] = value;
  }
  return out;
}

/// One file of a series: what sorting and checking need.
struct Slice {
  std::string path;
  Eigen::Vector3d position, row, column;
  double row_spacing = 0, column_spacing = 0;  ///< PixelSpacing[0] (between rows), [1]
  unsigned rows = 0, columns = 0;
  double along = 0;  ///< position along the normal
};

struct FileHeader {
  std::string path, series_uid, modality, description, patient_id;
  Expected<Slice> geometry = Slice{};  ///< read in the same pass, checked when imported
  std::string frame_of_reference_uid;
};

Expected<Slice> ReadGeometry(DcmDataset& ds, const std::string& path) {
  Slice slice;
  slice.path = path;
  MEWM_TRY(const auto iop, Numbers(ds, DCM_ImageOrientationPatient, 6,
                                   "ImageOrientationPatient (0020,0037)", path));
  MEWM_TRY(const auto ipp,
           Numbers(ds, DCM_ImagePositionPatient, 3, "ImagePositionPatient (0020,0032)", path));
  MEWM_TRY(const auto spacing, Numbers(ds, DCM_PixelSpacing, 2, "PixelSpacing (0028,0030)", path));
  slice.row = {iop[0], iop[1], iop[2]};
  slice.column = {iop[3], iop[4], iop[5]};
  slice.position = {ipp[0], ipp[1], ipp[2]};
  slice.row_spacing = spacing[0];
  slice.column_spacing = spacing[1];
  Uint16 rows = 0, columns = 0;
  if (ds.findAndGetUint16(DCM_Rows, rows).bad() ||
      ds.findAndGetUint16(DCM_Columns, columns).bad() || rows == 0 || columns == 0) {
    return MakeError(ErrorCode::kCorruptData, "'" + path + "': no Rows/Columns");
  }
  slice.rows = rows;
  slice.columns = columns;
  // The pixels' size from the header alone (they stay on disk here): a slice that declares more
  // pixels than its PixelData holds is refused before the volume is allocated (8 files of 1 KB
  // declaring 4096 x 4096 took 722 MB first).
  Uint16 allocated = 0;
  ds.findAndGetUint16(DCM_BitsAllocated, allocated);
  DcmElement* pixels = nullptr;
  if ((allocated == 8 || allocated == 16) && !DcmXfer(ds.getOriginalXfer()).isEncapsulated() &&
      ds.findAndGetElement(DCM_PixelData, pixels).good() && pixels != nullptr) {
    const std::uint64_t need = std::uint64_t(rows) * columns * (allocated / 8u);
    if (pixels->getLength() < need) {
      return MakeError(ErrorCode::kCorruptData,
                       "'" + path + "': PixelData holds " + std::to_string(pixels->getLength()) +
                           " bytes, not the " + std::to_string(need) + " of " +
                           std::to_string(columns) + " x " + std::to_string(rows) + " pixels of " +
                           std::to_string(allocated) + " bits");
    }
  }
  if (!(spacing[0] > 0) || !(spacing[1] > 0)) {
    return MakeError(ErrorCode::kCorruptData, "'" + path + "': PixelSpacing must be positive");
  }
  return slice;
}

/// Every regular file under `folder` (sorted, so runs are repeatable), at most max_files. Symbolic
/// links that lead out of the folder are skipped and counted in `outside`: a folder that a server
/// confines stays confined.
Expected<std::vector<fs::path>> ListFiles(const std::string& folder, int max_files, int* outside) {
  std::error_code ec;
  if (!fs::is_directory(folder, ec)) {
    return MakeError(ErrorCode::kNotFound, "'" + folder + "' is not a folder");
  }
  std::vector<fs::path> files;
  for (auto it = fs::recursive_directory_iterator(folder, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (!it->is_regular_file(ec)) continue;
    if (it->is_symlink(ec) && !IsPathInside(it->path().string(), folder)) {
      ++*outside;
      continue;
    }
    files.push_back(it->path());
    if (int(files.size()) > max_files) {
      return MakeError(ErrorCode::kInvalidArgument, "'" + folder + "' holds more than " +
                                                        std::to_string(max_files) +
                                                        " files; point at the series' own folder");
    }
  }
  if (ec) return MakeError(ErrorCode::kIo, "cannot list '" + folder + "': " + ec.message());
  std::sort(files.begin(), files.end());
  return files;
}

/// The header of every DICOM file under the folder (pixel data is not read).
Expected<std::vector<FileHeader>> ReadHeaders(const std::string& folder, int max_files,
                                              FolderScan* scan) {
  InitDcmtk();
  MEWM_TRY(const std::vector<fs::path> files, ListFiles(folder, max_files, &scan->outside));
  scan->files = int(files.size());
  std::vector<FileHeader> headers;
  for (const fs::path& path : files) {
    DcmFileFormat file;
    // Part 10 files only (the preamble), and elements over 4 KiB (the pixels) left on disk.
    if (!HasPreamble(path)) {
      ++scan->not_dicom;
      continue;
    }
    if (OFCondition loaded = LoadDicomFile(file, path.string(), 4096, ERM_fileOnly); loaded.bad()) {
      // A DICOM file cut short: skipping it would drop a slice without a word when it is the
      // first or last of the series (a gap inside one is refused as uneven spacing).
      scan->damaged.push_back("'" + path.string() + "' (" + loaded.text() + ")");
      continue;
    }
    DcmDataset& ds = *file.getDataset();
    FileHeader header{path.string(),
                      Text(ds, DCM_SeriesInstanceUID),
                      Text(ds, DCM_Modality),
                      Text(ds, DCM_SeriesDescription),
                      Text(ds, DCM_PatientID),
                      ReadGeometry(ds, path.string()),
                      Text(ds, DCM_FrameOfReferenceUID)};
    if (header.series_uid.empty()) {
      ++scan->not_dicom;  // a DICOMDIR or another non-image object
      continue;
    }
    headers.push_back(std::move(header));
  }
  std::map<std::string, SeriesInfo> series;
  for (const FileHeader& h : headers) {
    SeriesInfo& s = series[h.series_uid];
    if (s.files == 0) {
      s = {h.series_uid, h.modality, h.description, h.patient_id, 0, h.frame_of_reference_uid};
    }
    ++s.files;
  }
  for (auto& [uid, info] : series) scan->series.push_back(info);
  return headers;
}

std::string Mm(double value) {
  std::ostringstream out;
  out.precision(4);
  out << value;
  return out.str() + " mm";
}

/// Decodes one slice's pixels into HU (slope/intercept applied) at `out`.
Status ReadPixels(const std::string& path, const Slice& expected, float* out) {
  DcmFileFormat file;
  if (OFCondition loaded = LoadDicomFile(file, path); loaded.bad()) {
    return MakeError(ErrorCode::kIo, "'" + path + "': " + loaded.text());
  }
  DcmDataset& ds = *file.getDataset();
  const DcmXfer xfer(ds.getOriginalXfer());
  if (xfer.isEncapsulated()) {
    if (ds.chooseRepresentation(EXS_LittleEndianExplicit, nullptr).bad() ||
        !ds.canWriteXfer(EXS_LittleEndianExplicit)) {
      return MakeError(ErrorCode::kUnsupported,
                       "'" + path + "': transfer syntax " + xfer.getXferName() + " (" +
                           xfer.getXferID() +
                           ") cannot be decoded here (DCMTK decodes JPEG, JPEG-LS and RLE); "
                           "decompress the series first, e.g. with GDCM's gdcmconv --raw");
    }
  }
  Uint16 samples = 1, allocated = 0, stored = 0, high = 0, representation = 0;
  ds.findAndGetUint16(DCM_SamplesPerPixel, samples);
  ds.findAndGetUint16(DCM_BitsAllocated, allocated);
  ds.findAndGetUint16(DCM_BitsStored, stored);
  ds.findAndGetUint16(DCM_HighBit, high);
  ds.findAndGetUint16(DCM_PixelRepresentation, representation);
  Sint32 frames = 1;
  if (ds.findAndGetSint32(DCM_NumberOfFrames, frames).bad()) frames = 1;
  if (samples != 1 || frames != 1) {
    return MakeError(ErrorCode::kUnsupported,
                     "'" + path + "': " + std::to_string(samples) + " samples per pixel and " +
                         std::to_string(frames) +
                         " frames; only single-frame greyscale slices (a classic CT series) "
                         "are read");
  }
  if (stored == 0) stored = allocated;
  if ((allocated != 8 && allocated != 16) || stored > allocated || high + 1 != stored) {
    return MakeError(ErrorCode::kUnsupported, "'" + path + "': BitsAllocated " +
                                                  std::to_string(allocated) + ", BitsStored " +
                                                  std::to_string(stored) + ", HighBit " +
                                                  std::to_string(high) + " are not supported");
  }
  Float64 slope = 1.0, intercept = 0.0;
  if (ds.findAndGetFloat64(DCM_RescaleSlope, slope).bad()) slope = 1.0;
  if (ds.findAndGetFloat64(DCM_RescaleIntercept, intercept).bad()) intercept = 0.0;
  if (!std::isfinite(slope) || !std::isfinite(intercept) || slope == 0.0) {
    return MakeError(ErrorCode::kCorruptData, "'" + path + "': bad RescaleSlope/Intercept");
  }
  const std::size_t count = std::size_t(expected.rows) * expected.columns;
  const std::uint32_t mask = stored >= 32 ? 0xffffffffu : (1u << stored) - 1u;
  const auto value = [&](std::uint32_t raw) {
    raw &= mask;
    std::int64_t v = raw;
    if (representation == 1 && (raw >> (stored - 1)) & 1u) v -= std::int64_t(1) << stored;
    return float(double(v) * slope + intercept);
  };
  unsigned long have = 0;
  if (allocated == 16) {
    const Uint16* pixels = nullptr;
    if (ds.findAndGetUint16Array(DCM_PixelData, pixels, &have).bad() || pixels == nullptr) {
      return MakeError(ErrorCode::kCorruptData, "'" + path + "': no readable PixelData");
    }
    if (have < count) {
      return MakeError(ErrorCode::kCorruptData, "'" + path + "': PixelData holds " +
                                                    std::to_string(have) + " values, not " +
                                                    std::to_string(count));
    }
    for (std::size_t i = 0; i < count; ++i) out[i] = value(pixels[i]);
  } else {
    const Uint8* pixels = nullptr;
    if (ds.findAndGetUint8Array(DCM_PixelData, pixels, &have).bad() || pixels == nullptr ||
        have < count) {
      return MakeError(ErrorCode::kCorruptData, "'" + path + "': PixelData too short");
    }
    for (std::size_t i = 0; i < count; ++i) out[i] = value(pixels[i]);
  }
  return {};
}

}  // namespace

Expected<FolderScan> ScanFolder(const std::string& folder, int max_files) {
  FolderScan scan;
  MEWM_TRY(const auto headers, ReadHeaders(folder, max_files, &scan));
  (void)headers;
  return scan;
}

std::string DescribeSeries(const FolderScan& scan) {
  std::ostringstream out;
  for (const SeriesInfo& s : scan.series) {
    out << "  " << s.series_uid << "  " << (s.modality.empty() ? "?" : s.modality) << "  "
        << s.files << " file" << (s.files == 1 ? "" : "s");
    if (!s.description.empty()) out << "  \"" << s.description << "\"";
    out << '\n';
  }
  return out.str();
}

namespace {

/// The series to import: the only one, or the one `options.series_uid` names.
Expected<const SeriesInfo*> ChooseSeries(const FolderScan& scan, const std::string& folder,
                                         const ImportOptions& options) {
  if (scan.series.empty()) {
    return detail::NoImageSeries(scan, folder);
  }
  const SeriesInfo* chosen = nullptr;
  if (options.series_uid.empty()) {
    if (scan.series.size() > 1) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "'" + folder + "' holds " + std::to_string(scan.series.size()) +
                           " series; choose one with --series-uid:\n" + DescribeSeries(scan));
    }
    chosen = &scan.series.front();
  } else {
    for (const SeriesInfo& s : scan.series) {
      if (s.series_uid == options.series_uid) chosen = &s;
    }
    if (!chosen) {
      return MakeError(ErrorCode::kNotFound, "no series " + options.series_uid + " in '" + folder +
                                                 "'; it holds:\n" + DescribeSeries(scan));
    }
  }
  return chosen;
}

/// Checks that all slices share one orientation (two unit vectors at right angles), rows,
/// columns and pixel spacing.
Status CheckSlicesAgree(const std::vector<Slice>& slices) {
  const Slice& first = slices.front();
  for (const Slice& s : slices) {
    if ((s.row - first.row).cwiseAbs().maxCoeff() > 1e-4 ||
        (s.column - first.column).cwiseAbs().maxCoeff() > 1e-4) {
      return MakeError(ErrorCode::kUnsupported,
                       "mixed orientations: '" + s.path + "' and '" + first.path +
                           "' have different ImageOrientationPatient; not imported");
    }
    if (s.rows != first.rows || s.columns != first.columns ||
        std::abs(s.row_spacing - first.row_spacing) > 1e-4 ||
        std::abs(s.column_spacing - first.column_spacing) > 1e-4) {
      return MakeError(ErrorCode::kUnsupported, "'" + s.path + "' and '" + first.path +
                                                    "' differ in Rows, Columns or PixelSpacing");
    }
  }
  if (std::abs(first.row.norm() - 1) > 1e-3 || std::abs(first.column.norm() - 1) > 1e-3 ||
      std::abs(first.row.dot(first.column)) > 1e-3) {
    return MakeError(ErrorCode::kCorruptData,
                     "'" + first.path +
                         "': ImageOrientationPatient is not two unit vectors at "
                         "right angles");
  }
  return {};
}

/// The distance between slices sorted along `normal`: their common step, checked to be regular
/// (no repeated position, no gantry tilt, no uneven gap); one slice takes its SliceThickness.
Expected<double> SliceStep(const std::vector<Slice>& slices, const Eigen::Vector3d& normal) {
  // A regular lattice: each step along the normal, without a sideways shift (tilt), all equal.
  std::vector<double> steps;
  for (std::size_t k = 1; k < slices.size(); ++k) {
    const Eigen::Vector3d d = slices[k].position - slices[k - 1].position;
    const double along = d.dot(normal);
    if (along < 1e-3) {
      return MakeError(ErrorCode::kUnsupported, "'" + slices[k - 1].path + "' and '" +
                                                    slices[k].path +
                                                    "' lie at one position (several "
                                                    "acquisitions or echoes in one series?)");
    }
    const double sideways = (d - along * normal).norm();
    if (sideways > 1e-2 + 1e-3 * along) {
      return MakeError(ErrorCode::kUnsupported,
                       "gantry tilt: consecutive slices are shifted " + Mm(sideways) +
                           " sideways per " + Mm(along) + " step (" +
                           std::to_string(std::atan2(sideways, along) * 180.0 / M_PI) +
                           " degrees) between '" + slices[k - 1].path + "' and '" + slices[k].path +
                           "'; not imported (resample it first, e.g. dcm2niix)");
    }
    steps.push_back(along);
  }
  double step = 0.0;
  if (!steps.empty()) {
    std::vector<double> sorted = steps;
    std::nth_element(sorted.begin(), sorted.begin() + sorted.size() / 2, sorted.end());
    step = sorted[sorted.size() / 2];
    for (std::size_t k = 0; k < steps.size(); ++k) {
      if (std::abs(steps[k] - step) > std::max(1e-2, 0.01 * step)) {
        return MakeError(ErrorCode::kUnsupported, "uneven slice spacing: '" + slices[k].path +
                                                      "' and '" + slices[k + 1].path + "' are " +
                                                      Mm(steps[k]) +
                                                      " apart where the series steps " + Mm(step) +
                                                      " (a missing slice?); not imported");
      }
    }
  } else {
    DcmFileFormat file;
    Float64 thickness = 0;
    if (LoadDicomFile(file, slices.front().path, 4096).good()) {
      file.getDataset()->findAndGetFloat64(DCM_SliceThickness, thickness);
    }
    step = thickness > 0 ? thickness : 1.0;
  }
  return step;
}

/// The imported CT's provenance: folder, series, frame of reference, slices and step.
std::string SeriesProvenanceJson(const std::string& folder, const SeriesInfo& chosen,
                                 std::size_t slices, double step) {
  return nlohmann::json{{"source", "dicom"},
                        {"reader", "DCMTK"},
                        {"folder", fs::absolute(folder).lexically_normal().string()},
                        {"series_uid", chosen.series_uid},
                        {"frame_of_reference_uid", chosen.frame_of_reference_uid},
                        {"series_description", chosen.description},
                        {"slices", slices},
                        {"slice_step_mm", step}}
      .dump();
}

}  // namespace

Expected<ImportResult> ImportSeries(const std::string& folder, const ImportOptions& options) {
  FolderScan scan;
  MEWM_TRY(const std::vector<FileHeader> headers, ReadHeaders(folder, options.max_files, &scan));
  if (!scan.damaged.empty()) {
    return MakeError(ErrorCode::kCorruptData,
                     std::to_string(scan.damaged.size()) + " file" +
                         (scan.damaged.size() == 1 ? "" : "s") + " in '" + folder +
                         "' start like DICOM but cannot be read, first " + scan.damaged.front() +
                         "; a slice of the series may be among them, so nothing is imported. "
                         "Repair them or move them out of the folder");
  }
  if (scan.outside > 0) {
    // Skipped for confinement: one of them may be a slice (the first or last of the series goes
    // missing without a gap), so the import stops rather than give a shorter volume.
    return MakeError(ErrorCode::kInvalidArgument,
                     "'" + folder + "': " + std::to_string(scan.outside) +
                         " links out of the folder skipped (symbolic links are read only inside "
                         "it); a slice of the series may be among them, so nothing is imported. "
                         "Copy the files into the folder");
  }
  MEWM_TRY(const SeriesInfo* chosen, ChooseSeries(scan, folder, options));
  // Geometry of every slice, from the headers.
  std::vector<Slice> slices;
  for (const FileHeader& h : headers) {
    if (h.series_uid != chosen->series_uid) continue;
    if (!h.geometry) return h.geometry.error();
    slices.push_back(*h.geometry);
  }
  // One orientation, rows, columns and pixel spacing for all.
  MEWM_RETURN_IF_ERROR(CheckSlicesAgree(slices));
  const Slice& first = slices.front();
  const Eigen::Vector3d row = first.row.normalized();
  const Eigen::Vector3d column = (first.column - first.column.dot(row) * row).normalized();
  const Eigen::Vector3d normal = row.cross(column);
  for (Slice& s : slices) s.along = s.position.dot(normal);
  std::sort(slices.begin(), slices.end(),
            [](const Slice& a, const Slice& b) { return a.along < b.along; });
  MEWM_TRY(const double step, SliceStep(slices, normal));
  // `first` is now the lowest slice along the normal.
  const Index3 dims{std::int64_t(first.columns), std::int64_t(first.rows),
                    std::int64_t(slices.size())};
  MEWM_RETURN_IF_ERROR(CheckImageVoxels(
      folder,
      std::to_string(dims[0]) + " x " + std::to_string(dims[1]) + " x " + std::to_string(dims[2]),
      std::uint64_t(dims[0]) * std::uint64_t(dims[1]) * std::uint64_t(dims[2]), sizeof(float)));
  Geometry geometry;
  geometry.spacing = {first.column_spacing, first.row_spacing, step};
  geometry.direction.col(0) = row;
  geometry.direction.col(1) = column;
  geometry.direction.col(2) = normal;
  geometry.origin = slices.front().position;
  DenseVolume<float> dense(dims, geometry, -1000.0f);
  const std::size_t per_slice = std::size_t(dims[0] * dims[1]);
  for (std::size_t k = 0; k < slices.size(); ++k) {
    MEWM_RETURN_IF_ERROR(ReadPixels(slices[k].path, first, dense.data.data() + k * per_slice));
  }
  // A spacing, origin or HU value out of range comes from the headers: say where.
  auto made = Volume::FromDense(dense, "ct");
  if (!made) {
    return made.error().WithContext(
        "series " + chosen->series_uid + " in '" + folder +
        "' (spacing from PixelSpacing and the slice positions, origin from "
        "ImagePositionPatient, HU = stored value x RescaleSlope + RescaleIntercept)");
  }
  Volume ct = std::move(*made);
  ImportResult result;
  result.series = *chosen;
  result.slices = int(slices.size());
  result.slice_step_mm = step;
  result.not_dicom = scan.not_dicom;
  result.set.metadata.patient_id =
      chosen->patient_id.empty() ? fs::path(folder).filename().string() : chosen->patient_id;
  result.set.metadata.modality = chosen->modality.empty() ? "CT" : chosen->modality;
  result.set.metadata.units = result.set.metadata.modality == "CT" ? "HU" : "";
  result.set.metadata.provenance_json = SeriesProvenanceJson(folder, *chosen, slices.size(), step);
  result.set.scalars.emplace("ct", std::move(ct));
  return result;
}

}  // namespace mewm::dicom

// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// `mewm turing export`: blinded real-versus-synthetic cases, and reading the export back.
#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "mewm/core/file_util.h"
#include "mewm/core/nifti_io.h"
#include "mewm/core/render.h"
#include "mewm/core/seed.h"
#include "mewm/core/sha256.h"
#include "mewm/core/vdb_io.h"
#include "mewm/core/version.h"
#include "mewm/eval/turing.h"
#include "mewm/planner/planner.h"
#include "mewm/run/cohort_source.h"
#include "study_json.h"

namespace mewm::scenarios {
namespace fs = std::filesystem;

namespace {

constexpr const char* kManifestFormat = "mewm-turing-export";
constexpr const char* kKeyFormat = "mewm-turing-key";
/// The most a manifest or key may hold: about 100 bytes a case, so over 100,000 cases.
constexpr std::uint64_t kMaxStudyJsonBytes = 16u << 20;

/// The cases of one patient before blinding.
struct PatientVolumes {
  std::string patient, plan;
  DenseFloat real, synthetic;
};

/// One case before it is written: its volumes in display order and which one is synthetic.
struct PendingCase {
  const PatientVolumes* source = nullptr;
  std::vector<bool> synthetic;  ///< per volume (single: one entry)
};

/// Centroid (index space) of the largest lesion label of a tumor mask.
Eigen::Vector3d LargestLesionCentroid(const LabelVolume& tumor) {
  std::map<std::int32_t, std::pair<std::int64_t, Eigen::Vector3d>> sums;
  for (auto it = tumor.grid().cbeginValueOn(); it; ++it) {
    if (*it == 0) continue;
    auto& [count, sum] = sums.try_emplace(*it, 0, Eigen::Vector3d::Zero()).first->second;
    ++count;
    sum += Eigen::Vector3d(it.getCoord().x(), it.getCoord().y(), it.getCoord().z());
  }
  std::int64_t best = 0;
  Eigen::Vector3d centroid = Eigen::Vector3d::Zero();
  for (const auto& [label, entry] : sums) {
    if (entry.first > best) {
      best = entry.first;
      centroid = entry.second / double(entry.first);
    }
  }
  return centroid;
}

/// The crop box: `crop_mm` per axis at the native spacing around `centre`, kept inside the extent
/// when the extent is large enough (padded with air, centred, otherwise).
IndexBox CropBox(const Geometry& geometry, const Index3& extent, const Eigen::Vector3d& centre,
                 double crop_mm) {
  IndexBox box;
  for (int a = 0; a < 3; ++a) {
    const std::int64_t size =
        std::max<std::int64_t>(8, std::llround(crop_mm / geometry.spacing[a]));
    std::int64_t lo = std::llround(centre[a]) - size / 2;
    if (extent[a] >= size) {
      lo = std::clamp<std::int64_t>(lo, 0, extent[a] - size);
    } else {
      lo = -(size - extent[a]) / 2;
    }
    box.min[a] = lo;
    box.max[a] = lo + size - 1;
  }
  return box;
}

/// Whole HU, as real CT is stored; both classes get it.
void RoundHu(DenseFloat& image) {
  for (float& v : image.data) v = std::round(v);
}

/// Axial | coronal | sagittal through the crop centre, side by side, vertically centred on black.
Expected<RgbImage> Montage(const DenseFloat& crop) {
  MEWM_TRY(Volume volume, Volume::FromDense(crop, "ct"));
  std::vector<RgbImage> panels;
  const std::pair<SlicePlane, int> planes[] = {
      {SlicePlane::kAxial, 2}, {SlicePlane::kCoronal, 1}, {SlicePlane::kSagittal, 0}};
  for (const auto& [plane, axis] : planes) {
    SliceSpec spec;
    spec.plane = plane;
    spec.index = crop.dims[axis] / 2;
    spec.window = kLiverWindow;
    MEWM_TRY(RgbImage panel, RenderSlice(volume, spec));
    panels.push_back(std::move(panel));
  }
  // Readers see the montage on a screen: each panel is enlarged (nearest neighbour, an integer
  // factor) to about 256 pixels.
  for (RgbImage& p : panels) {
    const int factor = std::max(1, 256 / std::max(p.width, p.height));
    if (factor == 1) continue;
    RgbImage big;
    big.width = p.width * factor;
    big.height = p.height * factor;
    big.pixels.resize(std::size_t(big.width) * big.height * 3);
    for (int y = 0; y < big.height; ++y) {
      for (int x = 0; x < big.width; ++x) {
        std::copy_n(p.pixels.begin() + (std::ptrdiff_t(y / factor) * p.width + x / factor) * 3, 3,
                    big.pixels.begin() + (std::ptrdiff_t(y) * big.width + x) * 3);
      }
    }
    p = std::move(big);
  }
  constexpr int kGap = 4;
  RgbImage out;
  for (const RgbImage& p : panels) {
    out.width += p.width + (out.width > 0 ? kGap : 0);
    out.height = std::max(out.height, p.height);
  }
  out.pixels.assign(std::size_t(out.width) * out.height * 3, 0);
  int x0 = 0;
  for (const RgbImage& p : panels) {
    const int y0 = (out.height - p.height) / 2;
    for (int y = 0; y < p.height; ++y) {
      std::copy_n(p.pixels.begin() + std::ptrdiff_t(y) * p.width * 3, p.width * 3,
                  out.pixels.begin() + (std::ptrdiff_t(y0 + y) * out.width + x0) * 3);
    }
    x0 += p.width + kGap;
  }
  return out;
}

/// A .nii.gz whose gzip stream is stored, not deflated (level 0): its size is the same for every
/// volume of the same dims, so it cannot tell how compressible, and so how noisy, the image is.
Status WriteStoredNiftiGz(const std::string& path, const DenseFloat& image) {
  return WriteAtomically(path, [&](const std::string& temp) -> Status {
    const std::string raw = temp.substr(0, temp.size() - 3);  // ".nii"
    MEWM_RETURN_IF_ERROR(WriteNifti(raw, image));
    auto bytes = ReadFile(raw);
    std::error_code ec;
    fs::remove(raw, ec);
    if (!bytes) return bytes.error();
    gzFile out = gzopen(temp.c_str(), "wb0");
    if (out == nullptr) return MakeError(ErrorCode::kIo, "cannot write '" + path + "'");
    const bool written = gzwrite(out, bytes->data(), unsigned(bytes->size())) == int(bytes->size());
    if (gzclose(out) != Z_OK || !written) {
      return MakeError(ErrorCode::kIo, "cannot write '" + path + "'");
    }
    return {};
  });
}

void PngChunk(std::string& out, const char* type, const std::string& data) {
  const auto be32 = [&](std::uint32_t v) {
    for (int s = 24; s >= 0; s -= 8) out.push_back(char((v >> s) & 0xff));
  };
  be32(std::uint32_t(data.size()));
  const std::string body = std::string(type, 4) + data;
  out += body;
  be32(std::uint32_t(crc32(0L, reinterpret_cast<const Bytef*>(body.data()), uInt(body.size()))));
}

/// An 8-bit RGB PNG with stored (level 0) zlib data and filter 0 on every row: its size follows
/// its dimensions alone.
Status WriteStoredPng(const std::string& path, const RgbImage& image) {
  std::string raw;
  raw.reserve(std::size_t(image.height) * (1 + std::size_t(image.width) * 3));
  for (int y = 0; y < image.height; ++y) {
    raw.push_back('\0');
    raw.append(
        reinterpret_cast<const char*>(image.pixels.data()) + std::ptrdiff_t(y) * image.width * 3,
        std::size_t(image.width) * 3);
  }
  uLongf packed_size = compressBound(uLong(raw.size()));
  std::string packed(packed_size, '\0');
  if (compress2(reinterpret_cast<Bytef*>(packed.data()), &packed_size,
                reinterpret_cast<const Bytef*>(raw.data()), uLong(raw.size()),
                Z_NO_COMPRESSION) != Z_OK) {
    return MakeError(ErrorCode::kInternal, "PNG encoding failed for '" + path + "'");
  }
  packed.resize(packed_size);
  std::string png = "\x89PNG\r\n\x1a\n";
  std::string ihdr;
  for (const std::uint32_t v : {std::uint32_t(image.width), std::uint32_t(image.height)}) {
    for (int s = 24; s >= 0; s -= 8) ihdr.push_back(char((v >> s) & 0xff));
  }
  ihdr += std::string("\x08\x02\x00\x00\x00", 5);  // 8-bit RGB, deflate, filter 0, no interlace
  PngChunk(png, "IHDR", ihdr);
  PngChunk(png, "IDAT", packed);
  PngChunk(png, "IEND", "");
  return WriteFileAtomic(path, png);
}

/// Writes one volume's three files. Nothing in them depends on the class, and their sizes depend
/// only on the crop's dims: the same name pattern; float32 NIfTI in a stored gzip stream; a .vdb
/// with one "ct" grid whose every voxel is active, written without compression, with the same
/// metadata; a PNG with stored zlib data.
Status WriteCaseVolume(const std::string& dir, const std::string& stem, const DenseFloat& crop,
                       TuringVolume* files) {
  files->nifti = "cases/" + stem + ".nii.gz";
  files->vdb = "cases/" + stem + ".vdb";
  files->png = "cases/" + stem + ".png";
  MEWM_RETURN_IF_ERROR(WriteStoredNiftiGz((fs::path(dir) / files->nifti).string(), crop));
  MEWM_TRY(Volume volume, Volume::FromDense(crop, "ct"));
  // Every voxel of the crop active (air too), so the sparse topology is the crop's box.
  volume.grid().tree().voxelizeActiveTiles();
  auto accessor = volume.grid().getAccessor();
  for (std::int64_t k = 0; k < crop.dims[2]; ++k) {
    for (std::int64_t j = 0; j < crop.dims[1]; ++j) {
      for (std::int64_t i = 0; i < crop.dims[0]; ++i) {
        accessor.setValueOn(openvdb::Coord(int(i), int(j), int(k)));
      }
    }
  }
  VolumeSet set;
  set.metadata.patient_id = stem;
  set.metadata.provenance_json = R"({"generator":"mewm turing export"})";
  set.scalars.emplace("ct", std::move(volume));
  VdbWriteOptions options;
  options.compress = false;
  MEWM_RETURN_IF_ERROR(WriteVdb((fs::path(dir) / files->vdb).string(), set, options));
  MEWM_TRY(RgbImage montage, Montage(crop));
  return WriteStoredPng((fs::path(dir) / files->png).string(), montage);
}

/// True for a name WriteCases gives a case's file: T<digits>, then _A or _B in the pair design,
/// then .nii.gz, .vdb or .png.
bool IsCaseFileName(const std::string& name) {
  std::size_t i = 0;
  if (name.empty() || name[i++] != 'T') return false;
  const std::size_t digits = i;
  while (i < name.size() && name[i] >= '0' && name[i] <= '9') ++i;
  if (i == digits) return false;
  if (name.compare(i, 2, "_A") == 0 || name.compare(i, 2, "_B") == 0) i += 2;
  const std::string rest = name.substr(i);
  return rest == ".nii.gz" || rest == ".vdb" || rest == ".png";
}

/// True for "cases/<name>" where <name> is a case file's name (IsCaseFileName): what a manifest
/// may name.
bool IsCaseFilePath(const std::string& path) {
  const std::string prefix = "cases/";
  return path.rfind(prefix, 0) == 0 && IsCaseFileName(path.substr(prefix.size()));
}

/// Makes `out` ready: created when missing; an earlier export (manifest.json of this format, no
/// answers, nothing in cases/ but case files) is cleared; anything else that is not empty is
/// refused, before anything is removed.
Status PrepareOutDir(const std::string& out) {
  std::error_code ec;
  if (!fs::exists(out, ec)) {
    fs::create_directories(out, ec);
    if (ec) return MakeError(ErrorCode::kIo, out + ": cannot create folder: " + ec.message());
    return {};
  }
  if (!fs::is_directory(out, ec)) {
    return MakeError(ErrorCode::kIo, out + ": exists and is not a folder");
  }
  if (fs::is_empty(out, ec)) return {};
  const std::string manifest = (fs::path(out) / "manifest.json").string();
  bool ours = false;
  if (auto text = ReadRegularFile(manifest, kMaxStudyJsonBytes); text) {
    ours = StringMember(ParseStudyJson(*text), "format") == kManifestFormat;
  }
  if (!ours) {
    return MakeError(ErrorCode::kIo, out +
                                         ": folder is not empty and is not a mewm turing export; "
                                         "refusing to overwrite it (choose an empty folder)");
  }
  for (const auto& entry : fs::directory_iterator(out, ec)) {
    const std::string name = entry.path().filename().string();
    if (name == "manifest.json" || name == "cases") continue;
    return MakeError(ErrorCode::kIo, out + ": an earlier export with '" + name +
                                         "' in it (answers of a study?); refusing to overwrite "
                                         "it (choose an empty folder)");
  }
  const fs::path cases = fs::path(out) / "cases";
  if (fs::exists(fs::symlink_status(cases, ec))) {
    if (fs::is_symlink(cases, ec) || !fs::is_directory(cases, ec)) {
      return MakeError(ErrorCode::kIo, cases.string() +
                                           ": not the cases folder of an export; refusing to "
                                           "overwrite it (choose an empty folder)");
    }
    for (const auto& entry : fs::directory_iterator(cases, ec)) {
      const std::string name = entry.path().filename().string();
      // A case file, or the temporary file of one whose write was cut short.
      if (entry.is_symlink() || !entry.is_regular_file() ||
          !(IsCaseFileName(name) || name.rfind(".tmp-", 0) == 0)) {
        return MakeError(ErrorCode::kIo, entry.path().string() +
                                             ": not a case file of an export; refusing to "
                                             "overwrite the export it is in (move it away or "
                                             "choose an empty folder)");
      }
    }
  }
  fs::remove(manifest, ec);
  fs::remove_all(cases, ec);
  if (ec)
    return MakeError(ErrorCode::kIo, out + ": cannot clear the earlier export: " + ec.message());
  return {};
}

Expected<std::vector<CohortEntry>> CohortWithFollowUp(const std::string& cohort) {
  std::vector<CohortEntry> entries;
  if (FileExtension(cohort) == ".csv") {
    MEWM_TRY(entries, ReadManifest(cohort));
  } else {
    MEWM_TRY(entries, ReadSyntheticCohortWithOutcomes(cohort));
  }
  std::vector<CohortEntry> kept;
  for (CohortEntry& e : entries) {
    if (!e.post.empty() && !e.administered.empty()) kept.push_back(std::move(e));
  }
  return kept;
}

}  // namespace

Expected<TuringDesign> ParseTuringDesign(const std::string& text) {
  if (text == "single") return TuringDesign::kSingle;
  if (text == "pair") return TuringDesign::kPair;
  return MakeError(ErrorCode::kInvalidArgument,
                   "design '" + text + "' not understood (expected single or pair)");
}

const char* TuringDesignName(TuringDesign design) {
  return design == TuringDesign::kPair ? "pair" : "single";
}

namespace {

/// Everything that can refuse an export, checked before anything is written.
Status CheckExportOptions(const TuringExportOptions& options) {
  if (options.key.empty() || options.out.empty()) {
    return MakeError(ErrorCode::kInvalidArgument, "turing export needs --out and --key");
  }
  if (IsPathInside(options.key, options.out)) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "--key " + options.key + " lies inside the export folder " + options.out +
                         "; the answer key must be kept apart from what readers see");
  }
  if (options.n < 1) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "--n must be >= 1 (got " + std::to_string(options.n) + ")");
  }
  if (options.design == TuringDesign::kSingle && options.n % 2 != 0) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "--n must be even in the single design (each patient gives one real and "
                     "one synthetic case; got " +
                         std::to_string(options.n) + ")");
  }
  // A metre holds any liver with room to spare; 1e5 mm asked for 4 GB of crop, 1e9 and inf worse.
  if (!(options.crop_mm > 0.0 && options.crop_mm <= 1000.0)) {
    return MakeError(
        ErrorCode::kInvalidArgument,
        "--crop-mm must be > 0 and at most 1000 mm (got " + std::to_string(options.crop_mm) + ")");
  }
  if (fs::exists(options.key)) {
    MEWM_TRY(const std::string text, ReadRegularFile(options.key, kMaxStudyJsonBytes));
    if (StringMember(ParseStudyJson(text), "format") != kKeyFormat) {
      return MakeError(ErrorCode::kIo, options.key +
                                           ": exists and is not a mewm turing key; refusing to "
                                           "overwrite it");
    }
    // A key is replaced only with the export it belongs to: any other key is a study's only way
    // to be scored.
    std::string replaced;
    const std::string manifest = (fs::path(options.out) / "manifest.json").string();
    if (auto m = ReadRegularFile(manifest, kMaxStudyJsonBytes); m) {
      replaced = StringMember(ParseStudyJson(*m), "key_sha256");
    }
    if (replaced != ToHex(Sha256(text))) {
      return MakeError(ErrorCode::kIo,
                       options.key +
                           ": the answer key of another export; refusing to overwrite "
                           "it (that study could no longer be scored). Choose another "
                           "--key, or replace the export it belongs to");
    }
  }
  return CheckWritable(options.key);
}

/// Step 1: both volumes of every patient, on the same crop: the real follow-up and the model's
/// outcome of the plan given.
Expected<std::vector<PatientVolumes>> SimulateVolumes(
    const TuringExportOptions& options, const std::vector<CohortEntry>& entries,
    dynamics::DynamicsModel& model, const ActionBase& actions,
    const std::function<void(int, int)>& progress) {
  std::vector<PatientVolumes> volumes;
  volumes.reserve(entries.size());
  for (std::size_t p = 0; p < entries.size(); ++p) {
    const CohortEntry& entry = entries[p];
    MEWM_TRY(const PatientCase patient, LoadPatient(entry));
    MEWM_TRY(const Outcome truth, LoadAdministeredOutcome(entry, actions));
    const SimulationRequest request = Planner::Request(options.seed, entry.id, truth.plan, 0);
    auto simulated = model.Simulate(patient, {request});
    if (!simulated) return simulated.error().WithContext("patient '" + entry.id + "'");
    if (simulated->size() != 1) {
      return MakeError(ErrorCode::kInternal, "the dynamics model returned " +
                                                 std::to_string(simulated->size()) +
                                                 " outcomes for one request");
    }
    const IndexBox box = CropBox(patient.ct.geometry(), patient.ct.extent(),
                                 LargestLesionCentroid(patient.tumor), options.crop_mm);
    PatientVolumes v{entry.id, truth.plan.ToString(), truth.post_ct.ToDense(box),
                     simulated->front().post_ct.ToDense(box)};
    if (v.real.dims != v.synthetic.dims) {
      return MakeError(ErrorCode::kMismatch, "patient '" + entry.id +
                                                 "': the model's outcome is not on the "
                                                 "patient's lattice");
    }
    RoundHu(v.real);
    RoundHu(v.synthetic);
    volumes.push_back(std::move(v));
    if (progress) progress(int(p + 1), int(entries.size()));
  }
  return volumes;
}

/// Step 2: the cases, blinded. A seeded permutation gives the IDs, and pairs a seeded A/B order.
std::vector<PendingCase> BlindCases(const TuringExportOptions& options,
                                    const std::vector<PatientVolumes>& volumes) {
  Rng rng(DeriveSeed(options.seed, "turing-export"));
  std::vector<PendingCase> cases;
  for (const PatientVolumes& v : volumes) {
    if (options.design == TuringDesign::kSingle) {
      cases.push_back({&v, {false}});
      cases.push_back({&v, {true}});
    } else {
      const bool a_synthetic = rng.Bernoulli(0.5);
      cases.push_back({&v, {a_synthetic, !a_synthetic}});
    }
  }
  for (std::size_t i = cases.size(); i > 1; --i) {
    std::swap(cases[i - 1], cases[std::size_t(rng.UniformInt(0, std::int64_t(i) - 1))]);
  }
  return cases;
}

/// What step 3 wrote: the manifest's and the key's case lists, and the number of volumes.
struct WrittenCases {
  nlohmann::json manifest = nlohmann::json::array(), key = nlohmann::json::array();
  int volumes = 0;
};

/// Step 3: the case files, in case-ID order, all with one modification time (the file system
/// must not order the classes).
Expected<WrittenCases> WriteCases(const TuringExportOptions& options,
                                  const std::vector<PendingCase>& cases) {
  std::error_code ec;
  fs::create_directories(fs::path(options.out) / "cases", ec);
  if (ec) return MakeError(ErrorCode::kIo, options.out + "/cases: " + ec.message());
  const int width = std::max(3, int(std::to_string(cases.size()).size()));
  WrittenCases written;
  for (std::size_t c = 0; c < cases.size(); ++c) {
    std::string id = std::to_string(c + 1);
    id = "T" + std::string(std::size_t(width) - id.size(), '0') + id;
    const PendingCase& pending = cases[c];
    nlohmann::json files = nlohmann::json::array();
    std::string truth;
    for (std::size_t k = 0; k < pending.synthetic.size(); ++k) {
      const std::string label =
          options.design == TuringDesign::kPair ? std::string(1, char('A' + k)) : "";
      TuringVolume volume;
      volume.label = label;
      const DenseFloat& image =
          pending.synthetic[k] ? pending.source->synthetic : pending.source->real;
      MEWM_RETURN_IF_ERROR(
          WriteCaseVolume(options.out, label.empty() ? id : id + "_" + label, image, &volume));
      ++written.volumes;
      files.push_back(
          {{"label", label}, {"nifti", volume.nifti}, {"vdb", volume.vdb}, {"png", volume.png}});
      if (options.design == TuringDesign::kSingle) {
        truth = pending.synthetic[k] ? "synthetic" : "real";
      } else if (pending.synthetic[k]) {
        truth = label;
      }
    }
    written.manifest.push_back({{"id", id}, {"volumes", files}});
    written.key.push_back({{"id", id},
                           {"patient", pending.source->patient},
                           {"plan", pending.source->plan},
                           {"truth", truth}});
  }
  const auto stamp = fs::file_time_type::clock::now();
  for (const auto& entry : fs::directory_iterator(fs::path(options.out) / "cases", ec)) {
    fs::last_write_time(entry.path(), stamp, ec);
  }
  return written;
}

/// Step 4: the key, then the public manifest with the key's hash (the manifest marks
/// completion). Returns the key's SHA-256 in hex.
Expected<std::string> WriteKeyAndManifest(const TuringExportOptions& options,
                                          const WrittenCases& written, const DenseFloat& any) {
  const nlohmann::json key = {{"format", kKeyFormat},
                              {"version", 1},
                              {"design", TuringDesignName(options.design)},
                              {"seed", options.seed},
                              {"cohort", options.cohort},
                              {"dynamics", options.backend_description},
                              {"written_by", std::string("mewm ") + Version()},
                              {"cases", written.key}};
  const std::string key_text = key.dump(2) + "\n";
  MEWM_RETURN_IF_ERROR(WriteFileAtomic(options.key, key_text));
  const std::string key_sha256 = ToHex(Sha256(key_text));
  const nlohmann::json manifest = {
      {"format", kManifestFormat},
      {"version", 1},
      {"design", TuringDesignName(options.design)},
      {"key_sha256", key_sha256},
      {"window_hu", {kLiverWindow.lo, kLiverWindow.hi}},
      {"crop_mm", options.crop_mm},
      {"spacing_mm", {any.geometry.spacing[0], any.geometry.spacing[1], any.geometry.spacing[2]}},
      {"question", options.design == TuringDesign::kSingle
                       ? "Is this post-treatment CT real or synthetic?"
                       : "Which of the two post-treatment CTs (A or B) is synthetic?"},
      {"written_by", std::string("mewm ") + Version()},
      {"cases", written.manifest}};
  MEWM_RETURN_IF_ERROR(
      WriteFileAtomic((fs::path(options.out) / "manifest.json").string(), manifest.dump(2) + "\n"));
  return key_sha256;
}

}  // namespace

Expected<TuringExportResult> ExportTuringCases(const TuringExportOptions& options,
                                               dynamics::DynamicsModel& model,
                                               const ActionBase& actions,
                                               const std::function<void(int, int)>& progress) {
  const auto t0 = std::chrono::steady_clock::now();
  MEWM_RETURN_IF_ERROR(CheckExportOptions(options));
  const int patients_needed = options.design == TuringDesign::kSingle ? options.n / 2 : options.n;
  MEWM_TRY(std::vector<CohortEntry> entries, CohortWithFollowUp(options.cohort));
  if (int(entries.size()) < patients_needed) {
    return MakeError(ErrorCode::kInvalidArgument,
                     options.cohort + " has " + std::to_string(entries.size()) +
                         " patients with a follow-up image; --n " + std::to_string(options.n) +
                         " in the " + TuringDesignName(options.design) + " design needs " +
                         std::to_string(patients_needed));
  }
  entries.resize(patients_needed);
  MEWM_RETURN_IF_ERROR(PrepareOutDir(options.out));

  MEWM_TRY(const std::vector<PatientVolumes> volumes,
           SimulateVolumes(options, entries, model, actions, progress));
  const std::vector<PendingCase> cases = BlindCases(options, volumes);
  MEWM_TRY(const WrittenCases written, WriteCases(options, cases));
  TuringExportResult result;
  MEWM_TRY(result.key_sha256, WriteKeyAndManifest(options, written, volumes.front().real));
  result.cases = int(cases.size());
  result.patients = int(volumes.size());
  result.volumes = written.volumes;
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return result;
}

const TuringCase* TuringManifest::Find(const std::string& id) const {
  for (const TuringCase& c : cases) {
    if (c.id == id) return &c;
  }
  return nullptr;
}

Expected<TuringManifest> ReadTuringManifest(const std::string& dir) {
  const std::string path = (fs::path(dir) / "manifest.json").string();
  MEWM_TRY(const std::string text, ReadRegularFile(path, kMaxStudyJsonBytes));
  const nlohmann::json j = ParseStudyJson(text);
  if (StringMember(j, "format") != kManifestFormat) {
    return MakeError(
        ErrorCode::kCorruptData,
        path + ": not a mewm turing export manifest (format must be \"" + kManifestFormat + "\")");
  }
  TuringManifest m;
  m.dir = dir;
  try {
    MEWM_TRY(m.design, ParseTuringDesign(j.at("design").get<std::string>()));
    m.key_sha256 = j.at("key_sha256").get<std::string>();
    for (const nlohmann::json& c : j.at("cases")) {
      TuringCase tc;
      tc.id = c.at("id").get<std::string>();
      if (m.Find(tc.id) != nullptr) {
        return MakeError(ErrorCode::kCorruptData, path + ": case '" + tc.id + "' listed twice");
      }
      for (const nlohmann::json& v : c.at("volumes")) {
        tc.volumes.push_back({v.at("label").get<std::string>(), v.at("nifti").get<std::string>(),
                              v.at("vdb").get<std::string>(), v.at("png").get<std::string>()});
        // The server serves these files and the audit reads them: they must be files of the
        // export's cases/ folder, never a path that leaves it (the key beside the study).
        for (const std::string* file :
             {&tc.volumes.back().nifti, &tc.volumes.back().vdb, &tc.volumes.back().png}) {
          if (!IsCaseFilePath(*file)) {
            return MakeError(ErrorCode::kCorruptData,
                             path + ": case '" + tc.id + "' names the file '" + *file +
                                 "', which is not a case file of the export (cases/<name>)");
          }
        }
      }
      const std::size_t expected = m.design == TuringDesign::kPair ? 2 : 1;
      if (tc.volumes.size() != expected) {
        return MakeError(ErrorCode::kCorruptData,
                         path + ": case '" + tc.id + "' has " + std::to_string(tc.volumes.size()) +
                             " volumes (expected " + std::to_string(expected) + ")");
      }
      m.cases.push_back(std::move(tc));
    }
  } catch (const nlohmann::json::exception& e) {
    return MakeError(ErrorCode::kCorruptData, path + ": " + e.what());
  }
  return m;
}

Expected<TuringKey> ReadTuringKey(const std::string& path, const TuringManifest& manifest) {
  MEWM_TRY(const std::string text, ReadRegularFile(path, kMaxStudyJsonBytes));
  TuringKey key;
  key.sha256 = ToHex(Sha256(text));
  if (key.sha256 != manifest.key_sha256) {
    return MakeError(ErrorCode::kMismatch,
                     path + ": SHA-256 " + key.sha256 + " differs from the key_sha256 " +
                         manifest.key_sha256 + " of " + manifest.dir +
                         "/manifest.json (another study's key, or a key changed after export)");
  }
  const nlohmann::json j = ParseStudyJson(text);
  if (StringMember(j, "format") != kKeyFormat) {
    return MakeError(ErrorCode::kCorruptData, path + ": not a mewm turing key");
  }
  try {
    MEWM_TRY(key.design, ParseTuringDesign(j.at("design").get<std::string>()));
    const bool pair = key.design == TuringDesign::kPair;
    for (const nlohmann::json& c : j.at("cases")) {
      TuringKeyCase k{c.at("id").get<std::string>(), c.at("patient").get<std::string>(),
                      c.at("plan").get<std::string>(), c.at("truth").get<std::string>()};
      if (pair ? (k.truth != "A" && k.truth != "B")
               : (k.truth != "real" && k.truth != "synthetic")) {
        return MakeError(ErrorCode::kCorruptData,
                         path + ": case '" + k.id + "' has truth '" + k.truth + "' (expected " +
                             (pair ? "A or B" : "real or synthetic") + ")");
      }
      if (!key.cases.emplace(k.id, k).second) {
        return MakeError(ErrorCode::kCorruptData, path + ": case '" + k.id + "' listed twice");
      }
    }
  } catch (const nlohmann::json::exception& e) {
    return MakeError(ErrorCode::kCorruptData, path + ": " + e.what());
  }
  if (key.design != manifest.design || key.cases.size() != manifest.cases.size()) {
    return MakeError(ErrorCode::kMismatch, path + ": does not match the cases of " + manifest.dir);
  }
  for (const TuringCase& c : manifest.cases) {
    if (key.cases.count(c.id) == 0) {
      return MakeError(ErrorCode::kMismatch, path + ": has no case '" + c.id + "'");
    }
  }
  return key;
}

}  // namespace mewm::scenarios

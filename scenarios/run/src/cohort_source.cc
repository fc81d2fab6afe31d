// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/run/cohort_source.h"

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "mewm/core/file_util.h"
#include "mewm/core/volume_file.h"
#include "mewm/dicom/dicom_import.h"
#include "mewm/dicom/dicom_seg.h"

namespace mewm::scenarios {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string Resolve(const fs::path& base, const std::string& path) {
  if (path.empty() || fs::path(path).is_absolute()) return path;
  return (base / path).lexically_normal().string();
}

/// A file a cohort ships (`what`: its clinical note, or a synthetic cohort's images), its path
/// `path` resolved against `base` and confined to it, not a file from elsewhere on the machine.
/// kInvalidArgument naming `where`.
Expected<std::string> CohortFilePath(const fs::path& base, const std::string& path,
                                     const std::string& where, const std::string& what) {
  const std::string resolved = Resolve(base, path);
  const std::string root = base.empty() ? std::string(".") : base.string();
  if (!IsPathInside(resolved, root)) {
    return MakeError(ErrorCode::kInvalidArgument, where + ": " + what + " '" + path +
                                                      "' lies outside the cohort's folder " +
                                                      ResolvedPath(root));
  }
  return resolved;
}

/// The row of each patient id in a cohort's CSV file; kCorruptData for an id on two rows, whose
/// values one of the two would silently take.
Expected<std::map<std::string, std::size_t>> RowsById(const CsvTable& table,
                                                      const std::string& path) {
  std::map<std::string, std::size_t> rows;
  for (std::size_t r = 0; r < table.rows(); ++r) {
    MEWM_TRY(const std::string id, table.Get(r, "patient_id"));
    if (!rows.emplace(id, r).second) {
      return MakeError(ErrorCode::kCorruptData,
                       "'" + path + "' has two rows for patient '" + id + "'");
    }
  }
  return rows;
}

/// .vdb files already read while loading one patient: a synthetic pre.vdb holds the CT, tumor
/// and liver grids together and is read once, not once per grid.
using VdbCache = std::map<std::string, VolumeSet>;

/// One grid of a volume file: by name in a .vdb (or the only grid of that type), or the NIfTI.
template <typename VolumeT>
Expected<VolumeT> ReadGrid(const std::string& path, const std::string& grid, VdbCache* cache) {
  constexpr bool kLabel = std::is_same_v<VolumeT, LabelVolume>;
  VolumeSet nifti;
  const VolumeSet* set = &nifti;
  if (FileExtension(path) == ".vdb") {
    auto it = cache->find(path);
    if (it == cache->end()) {
      MEWM_TRY(VolumeSet read, ReadVdb(path));
      it = cache->emplace(path, std::move(read)).first;
    }
    set = &it->second;
  } else {
    MEWM_TRY(nifti, ReadVolumeFile(path, kLabel ? NiftiKind::kLabel : NiftiKind::kScalar, grid));
  }
  const auto& grids = [&]() -> const auto& {
    if constexpr (kLabel) {
      return set->labels;
    } else {
      return set->scalars;
    }
  }
  ();
  if (auto it = grids.find(grid); it != grids.end()) return it->second;
  if (grids.size() == 1) return grids.begin()->second;
  if constexpr (kLabel) {
    return set->Label(grid);  // the kNotFound error lists the grids present
  } else {
    return set->Scalar(grid);
  }
}

}  // namespace

Expected<Covariates> ReadCovariates(const CsvTable& t, std::size_t row) {
  Covariates c;
  const std::string where = t.Where(row);
  MEWM_TRY(c.age_years, t.GetDouble(row, "age_years"));
  MEWM_TRY(const std::string sex, t.Get(row, "sex"));
  if (sex != "M" && sex != "F") {
    return MakeError(ErrorCode::kInvalidArgument,
                     where + ": sex must be M or F, got '" + sex + "'");
  }
  c.sex = sex == "M" ? Covariates::Sex::kMale : Covariates::Sex::kFemale;
  MEWM_TRY(const std::string cp, t.Get(row, "child_pugh"));
  MEWM_TRY(const std::string bclc, t.Get(row, "bclc_stage"));
  if (cp.size() != 1 || bclc.size() != 1) {
    return MakeError(ErrorCode::kInvalidArgument,
                     where + ": child_pugh and bclc_stage must be one letter (A-C; 0, A-D)");
  }
  c.child_pugh = cp[0];
  c.bclc_stage = bclc[0];
  MEWM_TRY(c.afp_ng_ml, t.GetDouble(row, "afp_ng_ml"));
  MEWM_TRY(const std::int64_t lesions, t.GetInt(row, "lesion_count"));
  c.lesion_count = int(lesions);
  MEWM_TRY(c.max_diameter_mm, t.GetDouble(row, "max_diameter_mm"));
  MEWM_TRY(const std::int64_t vi, t.GetInt(row, "vascular_invasion"));
  if (vi != 0 && vi != 1) {
    return MakeError(ErrorCode::kInvalidArgument, where + ": vascular_invasion must be 0 or 1");
  }
  c.vascular_invasion = vi == 1;
  if (auto valid = c.Validate(); !valid) return valid.error().WithContext(where);
  return c;
}

bool IsEmptyOrMewmCohort(const std::string& dir) {
  std::error_code ec;
  if (!fs::exists(dir, ec)) return true;
  if (!fs::is_directory(dir, ec)) return false;
  if (fs::is_empty(dir, ec)) return true;
  // Either index file will do; each is small (the manifest names every patient's files).
  for (const char* name : {kCohortMarker, "manifest.json"}) {
    auto text = ReadRegularFile((fs::path(dir) / name).string(), 64u << 20);
    if (!text) continue;
    try {
      const json j = json::parse(*text);
      if (j.is_object() && j.value("generator", std::string()) == kCohortGenerator) return true;
    } catch (const std::exception&) {
      // Not ours.
    }
  }
  return false;
}

namespace {

Status ReadFollowUp(const CsvTable& t, std::size_t row, CohortEntry* e) {
  if (t.Optional(row, "time_months") && t.Optional(row, "event")) {
    MEWM_TRY(const double time, t.GetDouble(row, "time_months"));
    MEWM_TRY(const std::int64_t event, t.GetInt(row, "event"));
    if (!(time >= 0.0) || (event != 0 && event != 1)) {
      return MakeError(ErrorCode::kInvalidArgument,
                       t.Where(row) + ": time_months must be >= 0 and event 0 or 1");
    }
    e->survival = survival::SurvivalRecord{time, event == 1};
  }
  if (auto plan = t.Optional(row, "administered_plan")) e->administered = *plan;
  return {};
}

}  // namespace

Status CheckSyntheticLayout(const std::string& dir) {
  const fs::path base(dir);
  const std::string manifest_path = (base / "manifest.json").string();
  std::error_code ec;
  if (!fs::exists(manifest_path, ec)) {
    return MakeError(ErrorCode::kNotFound,
                     "'" + dir + "' is not a complete synthetic cohort (no manifest.json)");
  }
  MEWM_TRY(const std::string text, ReadFile(manifest_path));
  int layout = 1;  // layout 1 had no "layout" key
  std::string version;
  try {
    const json manifest = json::parse(text);
    layout = manifest.value("layout", 1);
    version = manifest.value("world_version", std::string());
  } catch (const std::exception& e) {
    return MakeError(ErrorCode::kCorruptData, "'" + manifest_path + "': " + e.what());
  }
  if (layout < kCohortLayout) {
    return MakeError(ErrorCode::kMismatch,
                     "'" + dir + "' is a synthetic cohort of the old layout " +
                         std::to_string(layout) + " (world version " + version +
                         ", its truth and seeds beside the planner's files); this build reads "
                         "layout " +
                         std::to_string(kCohortLayout) +
                         " only. Generate it again: mewm cohort generate --force --out " + dir);
  }
  if (layout > kCohortLayout) {
    return MakeError(ErrorCode::kUnsupported,
                     "'" + dir + "' is a synthetic cohort of layout " + std::to_string(layout) +
                         ", newer than this build reads (" + std::to_string(kCohortLayout) + ")");
  }
  return {};
}

Expected<std::vector<CohortEntry>> ReadSyntheticCohort(const std::string& dir) {
  MEWM_RETURN_IF_ERROR(CheckSyntheticLayout(dir));
  const fs::path base(dir);
  const std::string manifest_path = (base / "manifest.json").string();
  MEWM_TRY(const std::string text, ReadFile(manifest_path));
  MEWM_TRY(const CsvTable clinical, CsvTable::Load((base / "clinical.csv").string()));
  MEWM_TRY(const auto rows, RowsById(clinical, (base / "clinical.csv").string()));
  std::vector<CohortEntry> entries;
  std::set<std::string> seen;
  try {
    const json manifest = json::parse(text);
    for (const json& p : manifest.at("patients")) {
      CohortEntry e;
      e.id = p.at("id").get<std::string>();
      e.origin = manifest_path + " (patient " + e.id + ")";
      if (!seen.insert(e.id).second) {
        return MakeError(ErrorCode::kCorruptData,
                         "'" + manifest_path + "' lists patient '" + e.id + "' twice");
      }
      MEWM_TRY(const std::string pre,
               CohortFilePath(base, p.at("pre").get<std::string>(), e.origin, "image"));
      e.ct = e.tumor = e.liver = pre;
      // The follow-up image is the truth's: a planning run must not touch it, not even to
      // resolve it (the leak test traces every file call), so it is confined where it is read,
      // by ReadSyntheticCohortWithOutcomes.
      e.post = Resolve(base, p.at("post_administered").get<std::string>());
      if (const std::string note = p.value("note", std::string()); !note.empty()) {
        MEWM_TRY(e.note, CohortFilePath(base, note, e.origin, "note"));
      }
      auto row = rows.find(e.id);
      if (row == rows.end()) {
        return MakeError(ErrorCode::kCorruptData, "'" + (base / "clinical.csv").string() +
                                                      "' has no row for patient '" + e.id +
                                                      "' of the manifest");
      }
      MEWM_TRY(e.covariates, ReadCovariates(clinical, row->second));
      entries.push_back(std::move(e));
    }
  } catch (const std::exception& e) {
    return MakeError(ErrorCode::kCorruptData, "'" + manifest_path + "': " + e.what());
  }
  return entries;
}

Expected<std::vector<CohortEntry>> ReadSyntheticCohortWithOutcomes(const std::string& dir) {
  MEWM_TRY(std::vector<CohortEntry> entries, ReadSyntheticCohort(dir));
  const std::string path = (fs::path(dir) / "outcomes.csv").string();
  MEWM_TRY(const CsvTable outcomes, CsvTable::Load(path));
  MEWM_TRY(const auto rows, RowsById(outcomes, path));
  for (CohortEntry& e : entries) {
    auto row = rows.find(e.id);
    if (row == rows.end()) {
      return MakeError(ErrorCode::kCorruptData,
                       "'" + path + "' has no row for patient '" + e.id + "' of the manifest");
    }
    MEWM_RETURN_IF_ERROR(ReadFollowUp(outcomes, row->second, &e));
    if (!IsPathInside(e.post, dir)) {
      return MakeError(ErrorCode::kInvalidArgument, e.origin + ": image '" + e.post +
                                                        "' lies outside the cohort's folder " +
                                                        ResolvedPath(dir));
    }
    if (e.administered.empty() || !e.survival) {
      return MakeError(ErrorCode::kCorruptData,
                       outcomes.Where(row->second) +
                           ": administered_plan, time_months and event must all be filled");
    }
  }
  return entries;
}

Expected<std::string> SyntheticTruthPath(const std::string& dir) {
  MEWM_RETURN_IF_ERROR(CheckSyntheticLayout(dir));
  return (fs::path(dir) / "truth" / "truth.json").string();
}

Expected<std::vector<CohortEntry>> ReadManifest(const std::string& csv_path) {
  MEWM_TRY(const CsvTable t, CsvTable::Load(csv_path));
  const fs::path base = fs::path(csv_path).parent_path();
  std::vector<CohortEntry> entries;
  std::set<std::string> seen;
  for (std::size_t r = 0; r < t.rows(); ++r) {
    CohortEntry e;
    e.origin = t.Where(r);
    MEWM_TRY(e.id, t.Get(r, "patient_id"));
    if (e.id.empty() || e.id.find_first_of("/\\") != std::string::npos || e.id == "." ||
        e.id == "..") {
      return MakeError(ErrorCode::kInvalidArgument,
                       e.origin + ": patient_id must be a non-empty name without slashes");
    }
    if (!seen.insert(e.id).second) {
      return MakeError(ErrorCode::kInvalidArgument,
                       e.origin + ": patient_id '" + e.id + "' appears twice");
    }
    MEWM_TRY(const std::string ct, t.Get(r, "ct"));
    MEWM_TRY(const std::string tumor, t.Get(r, "tumor"));
    e.ct = Resolve(base, ct);
    e.tumor = Resolve(base, tumor);
    e.liver = Resolve(base, t.Optional(r, "liver").value_or(""));
    e.post = Resolve(base, t.Optional(r, "post").value_or(""));
    e.ct_series_uid = t.Optional(r, "ct_series_uid").value_or("");
    e.segment_map = t.Optional(r, "segment_map").value_or("");
    if (auto note = t.Optional(r, "note"); note && !note->empty()) {
      MEWM_TRY(e.note, CohortFilePath(base, *note, e.origin, "note"));
    }
    auto covariates = ReadCovariates(t, r);
    if (!covariates) return covariates.error().WithContext("patient '" + e.id + "'");
    e.covariates = *covariates;
    MEWM_RETURN_IF_ERROR(ReadFollowUp(t, r, &e));
    entries.push_back(std::move(e));
  }
  if (entries.empty()) {
    return MakeError(ErrorCode::kInvalidArgument, "'" + csv_path + "' lists no patients");
  }
  return entries;
}

namespace {

/// The DICOM files of one patient, each read once: the CT series and the SEGs on it.
struct DicomCache {
  std::optional<dicom::SegReference> ct;  ///< set when the CT came from a DICOM folder
  std::map<std::string, VolumeSet> segs;  ///< by path
};

bool IsFolder(const std::string& path) {
  std::error_code ec;
  return fs::is_directory(path, ec);
}

/// The CT of a DICOM folder; the series as LoadPatient documents.
Expected<Volume> ReadDicomCt(const CohortEntry& entry, DicomCache* cache) {
  std::string uid = entry.ct_series_uid;
  if (uid.empty() && dicom::IsDicomFile(entry.tumor)) {
    MEWM_TRY(const dicom::SegHeader header, dicom::ReadSegHeader(entry.tumor));
    MEWM_TRY(uid, dicom::ChooseSeriesForSeg(entry.ct, header));
  }
  dicom::ImportOptions options;
  options.series_uid = uid;
  MEWM_TRY(dicom::ImportResult imported, dicom::ImportSeries(entry.ct, options));
  cache->ct = dicom::ReferenceOf(imported);
  return imported.set.scalars.at("ct");
}

/// Grid `grid` ("tumor" or "liver") of the DICOM-SEG at `path`, on the patient's DICOM CT.
Expected<LabelVolume> ReadDicomSegGrid(const CohortEntry& entry, const std::string& path,
                                       const std::string& grid, DicomCache* cache) {
  if (!cache->ct) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "a DICOM-SEG mask needs its CT as a DICOM series folder in the ct column "
                     "(got '" +
                         entry.ct + "')");
  }
  auto it = cache->segs.find(path);
  if (it == cache->segs.end()) {
    dicom::SegImportOptions options;
    if (!entry.segment_map.empty()) {
      MEWM_TRY(options.segment_map, dicom::ParseSegmentMap(entry.segment_map));
    }
    MEWM_TRY(dicom::SegImportResult imported, dicom::ImportSegmentation(path, *cache->ct, options));
    it = cache->segs.emplace(path, std::move(imported.set)).first;
  }
  return it->second.Label(grid);  // kNotFound lists the grids the SEG gave
}

}  // namespace

Expected<PatientCase> LoadPatient(const CohortEntry& entry) {
  const std::string who = "patient '" + entry.id + "' (" + entry.origin + ")";
  const auto fail = [&](const Error& e, const std::string& file) {
    return e.WithContext(who + ", file '" + file + "'");
  };
  VdbCache cache;
  DicomCache dicom_cache;
  auto ct = IsFolder(entry.ct) ? ReadDicomCt(entry, &dicom_cache)
                               : ReadGrid<Volume>(entry.ct, "ct", &cache);
  if (!ct) return fail(ct.error(), entry.ct);
  const auto read_labels = [&](const std::string& path, const std::string& grid) {
    return dicom::IsDicomFile(path) ? ReadDicomSegGrid(entry, path, grid, &dicom_cache)
                                    : ReadGrid<LabelVolume>(path, grid, &cache);
  };
  auto tumor = read_labels(entry.tumor, "tumor");
  if (!tumor) return fail(tumor.error(), entry.tumor);
  PatientCase patient{entry.id, std::move(*ct), std::move(*tumor), std::nullopt, entry.covariates};
  if (!entry.note.empty()) {
    auto note = ReadRegularFile(entry.note, kMaxNoteBytes);
    if (!note) return fail(note.error(), entry.note);
    patient.note = std::move(*note);
  }
  if (!entry.liver.empty()) {
    auto liver = read_labels(entry.liver, "liver");
    if (!liver) return fail(liver.error(), entry.liver);
    patient.liver = std::move(*liver);
  }
  if (auto valid = patient.Validate(); !valid) {
    return fail(valid.error(), entry.tumor);
  }
  return patient;
}

Expected<Outcome> LoadOutcomeFile(const std::string& path, const Plan& plan) {
  const auto fail = [&](const Error& e) { return e.WithContext("file '" + path + "'"); };
  // One .vdb holds the post-treatment CT, its viable mask and, when written by mewm, the soft
  // viable fraction.
  auto set = ReadVdb(path);
  if (!set) return fail(set.error());
  auto ct = set->Scalar("ct");
  if (!ct) return fail(ct.error());
  auto viable = set->Label("viable");
  if (!viable) return fail(viable.error());
  Outcome outcome{plan, 0, std::move(*ct), std::move(*viable)};
  if (auto fraction = set->scalars.find("viable_fraction"); fraction != set->scalars.end()) {
    outcome.viable_fraction = fraction->second;
  }
  return outcome;
}

Expected<Outcome> LoadAdministeredOutcome(const CohortEntry& entry, const ActionBase& actions) {
  if (entry.post.empty() || entry.administered.empty()) {
    return MakeError(ErrorCode::kNotFound,
                     "patient '" + entry.id + "' has no administered post-treatment image");
  }
  auto plan = actions.ParsePlan(entry.administered);
  if (!plan) {
    return plan.error().WithContext("patient '" + entry.id + "', file '" + entry.post + "'");
  }
  auto outcome = LoadOutcomeFile(entry.post, *plan);
  if (!outcome) return outcome.error().WithContext("patient '" + entry.id + "'");
  return outcome;
}

}  // namespace mewm::scenarios

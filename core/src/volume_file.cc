// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/core/volume_file.h"

#include <nifti2_io.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <optional>
#include <set>
#include <sstream>
#include <unordered_set>

#include "extent_limit.h"
#include "mewm/core/file_util.h"
#include "mewm/core/nifti_io.h"
#include "mewm/core/text.h"

namespace mewm {
namespace {

const char* DatatypeName(const NiftiInfo& info) {
  switch (info.datatype) {
    case NIFTI_TYPE_UINT8:
      return "uint8";
    case NIFTI_TYPE_INT8:
      return "int8";
    case NIFTI_TYPE_INT16:
      return "int16";
    case NIFTI_TYPE_UINT16:
      return "uint16";
    case NIFTI_TYPE_INT32:
      return "int32";
    case NIFTI_TYPE_UINT32:
      return "uint32";
    case NIFTI_TYPE_INT64:
      return "int64";
    case NIFTI_TYPE_UINT64:
      return "uint64";
    case NIFTI_TYPE_FLOAT32:
      return "float32";
    case NIFTI_TYPE_FLOAT64:
      return "float64";
    default:
      return "?";
  }
}

std::string Number(double v) {
  std::ostringstream out;
  out << v;
  return out.str();
}

/// The lower-case words of a file name without its extension: "CT_0000.nii.gz" -> ct, 0000.
std::set<std::string> NameWords(const std::string& path) {
  std::string name = std::filesystem::path(path).filename().string();
  const std::string ext = FileExtension(name);
  name = name.substr(0, name.size() - ext.size());
  std::set<std::string> words;
  std::string word;
  for (const char c : name + " ") {
    if (std::isalnum(static_cast<unsigned char>(c))) {
      word += char(std::tolower(static_cast<unsigned char>(c)));
    } else if (!word.empty()) {
      words.insert(word);
      word.clear();
    }
  }
  return words;
}

}  // namespace

NiftiKindDecision DecideNiftiKind(const std::string& path, const NiftiInfo& info,
                                  const std::vector<std::int32_t>* values) {
  const std::string type = DatatypeName(info);
  if (info.intent_code == NIFTI_INTENT_LABEL || info.intent_code == NIFTI_INTENT_NEURONAME) {
    return {NiftiKind::kLabel,
            std::string("intent code ") + (info.intent_code == NIFTI_INTENT_LABEL
                                               ? "NIFTI_INTENT_LABEL (1002)"
                                               : "NIFTI_INTENT_NEURONAME (1003)")};
  }
  if (!info.integer_datatype) return {NiftiKind::kScalar, type + " data"};
  // Scaling as ReadNifti applies it (as nibabel): a slope of 0 or not finite means none.
  const bool scaled = info.scl_slope != 0.0 && std::isfinite(info.scl_slope) &&
                      !(info.scl_slope == 1.0 && info.scl_inter == 0.0);
  if (scaled) {
    return {NiftiKind::kScalar, type + " data with intensity scaling (scl_slope " +
                                    Number(info.scl_slope) + ", scl_inter " +
                                    Number(info.scl_inter) + ")"};
  }
  if (values == nullptr) return {NiftiKind::kLabel, type + " data"};
  std::unordered_set<std::int32_t> distinct;
  for (const std::int32_t v : *values) {
    if (v < 0)
      return {NiftiKind::kScalar,
              type + " data with negative values (" + std::to_string(v) + " and others)"};
    if (distinct.size() <= kMaxLabelValues) distinct.insert(v);
  }
  if (distinct.size() > kMaxLabelValues) {
    return {NiftiKind::kScalar,
            type + " data with more than " + std::to_string(kMaxLabelValues) + " distinct values"};
  }
  const std::string few =
      type + " data with " + std::to_string(distinct.size()) + " distinct non-negative values";
  const std::set<std::string> words = NameWords(path);
  const auto has_any = [&](std::initializer_list<const char*> list) {
    return std::any_of(list.begin(), list.end(), [&](const char* w) { return words.count(w); });
  };
  const bool label_name = has_any({"seg", "segmentation", "label", "labels", "mask", "tumor",
                                   "tumour", "liver", "lesion", "roi"});
  const bool ct_name = has_any({"ct", "cect", "image", "img", "scan", "0000"});
  if (ct_name && !label_name) return {NiftiKind::kScalar, few + ", and a CT's file name"};
  return {NiftiKind::kLabel, few};
}

template <typename VolumeT>
IndexBox CoveringBox(const VolumeT& volume) {
  IndexBox box{{0, 0, 0}, {volume.extent()[0] - 1, volume.extent()[1] - 1, volume.extent()[2] - 1}};
  const IndexBox active = volume.ActiveBoundingBox();
  if (!active.empty()) {
    for (int a = 0; a < 3; ++a) {
      box.min[a] = std::min(box.min[a], active.min[a]);
      box.max[a] = std::max(box.max[a], active.max[a]);
    }
  }
  return box;
}

template IndexBox CoveringBox<Volume>(const Volume&);
template IndexBox CoveringBox<LabelVolume>(const LabelVolume&);

Expected<VolumeSet> ReadVolumeFile(const std::string& path, NiftiKind kind,
                                   const std::string& nifti_grid, NiftiKindDecision* decision) {
  if (IsVdbPath(path)) return ReadVdb(path);
  if (!IsNiftiPath(path)) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "'" + path + "': unknown image format (expected .vdb, .nii or .nii.gz)");
  }
  MEWM_TRY(const NiftiInfo info, ReadNiftiInfo(path));
  std::optional<DenseLabel> integers;  // the voxels, when the decision needed them
  if (kind == NiftiKind::kAuto) {
    NiftiKindDecision decided = DecideNiftiKind(path, info, nullptr);
    if (decided.kind == NiftiKind::kLabel && info.intent_code != NIFTI_INTENT_LABEL &&
        info.intent_code != NIFTI_INTENT_NEURONAME) {
      // Unscaled integers: the values decide (one read serves both outcomes).
      MEWM_TRY(integers, ReadNiftiLabels(path));
      decided = DecideNiftiKind(path, info, &integers->data);
    }
    kind = decided.kind;
    if (decision != nullptr) *decision = std::move(decided);
  }
  VolumeSet set;
  set.metadata.provenance_json = "{\"source\": \"nifti\"}";
  if (kind == NiftiKind::kLabel) {
    if (!integers) {
      MEWM_TRY(integers, ReadNiftiLabels(path));
    }
    const std::string name = nifti_grid.empty() ? "label" : nifti_grid;
    MEWM_TRY(LabelVolume volume, LabelVolume::FromDense(*integers, name));
    set.metadata.modality = "SEG";
    set.metadata.units = "label";
    set.labels.emplace(name, std::move(volume));
  } else {
    DenseFloat dense;
    if (integers) {
      // Integer voxels as float: the same values ReadNifti gives for unscaled integer data.
      dense = DenseFloat(integers->dims, integers->geometry);
      std::transform(integers->data.begin(), integers->data.end(), dense.data.begin(),
                     [](std::int32_t v) { return static_cast<float>(v); });
      integers.reset();
    } else {
      MEWM_TRY(dense, ReadNifti(path));
    }
    const std::string name = nifti_grid.empty() ? "ct" : nifti_grid;
    MEWM_TRY(Volume volume, Volume::FromDense(dense, name));
    set.scalars.emplace(name, std::move(volume));
  }
  return set;
}

Status WriteVolumeFile(const std::string& path, const VolumeSet& set, const std::string& grid,
                       const VdbWriteOptions& vdb_options) {
  if (IsVdbPath(path)) return WriteVdb(path, set, vdb_options);
  if (!IsNiftiPath(path)) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "'" + path + "': unknown image format (expected .vdb, .nii or .nii.gz)");
  }
  std::string name = grid;
  if (name.empty()) {
    const auto names = set.GridNames();
    if (names.size() != 1) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "a NIfTI file holds one grid; choose one of: " + Join(names, ", "));
    }
    name = names.front();
  }
  // The box the NIfTI covers, within the voxel limit: a grid's active voxels may lie far outside
  // the extent its file recorded (one changed byte of a .vdb put them 10 million voxels out, and
  // the conversion ran out of memory).
  const auto covering = [&](const auto& volume) -> Expected<IndexBox> {
    const IndexBox box = CoveringBox(volume);
    MEWM_RETURN_IF_ERROR(CheckExtentVoxels(path + "', grid '" + name, box.extent(), 4,
                                           " (the extent and every active voxel)"));
    return box;
  };
  if (auto it = set.scalars.find(name); it != set.scalars.end()) {
    MEWM_TRY(const IndexBox box, covering(it->second));
    return WriteNifti(path, it->second.ToDense(box));
  }
  if (auto it = set.labels.find(name); it != set.labels.end()) {
    MEWM_TRY(const IndexBox box, covering(it->second));
    return WriteNiftiLabels(path, it->second.ToDense(box));
  }
  MEWM_RETURN_IF_ERROR(set.Scalar(name));  // produces the "no grid, grids: ..." error
  return {};
}

std::string PerGridNiftiPath(const std::string& path, const std::string& grid) {
  const std::string ext = FileExtension(path);
  std::string safe = grid;
  for (char& c : safe) {
    const bool ok = std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
    if (!ok) c = '_';
  }
  return path.substr(0, path.size() - ext.size()) + "_" + safe + ext;
}

Expected<std::vector<std::string>> WriteNiftiPerGrid(const std::string& path,
                                                     const VolumeSet& set) {
  if (!IsNiftiPath(path)) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "cannot write '" + path + "': expected a .nii or .nii.gz file name");
  }
  const std::vector<std::string> names = set.GridNames();
  std::vector<std::string> paths;
  std::set<std::string> unique;
  for (const std::string& name : names) {
    paths.push_back(PerGridNiftiPath(path, name));
    if (!unique.insert(paths.back()).second) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "two grids of the set would both be written to '" + paths.back() +
                           "'; convert them one at a time with --grid");
    }
  }
  // One lattice for all when the grids share a geometry: the box covering every grid.
  std::optional<Geometry> shared;
  std::optional<IndexBox> box;
  bool same = true;
  const auto cover = [&](const Geometry& geometry, const IndexBox& b) {
    if (!shared) {
      shared = geometry;
      box = b;
      return;
    }
    same = same && shared->ApproxEquals(geometry, 1e-6);
    for (int a = 0; a < 3; ++a) {
      box->min[a] = std::min(box->min[a], b.min[a]);
      box->max[a] = std::max(box->max[a], b.max[a]);
    }
  };
  for (const auto& [name, volume] : set.scalars) cover(volume.geometry(), CoveringBox(volume));
  for (const auto& [name, volume] : set.labels) cover(volume.geometry(), CoveringBox(volume));
  for (std::size_t n = 0; n < names.size(); ++n) {
    if (auto it = set.scalars.find(names[n]); it != set.scalars.end()) {
      MEWM_RETURN_IF_ERROR(
          WriteNifti(paths[n], it->second.ToDense(same ? *box : CoveringBox(it->second))));
    } else {
      const LabelVolume& labels = set.labels.at(names[n]);
      MEWM_RETURN_IF_ERROR(
          WriteNiftiLabels(paths[n], labels.ToDense(same ? *box : CoveringBox(labels))));
    }
  }
  return paths;
}

}  // namespace mewm

// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/core/volume_file.h"

#include <algorithm>

#include "mewm/core/nifti_io.h"
#include "mewm/core/text.h"

namespace mewm {

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
                                   const std::string& nifti_grid) {
  if (IsVdbPath(path)) return ReadVdb(path);
  if (!IsNiftiPath(path)) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "'" + path + "': unknown image format (expected .vdb, .nii or .nii.gz)");
  }
  MEWM_TRY(const NiftiInfo info, ReadNiftiInfo(path));
  const bool as_label =
      kind == NiftiKind::kLabel ||
      (kind == NiftiKind::kAuto && info.integer_datatype &&
       (info.scl_slope == 0.0 || (info.scl_slope == 1.0 && info.scl_inter == 0.0)));
  VolumeSet set;
  set.metadata.provenance_json = "{\"source\": \"nifti\"}";
  if (as_label) {
    MEWM_TRY(const DenseLabel dense, ReadNiftiLabels(path));
    const std::string name = nifti_grid.empty() ? "label" : nifti_grid;
    MEWM_TRY(LabelVolume volume, LabelVolume::FromDense(dense, name));
    set.metadata.modality = "SEG";
    set.metadata.units = "label";
    set.labels.emplace(name, std::move(volume));
  } else {
    MEWM_TRY(const DenseFloat dense, ReadNifti(path));
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
  if (auto it = set.scalars.find(name); it != set.scalars.end()) {
    return WriteNifti(path, it->second.ToDense(CoveringBox(it->second)));
  }
  if (auto it = set.labels.find(name); it != set.labels.end()) {
    return WriteNiftiLabels(path, it->second.ToDense(CoveringBox(it->second)));
  }
  MEWM_RETURN_IF_ERROR(set.Scalar(name));  // produces the "no grid, grids: ..." error
  return {};
}

}  // namespace mewm

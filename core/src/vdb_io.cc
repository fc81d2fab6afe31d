// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/core/vdb_io.h"

#include <openvdb/io/File.h>

#include <cstdio>
#include <filesystem>
#include <set>

#include "mewm/core/file_util.h"
#include "mewm/core/log.h"
#include "mewm/core/seed.h"
#include "mewm/core/text.h"

namespace mewm {
namespace {

constexpr const char* kExtentKey = "mewm_extent";
constexpr const char* kFormatKey = "mewm_format";
constexpr int kFormatVersion = 1;

std::string JoinNames(const std::vector<std::string>& names) {
  return names.empty() ? "none" : Join(names, ", ");
}

template <typename VolumeT>
openvdb::GridBase::Ptr PrepareForWrite(const VolumeT& volume, const std::string& name) {
  // A shallow copy shares the tree but gets its own metadata and transform.
  openvdb::GridBase::Ptr grid = volume.grid_ptr()->copyGrid();
  grid->setName(name);
  grid->setTransform(MakeTransform(volume.geometry()));
  const Index3& e = volume.extent();
  grid->insertMeta(kExtentKey, openvdb::Vec3IMetadata(openvdb::Vec3i(
                                   int(e[0]), int(e[1]), int(e[2]))));
  return grid;
}

Index3 ExtentOf(const openvdb::GridBase& grid) {
  if (auto meta = grid.getMetadata<openvdb::Vec3IMetadata>(kExtentKey)) {
    const openvdb::Vec3i v = meta->value();
    return {v[0], v[1], v[2]};
  }
  // Foreign file: the extent is whatever the active voxels span from index 0.
  const openvdb::CoordBBox box = grid.evalActiveVoxelBoundingBox();
  if (box.empty()) return {0, 0, 0};
  return {box.max().x() + 1, box.max().y() + 1, box.max().z() + 1};
}

/// OpenVDB stamps every file with a random UUID. Replace it by one derived from the file's other
/// bytes, so the same grids always give byte-identical files (reproducible cohorts).
Status MakeUuidDeterministic(const std::string& file_path, const std::string& random_tag) {
  MEWM_TRY(std::string bytes, ReadFile(file_path));
  const std::size_t at = bytes.substr(0, 128).find(random_tag);
  if (random_tag.size() != 36 || at == std::string::npos) {
    return MakeError(ErrorCode::kInternal, "OpenVDB header layout not recognised (UUID not found)");
  }
  std::string rest = bytes;
  rest.erase(at, random_tag.size());
  const std::uint64_t h1 = HashString(rest);
  const std::uint64_t h2 = SplitMix64(h1 ^ rest.size());
  char tag[37];
  std::snprintf(tag, sizeof(tag), "%08x-%04x-4%03x-%04x-%012llx", unsigned(h1 >> 32),
                unsigned((h1 >> 16) & 0xffff), unsigned(h1 & 0xfff),
                unsigned(0x8000 | ((h2 >> 48) & 0x3fff)),
                static_cast<unsigned long long>(h2 & 0xffffffffffffULL));
  bytes.replace(at, 36, tag, 36);
  std::FILE* f = std::fopen(file_path.c_str(), "r+b");
  if (f == nullptr) return MakeError(ErrorCode::kIo, "cannot reopen '" + file_path + "'");
  const bool ok = std::fseek(f, long(at), SEEK_SET) == 0 && std::fwrite(tag, 1, 36, f) == 36;
  const bool closed = std::fclose(f) == 0;
  if (!ok || !closed) return MakeError(ErrorCode::kIo, "cannot rewrite header of '" + file_path + "'");
  return {};
}

std::string StringMeta(const openvdb::MetaMap& meta, const std::string& key,
                       const std::string& fallback) {
  if (auto m = meta.getMetadata<openvdb::StringMetadata>(key)) return m->value();
  return fallback;
}

}  // namespace

bool IsVdbPath(const std::string& path) { return FileExtension(path) == ".vdb"; }

std::vector<std::string> VolumeSet::GridNames() const {
  std::vector<std::string> names;
  for (const auto& [name, v] : scalars) names.push_back(name);
  for (const auto& [name, v] : labels) names.push_back(name);
  return names;
}

Expected<Volume> VolumeSet::Scalar(const std::string& name) const {
  auto it = scalars.find(name);
  if (it == scalars.end()) {
    return MakeError(ErrorCode::kNotFound, "no CT/scalar grid '" + name + "' (grids: " +
                                               JoinNames(GridNames()) + ")");
  }
  return it->second;
}

Expected<LabelVolume> VolumeSet::Label(const std::string& name) const {
  auto it = labels.find(name);
  if (it == labels.end()) {
    return MakeError(ErrorCode::kNotFound, "no label grid '" + name + "' (grids: " +
                                               JoinNames(GridNames()) + ")");
  }
  return it->second;
}

Status WriteVdb(const std::string& path, const VolumeSet& set, const VdbWriteOptions& options) {
  openvdb::initialize();  // idempotent; registers grid types if main() has not
  if (!IsVdbPath(path)) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "cannot write '" + path + "': expected a .vdb extension");
  }
  openvdb::GridPtrVec grids;
  std::set<std::string> seen;
  auto add = [&](const std::string& name, openvdb::GridBase::Ptr grid) -> Status {
    if (name.empty()) {
      return MakeError(ErrorCode::kInvalidArgument, "cannot write '" + path + "': empty grid name");
    }
    if (!seen.insert(name).second) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "cannot write '" + path + "': grid name '" + name + "' used twice");
    }
    grids.push_back(std::move(grid));
    return {};
  };
  for (const auto& [name, volume] : set.scalars) {
    openvdb::GridBase::Ptr grid = PrepareForWrite(volume, name);
    grid->setSaveFloatAsHalf(options.half_float);
    MEWM_RETURN_IF_ERROR(add(name, std::move(grid)));
  }
  for (const auto& [name, volume] : set.labels) {
    MEWM_RETURN_IF_ERROR(add(name, PrepareForWrite(volume, name)));
  }
  openvdb::MetaMap meta;
  meta.insertMeta("patient_id", openvdb::StringMetadata(set.metadata.patient_id));
  meta.insertMeta("modality", openvdb::StringMetadata(set.metadata.modality));
  meta.insertMeta("units", openvdb::StringMetadata(set.metadata.units));
  meta.insertMeta("provenance", openvdb::StringMetadata(set.metadata.provenance_json));
  meta.insertMeta(kFormatKey, openvdb::Int32Metadata(kFormatVersion));

  return WriteAtomically(path, [&](const std::string& temp) -> Status {
    try {
      openvdb::io::File file(temp);
      file.write(grids, meta);
      const std::string tag = file.getUniqueTag();
      file.close();
      return MakeUuidDeterministic(temp, tag);
    } catch (const std::exception& e) {
      return MakeError(ErrorCode::kIo, "cannot write '" + path + "': " + e.what());
    }
  });
}

Expected<VolumeSet> ReadVdb(const std::string& path) {
  openvdb::initialize();
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    return MakeError(ErrorCode::kNotFound, "file '" + path + "' does not exist");
  }
  if (!std::filesystem::is_regular_file(path, ec)) {
    return MakeError(ErrorCode::kIo, "'" + path + "' is not a regular file");
  }
  openvdb::GridPtrVecPtr grids;
  openvdb::MetaMap::Ptr meta;
  try {
    openvdb::io::File file(path);
    // Eager loading: a truncated file must fail here, not on first voxel access.
    file.open(/*delayLoad=*/false);
    meta = file.getMetadata();
    grids = file.getGrids();
    file.close();
  } catch (const std::exception& e) {
    return MakeError(ErrorCode::kCorruptData,
                     "'" + path + "' is not a readable OpenVDB file: " + e.what());
  }
  VolumeSet set;
  if (meta) {
    set.metadata.patient_id = StringMeta(*meta, "patient_id", "");
    set.metadata.modality = StringMeta(*meta, "modality", "");
    set.metadata.units = StringMeta(*meta, "units", "");
    set.metadata.provenance_json = StringMeta(*meta, "provenance", "{}");
  }
  for (const auto& base : *grids) {
    const std::string name = base->getName();
    auto geometry = GeometryFromTransform(base->transform());
    if (!geometry) return geometry.error().WithContext("'" + path + "', grid '" + name + "'");
    const Index3 extent = ExtentOf(*base);
    if (auto f = openvdb::gridPtrCast<openvdb::FloatGrid>(base)) {
      set.scalars.emplace(name, Volume(f, *geometry, extent));
    } else if (auto l = openvdb::gridPtrCast<openvdb::Int32Grid>(base)) {
      set.labels.emplace(name, LabelVolume(l, *geometry, extent));
    } else {
      LogWarn("'" + path + "': skipping grid '" + name + "' of unsupported type " +
              base->valueType());
    }
  }
  if (set.scalars.empty() && set.labels.empty()) {
    return MakeError(ErrorCode::kCorruptData,
                     "'" + path + "' holds no float or int32 grid that mewm can read");
  }
  return set;
}

}  // namespace mewm

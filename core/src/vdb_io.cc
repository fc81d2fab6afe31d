// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/core/vdb_io.h"

#include <openvdb/io/File.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>

#include "extent_limit.h"
#include "mewm/core/file_util.h"
#include "mewm/core/limits.h"
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
  grid->insertMeta(kExtentKey,
                   openvdb::Vec3IMetadata(openvdb::Vec3i(int(e[0]), int(e[1]), int(e[2]))));
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
  if (!ok || !closed)
    return MakeError(ErrorCode::kIo, "cannot rewrite header of '" + file_path + "'");
  return {};
}

/// Walks the OpenVDB file layout (header, file metadata, then each grid's descriptor, whose end
/// offset locates the next) and checks that every grid ends inside the file. OpenVDB 10's Blosc
/// reader does not check its reads, so a truncated file makes it allocate an uninitialised size;
/// this check turns truncation into a clear error before OpenVDB sees the file. Only files of
/// format 222 or later with grid offsets (everything OpenVDB 6+ writes to disk) are walked.
/// It reads only the header and the grid descriptors, seeking over the grids' data.
Status CheckGridsInsideFile(const std::string& path) {
  std::error_code ec;
  const std::uint64_t size = std::filesystem::file_size(path, ec);
  std::ifstream in(path, std::ios::binary);
  if (ec || !in) return MakeError(ErrorCode::kIo, "cannot read '" + path + "'");
  std::uint64_t at = 0;
  const auto corrupt = [&](const std::string& why) {
    return MakeError(ErrorCode::kCorruptData, "'" + path + "' is truncated or corrupt: " + why);
  };
  const auto take = [&](void* out, std::uint64_t n) {
    if (at + n > size) return false;
    in.seekg(std::streamoff(at));
    in.read(static_cast<char*>(out), std::streamsize(n));
    at += n;
    return bool(in);
  };
  const auto skip_string = [&]() {
    std::uint32_t n = 0;
    if (!take(&n, sizeof(n)) || at + n > size) return false;
    at += n;
    return true;
  };
  std::int64_t magic = 0;
  std::uint32_t version = 0, major = 0, minor = 0;
  char has_offsets = 0;
  if (!take(&magic, 8) || magic != 0x56444220 || !take(&version, 4)) return corrupt("bad header");
  if (version < 222) return {};  // older layouts: leave it to OpenVDB
  if (!take(&major, 4) || !take(&minor, 4) || !take(&has_offsets, 1) || at + 36 > size) {
    return corrupt("short header");
  }
  at += 36;  // UUID
  if (!has_offsets) return {};
  std::uint32_t entries = 0;
  if (!take(&entries, 4)) return corrupt("no file metadata");
  for (std::uint32_t e = 0; e < entries; ++e) {
    std::uint32_t value_bytes = 0;
    if (!skip_string() || !skip_string() || !take(&value_bytes, 4) || at + value_bytes > size) {
      return corrupt("file metadata runs past the end");
    }
    at += value_bytes;
  }
  std::uint32_t grids = 0;
  if (!take(&grids, 4)) return corrupt("no grid count");
  for (std::uint32_t g = 0; g < grids; ++g) {
    std::int64_t offsets[3] = {0, 0, 0};  // grid, block and end positions
    if (!skip_string() || !skip_string() || !skip_string() || !take(offsets, sizeof(offsets))) {
      return corrupt("grid descriptor " + std::to_string(g) + " runs past the end");
    }
    if (offsets[2] < std::int64_t(at) || std::uint64_t(offsets[2]) > size) {
      return corrupt("grid " + std::to_string(g) + " ends at byte " + std::to_string(offsets[2]) +
                     " of a " + std::to_string(size) + "-byte file");
    }
    at = std::uint64_t(offsets[2]);
  }
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
    return MakeError(ErrorCode::kNotFound,
                     "no CT/scalar grid '" + name + "' (grids: " + JoinNames(GridNames()) + ")");
  }
  return it->second;
}

Expected<LabelVolume> VolumeSet::Label(const std::string& name) const {
  auto it = labels.find(name);
  if (it == labels.end()) {
    return MakeError(ErrorCode::kNotFound,
                     "no label grid '" + name + "' (grids: " + JoinNames(GridNames()) + ")");
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
    if (options.half_float) {
      // A half holds at most 65504 in magnitude: beyond it OpenVDB stores inf, silently.
      constexpr double kHalfMax = 65504.0;
      const VolumeStats stats = volume.Statistics();
      const double background = volume.grid().background();
      const auto number = [](double v) {
        char text[32];
        std::snprintf(text, sizeof text, "%g", v);
        return std::string(text);
      };
      if (!(stats.min >= -kHalfMax && stats.max <= kHalfMax && std::abs(background) <= kHalfMax)) {
        return MakeError(ErrorCode::kInvalidArgument,
                         "cannot write '" + path + "' as 16-bit halves: grid '" + name +
                             "' holds values from " + number(stats.min) + " to " +
                             number(stats.max) + " (background " + number(background) +
                             "), beyond the +-65504 a half can hold; write it without --half");
      }
    }
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
      if (!options.compress) file.setCompression(openvdb::io::COMPRESS_NONE);
      file.write(grids, meta);
      const std::string tag = file.getUniqueTag();
      file.close();
      // OpenVDB does not check its output stream: a full disk or a file-size limit leaves a
      // short file behind a write that succeeded. The layout walk finds the missing bytes.
      if (Status whole = CheckGridsInsideFile(temp); !whole) {
        return MakeError(ErrorCode::kIo, "cannot write '" + path +
                                             "': short write (disk full or file too large): " +
                                             whole.error().message);
      }
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
  MEWM_RETURN_IF_ERROR(CheckGridsInsideFile(path));
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
    // Readers densify the extent (ToDense): bound it as a NIfTI image is bounded.
    MEWM_RETURN_IF_ERROR(CheckExtentVoxels(path + "', grid '" + name, extent, 4));
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

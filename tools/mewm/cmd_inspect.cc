// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include <iomanip>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>

#include "commands.h"
#include "mewm/core/file_util.h"
#include "mewm/core/nifti_io.h"
#include "mewm/core/sha256.h"
#include "mewm/core/volume_file.h"
#include "mewm/torch/bridge.h"

namespace mewm::cli {
namespace {

using nlohmann::json;

json Vec(const Eigen::Vector3d& v) { return json::array({v[0], v[1], v[2]}); }
json Idx(const Index3& v) { return json::array({v[0], v[1], v[2]}); }

json GeometryJson(const Geometry& g) {
  json direction = json::array();
  for (int r = 0; r < 3; ++r) direction.push_back(Vec(g.direction.row(r).transpose()));
  return {{"frame", "LPS"},
          {"spacing_mm", Vec(g.spacing)},
          {"origin_mm", Vec(g.origin)},
          {"direction", direction}};
}

template <typename VolumeT>
json GridJson(const VolumeT& volume, const char* type) {
  const VolumeStats stats = volume.Statistics();
  const IndexBox box = volume.ActiveBoundingBox();
  json j = {{"name", volume.name()},
            {"type", type},
            {"extent", Idx(volume.extent())},
            {"geometry", GeometryJson(volume.geometry())},
            {"active_voxels", stats.active_voxels},
            {"background", volume.Background()},
            {"min", stats.min},
            {"max", stats.max},
            {"mean", stats.mean},
            {"stddev", stats.stddev}};
  if (!box.empty()) j["active_bbox"] = {Idx(box.min), Idx(box.max)};
  return j;
}

void PrintGrid(const json& g) {
  std::cout << "  grid '" << g["name"].get<std::string>() << "' (" << g["type"].get<std::string>()
            << ")\n"
            << "    extent        " << g["extent"].dump() << "\n"
            << "    spacing (mm)  " << g["geometry"]["spacing_mm"].dump() << "\n"
            << "    origin (mm)   " << g["geometry"]["origin_mm"].dump() << "  [LPS]\n"
            << "    direction     " << g["geometry"]["direction"].dump() << "\n"
            << "    active voxels " << g["active_voxels"].get<std::int64_t>();
  if (g.contains("active_bbox")) std::cout << "  bbox " << g["active_bbox"].dump();
  std::cout << "\n    values        min " << g["min"].get<double>() << ", max "
            << g["max"].get<double>() << ", mean " << g["mean"].get<double>() << ", std "
            << g["stddev"].get<double>() << " (active voxels; background " << g["background"].dump()
            << ")\n";
}

Expected<json> InspectVolumes(const std::string& path) {
  json out = {{"file", path}};
  if (IsNiftiPath(path)) {
    MEWM_TRY(const NiftiInfo info, ReadNiftiInfo(path));
    json affine = json::array();
    for (int r = 0; r < 4; ++r) {
      affine.push_back({info.affine_ras(r, 0), info.affine_ras(r, 1), info.affine_ras(r, 2),
                        info.affine_ras(r, 3)});
    }
    out["nifti"] = {{"version", info.version},       {"datatype", info.datatype},
                    {"sform_code", info.sform_code}, {"qform_code", info.qform_code},
                    {"scl_slope", info.scl_slope},   {"scl_inter", info.scl_inter},
                    {"affine_ras", affine}};
  }
  MEWM_TRY(const VolumeSet set, ReadVolumeFile(path));
  out["metadata"] = {{"patient_id", set.metadata.patient_id},
                     {"modality", set.metadata.modality},
                     {"units", set.metadata.units},
                     {"provenance", set.metadata.provenance_json}};
  out["grids"] = json::array();
  for (const auto& [name, v] : set.scalars) out["grids"].push_back(GridJson(v, "float"));
  for (const auto& [name, v] : set.labels) out["grids"].push_back(GridJson(v, "int32 labels"));
  return out;
}

}  // namespace

Action RegisterInspect(CLI::App& app) {
  auto path = std::make_shared<std::string>();
  auto as_json = std::make_shared<bool>(false);
  app.add_option("FILE", *path,
                 ".vdb, .nii, .nii.gz, a .pt checkpoint or a .json model (its SHA-256 too)")
      ->required();
  app.add_flag("--json", *as_json, "Print JSON instead of text");
  return [path, as_json]() -> int {
    json out;
    const std::string extension = FileExtension(*path);
    if (extension == ".pt" || extension == ".json") {
      // A model file: its SHA-256, checked against its checksum file when there is one. A JSON
      // model is read once, bounded first (every one of mewm's is well under 16 MiB; a 200 MB
      // file took 4.7 GB to parse), and hashed from those bytes.
      std::optional<std::string> text;
      if (extension == ".json") {
        auto read = ReadRegularFile(*path, 16u << 20);
        if (!read) return Fail(read.error());
        text = std::move(*read);
      }
      auto checksum = text ? VerifyModelChecksum(*path, *text) : VerifyModelChecksum(*path);
      if (!checksum) return Fail(checksum.error());
      out = {{"file", *path},
             {"sha256", checksum->sha256},
             {"checksum_file", checksum->recorded ? json(ChecksumPath(*path)) : json(nullptr)}};
      if (extension == ".pt") {
        auto info = torch_bridge::ReadCheckpointInfo(*path);
        if (!info) return Fail(info.error());
        // Shown as JSON when they are JSON, else as the text they are (a discarded value
        // printed as "<discarded>", which is no JSON).
        const auto shown = [](const std::string& stored) {
          json parsed = json::parse(stored, nullptr, false);
          return parsed.is_discarded() ? json(stored) : parsed;
        };
        out["checkpoint"] = {{"config", shown(info->config_json)},
                             {"metadata", shown(info->metadata_json)}};
      } else {
        const json model = json::parse(*text, nullptr, false);
        if (model.is_discarded()) {
          return Fail(MakeError(ErrorCode::kCorruptData, "'" + *path + "' is not JSON").error);
        }
        out["format"] = model.is_object() ? model.value("format", json(nullptr)) : json(nullptr);
      }
      std::cout << out.dump(*as_json ? -1 : 2) << "\n";
      return 0;
    }
    auto inspected = InspectVolumes(*path);
    if (!inspected) return Fail(inspected.error());
    out = std::move(*inspected);
    if (*as_json) {
      std::cout << out.dump() << "\n";
      return 0;
    }
    std::cout << out["file"].get<std::string>() << "\n";
    if (out.contains("nifti")) {
      std::cout << "  NIfTI-" << out["nifti"]["version"] << ", datatype "
                << out["nifti"]["datatype"] << ", sform_code " << out["nifti"]["sform_code"]
                << ", qform_code " << out["nifti"]["qform_code"] << "\n  affine (RAS) "
                << out["nifti"]["affine_ras"].dump() << "\n";
    }
    const json& m = out["metadata"];
    std::cout << "  patient '" << m["patient_id"].get<std::string>() << "', modality "
              << m["modality"].get<std::string>() << ", units " << m["units"].get<std::string>()
              << "\n  provenance " << m["provenance"].get<std::string>() << "\n";
    for (const auto& g : out["grids"]) PrintGrid(g);
    return 0;
  };
}

}  // namespace mewm::cli

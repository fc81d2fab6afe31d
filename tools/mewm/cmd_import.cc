// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include <filesystem>
#include <iostream>

#include "commands.h"
#include "mewm/core/text.h"
#include "mewm/core/volume_file.h"
#include "mewm/dicom/dicom_import.h"
#include "mewm/dicom/dicom_seg.h"

namespace mewm::cli {
namespace {

struct SegOptions {
  const std::string &seg_file, &ct_folder, &series_uid, &segment_map, &out;
  bool force;
};

int ImportSegFile(const SegOptions& o) {
  if (!IsVdbPath(o.out) && !IsNiftiPath(o.out)) {
    return Fail(MakeError(ErrorCode::kInvalidArgument,
                          "--out must end in .vdb, .nii or .nii.gz: '" + o.out + "'")
                    .error);
  }
  dicom::SegImportOptions options;
  if (!o.segment_map.empty()) {
    auto map = dicom::ParseSegmentMap(o.segment_map);
    if (!map) return Fail(map.error());
    options.segment_map = *map;
  }
  auto header = dicom::ReadSegHeader(o.seg_file);
  if (!header) return Fail(header.error());
  auto uid = dicom::ChooseSeriesForSeg(o.ct_folder, *header, o.series_uid);
  if (!uid) return Fail(uid.error());
  dicom::ImportOptions ct_options;
  ct_options.series_uid = *uid;
  auto ct = dicom::ImportSeries(o.ct_folder, ct_options);
  if (!ct) return Fail(ct.error());
  auto imported = dicom::ImportSegmentation(o.seg_file, dicom::ReferenceOf(*ct), options);
  if (!imported) return Fail(imported.error());
  // The files this writes: one, or one per grid for NIfTI with both grids.
  const bool per_grid = IsNiftiPath(o.out) && imported->set.labels.size() > 1;
  std::vector<std::string> targets;
  if (per_grid) {
    for (const auto& [name, grid] : imported->set.labels) {
      targets.push_back(PerGridNiftiPath(o.out, name));
    }
  } else {
    targets.push_back(o.out);
  }
  for (const std::string& target : targets) {
    if (Status free = CheckOutput("--out", target, o.force); !free) return Fail(free.error());
  }
  if (per_grid) {
    auto written = WriteNiftiPerGrid(o.out, imported->set);
    if (!written) return Fail(written.error());
  } else if (Status written = WriteVolumeFile(o.out, imported->set); !written) {
    return Fail(written.error());
  }
  const Volume& volume = ct->set.scalars.at("ct");
  std::cout << "read " << imported->type << " SEG " << o.seg_file << " (" << imported->frames
            << " frames) onto CT series " << ct->series.series_uid << " (" << volume.extent()[0]
            << " x " << volume.extent()[1] << " x " << volume.extent()[2] << ")\n";
  for (const dicom::SegmentInfo& s : imported->segments) {
    std::cout << "  segment " << s.number << " '" << s.label << "' -> "
              << dicom::SegmentRoleName(s.role) << " (" << s.reason << "): " << s.frames
              << " frames, " << s.voxels << " voxels\n";
  }
  for (const std::string& note : imported->notes) std::cout << "  overlap: " << note << "\n";
  for (const auto& [name, grid] : imported->set.labels) {
    std::cout << "  grid " << name << ": " << CountLabel(grid) << " voxels\n";
  }
  for (const std::string& target : targets) std::cout << "-> " << target << "\n";
  std::cout.flush();
  return 0;
}

}  // namespace

Action RegisterImport(CLI::App& app) {
  struct Options {
    std::string folder, out, series_uid, seg_file, ct_folder, segment_map;
    bool list = false, force = false, half = false;
  };
  auto o = std::make_shared<Options>();
  app.require_subcommand(1);
  CLI::App* dicom = app.add_subcommand(
      "dicom",
      "Read a DICOM CT series (DCMTK) into a .vdb or NIfTI file: slices sorted along the slice "
      "normal, HU from RescaleSlope/Intercept, the affine from the orientation, position and "
      "pixel spacing; series with gantry tilt, uneven spacing or mixed orientations are refused");
  dicom
      ->add_option("DIR", o->folder,
                   "Folder holding the series (searched recursively; files "
                   "that are not DICOM are skipped)")
      ->required();
  dicom->add_option("--out", o->out, "Output .vdb (grid \"ct\"), .nii or .nii.gz");
  dicom->add_option("--series-uid", o->series_uid,
                    "The series to read when the folder holds several (see --list)");
  dicom->add_flag("--list", o->list, "List the series in the folder and exit");
  AddForceFlag(dicom, &o->force);
  dicom->add_flag("--half", o->half, ".vdb output: store CT as 16-bit halves");
  CLI::App* seg = app.add_subcommand(
      "dicom-seg",
      "Read a DICOM-SEG mask (DCMTK dcmseg; BINARY or FRACTIONAL) onto the lattice of the CT "
      "series it segments: label grids \"liver\" (1) and \"tumor\" (1 tumor, 2 necrosis), "
      "segments mapped by their label, description or type (docs/ECOSYSTEM.md, \"DICOM-SEG in\")");
  seg->add_option("SEG_FILE", o->seg_file, "The Segmentation Storage file")->required();
  seg->add_option("--ct", o->ct_folder, "Folder holding the CT series the SEG was drawn on")
      ->required();
  seg->add_option("--series-uid", o->series_uid,
                  "The CT series when the folder holds several (default: the one the SEG "
                  "references)");
  seg->add_option("--segment-map", o->segment_map,
                  "Roles by segment number, overriding the words rule: e.g. 1=liver,2=tumor "
                  "(roles liver, tumor, necrosis, ignore)");
  seg->add_option("--out", o->out,
                  "Output .vdb (grids liver, tumor) or .nii/.nii.gz (one grid; with both, one "
                  "file per grid: OUT_liver.nii.gz, OUT_tumor.nii.gz)")
      ->required();
  AddForceFlag(seg, &o->force);
  return [o, seg]() -> int {
    if (seg->parsed()) {
      return ImportSegFile(
          {o->seg_file, o->ct_folder, o->series_uid, o->segment_map, o->out, o->force});
    }
    if (o->list) {
      auto scan = dicom::ScanFolder(o->folder);
      if (!scan) return Fail(scan.error());
      std::cout << scan->series.size() << " series in " << o->folder << " (" << scan->files
                << " files, " << scan->not_dicom << " not DICOM"
                << (scan->outside > 0
                        ? ", " + std::to_string(scan->outside) + " links out of the folder skipped"
                        : std::string())
                << "):\n"
                << dicom::DescribeSeries(*scan);
      for (const std::string& file : scan->damaged) {
        std::cout << "  damaged, not readable as DICOM: " << EscapeControl(file) << "\n";
      }
      return 0;
    }
    if (o->out.empty()) {
      return Fail(
          MakeError(ErrorCode::kInvalidArgument, "--out FILE is required (or --list)").error);
    }
    if (!IsVdbPath(o->out) && !IsNiftiPath(o->out)) {
      return Fail(MakeError(ErrorCode::kInvalidArgument,
                            "--out must end in .vdb, .nii or .nii.gz: '" + o->out + "'")
                      .error);
    }
    if (Status free = CheckOutput("--out", o->out, o->force); !free) return Fail(free.error());
    dicom::ImportOptions options;
    options.series_uid = o->series_uid;
    auto imported = dicom::ImportSeries(o->folder, options);
    if (!imported) return Fail(imported.error());
    VdbWriteOptions vdb;
    vdb.half_float = o->half;
    if (Status written = WriteVolumeFile(o->out, imported->set, "ct", vdb); !written) {
      return Fail(written.error());
    }
    const Volume& ct = imported->set.scalars.at("ct");
    const VolumeStats stats = ct.Statistics();
    std::cout << "imported series " << imported->series.series_uid << " ("
              << imported->set.metadata.modality << ", " << imported->slices << " slices of "
              << ct.extent()[0] << " x " << ct.extent()[1] << ", " << ct.geometry().ToString()
              << "; values " << stats.min << " to " << stats.max << ")";
    if (imported->not_dicom > 0)
      std::cout << ", " << imported->not_dicom << " non-DICOM files skipped";
    std::cout << " -> " << o->out << std::endl;
    return 0;
  };
}

}  // namespace mewm::cli

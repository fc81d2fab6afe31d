// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include <filesystem>
#include <iostream>

#include "commands.h"
#include "mewm/core/volume_file.h"
#include "mewm/dicom/dicom_import.h"

namespace mewm::cli {

Action RegisterImport(CLI::App& app) {
  struct Options {
    std::string folder, out, series_uid;
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
  dicom->add_flag("--force", o->force, "Replace OUT when it exists");
  dicom->add_flag("--half", o->half, ".vdb output: store CT as 16-bit halves");
  return [o]() -> int {
    if (o->list) {
      auto scan = dicom::ScanFolder(o->folder);
      if (!scan) return Fail(scan.error());
      std::cout << scan->series.size() << " series in " << o->folder << " (" << scan->files
                << " files, " << scan->not_dicom << " not DICOM):\n"
                << dicom::DescribeSeries(*scan);
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
    std::error_code ec;
    if (!o->force && std::filesystem::exists(o->out, ec)) {
      return Fail(MakeError(ErrorCode::kInvalidArgument,
                            "'" + o->out + "' exists; choose another name or pass --force")
                      .error);
    }
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

// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include <iostream>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "mewm/core/version.h"
#include "mewm/core/volume_file.h"

namespace mewm::cli {

Action RegisterConvert(CLI::App& app) {
  struct Options {
    std::string in, out, grid, kind = "auto", patient;
    bool half = false, force = false;
  };
  auto o = std::make_shared<Options>();
  app.add_option("IN", o->in, "Input .nii, .nii.gz or .vdb")->required();
  app.add_option("OUT", o->out, "Output .nii, .nii.gz or .vdb")->required();
  app.add_option("--grid", o->grid,
                 "NIfTI input: name of the grid to create (default ct / label); "
                 "NIfTI output: grid to write (default: every grid, one file each, "
                 "OUT_<grid>.nii.gz, or OUT itself for a file of one grid)");
  app.add_option("--kind", o->kind,
                 "NIfTI input: read as ct, label or auto (by the intent code, the datatype, the "
                 "values, and the file name last)")
      ->check(CLI::IsMember({"auto", "ct", "label"}))
      ->capture_default_str();
  app.add_option("--patient-id", o->patient, ".vdb output: patient id metadata");
  app.add_flag("--half", o->half, ".vdb output: store CT as 16-bit halves (about half the size)");
  AddForceFlag(&app, &o->force);
  return [o]() -> int {
    const NiftiKind kind = o->kind == "ct"      ? NiftiKind::kScalar
                           : o->kind == "label" ? NiftiKind::kLabel
                                                : NiftiKind::kAuto;
    const bool nifti_in = !IsVdbPath(o->in);
    NiftiKindDecision decision;
    auto set = ReadVolumeFile(o->in, kind, nifti_in ? o->grid : "", &decision);
    if (!set) return Fail(set.error());
    if (nifti_in && kind == NiftiKind::kAuto) {
      std::cout << "read " << o->in << " as "
                << (decision.kind == NiftiKind::kLabel ? "labels" : "CT") << " (" << decision.reason
                << "; --kind ct or label overrides)\n";
    }
    if (!o->patient.empty()) set->metadata.patient_id = o->patient;
    set->metadata.provenance_json =
        nlohmann::json{{"tool", "mewm convert"}, {"version", Version()}, {"source", o->in}}.dump();
    // A NIfTI file holds one grid: from a .vdb of several, every grid goes to a file of its own.
    const bool per_grid =
        !nifti_in && o->grid.empty() && IsNiftiPath(o->out) && set->GridNames().size() > 1;
    std::vector<std::string> targets = {o->out};
    if (per_grid) {
      targets.clear();
      for (const std::string& name : set->GridNames()) {
        targets.push_back(PerGridNiftiPath(o->out, name));
      }
    }
    for (const std::string& target : targets) {
      if (auto free = CheckOutput("OUT", target, o->force); !free) {
        return Fail(free.error());
      }
    }
    if (per_grid) {
      auto written = WriteNiftiPerGrid(o->out, *set);
      if (!written) return Fail(written.error());
      for (const std::string& path : *written) std::cout << "wrote " << path << "\n";
      return 0;
    }
    if (auto written =
            WriteVolumeFile(o->out, *set, nifti_in ? "" : o->grid, VdbWriteOptions{o->half});
        !written) {
      return Fail(written.error());
    }
    std::cout << "wrote " << o->out << "\n";
    return 0;
  };
}

}  // namespace mewm::cli

// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include <cmath>
#include <iostream>
#include <optional>

#include "commands.h"
#include "mewm/core/render.h"
#include "mewm/core/volume_file.h"

namespace mewm::cli {
namespace {

Expected<HuWindow> ParseWindow(const std::string& text) {
  const auto comma = text.find(',');
  HuWindow window;
  try {
    if (comma == std::string::npos) throw std::invalid_argument("no comma");
    std::size_t used = 0;
    window.lo = std::stof(text.substr(0, comma), &used);
    window.hi = std::stof(text.substr(comma + 1), &used);
  } catch (const std::exception&) {
    return MakeError(
        ErrorCode::kInvalidArgument,
        "--window '" + text + "' not understood (expected LO,HI in HU, e.g. -175,600)");
  }
  MEWM_RETURN_IF_ERROR(window.Validate());
  return window;
}

}  // namespace

Action RegisterRender(CLI::App& app) {
  struct Options {
    std::string file, plane = "axial", window = "-175,600", overlay, grid = "ct", out, at;
    std::int64_t index = -1;
    bool force = false;
  };
  auto o = std::make_shared<Options>();
  app.add_option("FILE", o->file, "Volume (.vdb, .nii, .nii.gz)")->required();
  app.add_option("--plane", o->plane, "axial, coronal or sagittal")->capture_default_str();
  app.add_option("--index", o->index, "Slice index along the plane's axis (-1: middle)")
      ->capture_default_str();
  app.add_option("--window", o->window, "HU window LO,HI")->capture_default_str();
  app.add_option("--grid", o->grid, "CT grid to render (.vdb input)")->capture_default_str();
  app.add_option("--overlay", o->overlay,
                 "Label overlay: a grid name in FILE (e.g. tumor) or a label NIfTI/.vdb path");
  app.add_option(
      "--at", o->at,
      "Slice through the centre of this label grid of FILE (e.g. tumor) instead of --index");
  app.add_option("--out", o->out, "Output PNG path")->required();
  AddForceFlag(&app, &o->force);
  return [o]() -> int {
    auto plane = ParseSlicePlane(o->plane);
    if (!plane) return Fail(plane.error());
    auto window = ParseWindow(o->window);
    if (!window) return Fail(window.error());
    if (auto free = CheckOutput("--out", o->out, o->force, {o->file, o->overlay}); !free) {
      return Fail(free.error());
    }
    auto set = ReadVolumeFile(o->file, NiftiKind::kScalar, o->grid);
    if (!set) return Fail(set.error());
    auto ct = set->Scalar(o->grid);
    if (!ct) return Fail(ct.error().WithContext("'" + o->file + "'"));
    std::optional<LabelVolume> overlay;
    if (!o->overlay.empty()) {
      if (auto it = set->labels.find(o->overlay); it != set->labels.end()) {
        overlay = it->second;
      } else {
        auto other = ReadVolumeFile(o->overlay, NiftiKind::kLabel, "overlay");
        if (!other) return Fail(other.error().WithContext("--overlay"));
        if (other->labels.size() != 1) {
          return Fail(Error{ErrorCode::kInvalidArgument,
                            "--overlay '" + o->overlay + "' must hold exactly one label grid"});
        }
        overlay = other->labels.begin()->second;
      }
    }
    SliceSpec spec;
    spec.plane = *plane;
    spec.index = o->index;
    if (!o->at.empty()) {
      auto label = set->Label(o->at);
      if (!label) return Fail(label.error().WithContext("--at"));
      auto box = LabelWorldBox(*label);
      if (!box) return Fail(box.error().WithContext("--at"));
      const Eigen::Vector3d centre = ct->geometry().WorldToIndex(0.5 * (box->min + box->max));
      const int axis = *plane == SlicePlane::kAxial ? 2 : *plane == SlicePlane::kCoronal ? 1 : 0;
      spec.index = std::llround(centre[axis]);
    }
    spec.window = *window;
    auto image = RenderSlice(*ct, spec, overlay ? &*overlay : nullptr);
    if (!image) return Fail(image.error().WithContext("'" + o->file + "'"));
    if (auto written = WritePng(o->out, *image); !written) return Fail(written.error());
    std::cout << "wrote " << o->out << " (" << image->width << "x" << image->height << ")\n";
    return 0;
  };
}

}  // namespace mewm::cli

// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/core/render.h"

#include <png.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "mewm/core/file_util.h"

namespace mewm {
namespace {

/// Which index axis runs along image columns and rows, and which one is fixed.
struct SliceAxes {
  int fixed, col, row;
  bool flip_rows;  ///< true when rows run from high to low index (superior at the top)
};

SliceAxes AxesOf(SlicePlane plane) {
  switch (plane) {
    case SlicePlane::kAxial:
      return {2, 0, 1, false};
    case SlicePlane::kCoronal:
      return {1, 0, 2, true};
    case SlicePlane::kSagittal:
      return {0, 1, 2, true};
  }
  return {2, 0, 1, false};
}

const char* PlaneName(SlicePlane plane) {
  switch (plane) {
    case SlicePlane::kAxial:
      return "axial";
    case SlicePlane::kCoronal:
      return "coronal";
    case SlicePlane::kSagittal:
      return "sagittal";
  }
  return "?";
}

// Overlay colours for labels 1..6, then repeating.
constexpr std::array<std::array<std::uint8_t, 3>, 6> kPalette = {
    {{230, 40, 40}, {40, 200, 60}, {50, 110, 240}, {240, 200, 30}, {200, 60, 220}, {30, 210, 210}}};

}  // namespace

Expected<SlicePlane> ParseSlicePlane(const std::string& text) {
  if (text == "axial") return SlicePlane::kAxial;
  if (text == "coronal") return SlicePlane::kCoronal;
  if (text == "sagittal") return SlicePlane::kSagittal;
  return MakeError(ErrorCode::kInvalidArgument,
                   "plane '" + text + "' not understood (expected axial, coronal or sagittal)");
}

Expected<RgbImage> RenderSlice(const Volume& volume, const SliceSpec& spec,
                               const LabelVolume* overlay) {
  MEWM_RETURN_IF_ERROR(spec.window.Validate());
  const Index3& extent = volume.extent();
  if (extent[0] <= 0 || extent[1] <= 0 || extent[2] <= 0) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "volume '" + volume.name() + "' has an empty extent");
  }
  const SliceAxes axes = AxesOf(spec.plane);
  const std::int64_t index = spec.index == -1 ? extent[axes.fixed] / 2 : spec.index;
  if (index < 0 || index >= extent[axes.fixed]) {
    return MakeError(ErrorCode::kInvalidArgument,
                     std::string(PlaneName(spec.plane)) + " slice index " + std::to_string(index) +
                         " is outside [0, " + std::to_string(extent[axes.fixed] - 1) + "]");
  }
  if (overlay != nullptr &&
      (overlay->extent() != extent || !overlay->geometry().ApproxEquals(volume.geometry(), 1e-4))) {
    return MakeError(
        ErrorCode::kInvalidArgument,
        "overlay '" + overlay->name() + "' does not share the volume's geometry and extent");
  }
  IndexBox box{{0, 0, 0}, {extent[0] - 1, extent[1] - 1, extent[2] - 1}};
  box.min[axes.fixed] = box.max[axes.fixed] = index;
  const DenseFloat ct = volume.ToDense(box);
  DenseLabel labels;
  if (overlay != nullptr) labels = overlay->ToDense(box);

  const std::int64_t ncols = extent[axes.col], nrows = extent[axes.row];
  const double col_mm = volume.geometry().spacing[axes.col];
  const double row_mm = volume.geometry().spacing[axes.row];
  const double pixel_mm = std::min(col_mm, row_mm);
  // Square pixels of the finer spacing: a slice of 0.001 x 1000 mm voxels would be a million times
  // longer than it is wide (it ran out of memory; a larger ratio overflowed into an 8 x 1 image).
  constexpr double kMaxSide = 16384.0;  // pixels, per side
  const double width = double(ncols) * col_mm / pixel_mm,
               height = double(nrows) * row_mm / pixel_mm;
  if (!(width <= kMaxSide && height <= kMaxSide)) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "the " + std::string(PlaneName(spec.plane)) + " slice of '" + volume.name() +
                         "' would be " + std::to_string(std::llround(std::min(width, 1e18))) +
                         " x " + std::to_string(std::llround(std::min(height, 1e18))) +
                         " pixels at its finer spacing (" + std::to_string(pixel_mm) +
                         " mm); at most 16384 per side");
  }
  RgbImage image;
  image.width = std::max(1, int(std::lround(width)));
  image.height = std::max(1, int(std::lround(height)));
  image.pixels.assign(std::size_t(image.width) * std::size_t(image.height) * 3, 0);
  for (int y = 0; y < image.height; ++y) {
    std::int64_t r = std::min<std::int64_t>(nrows - 1, std::int64_t((y + 0.5) * pixel_mm / row_mm));
    if (axes.flip_rows) r = nrows - 1 - r;
    for (int x = 0; x < image.width; ++x) {
      const std::int64_t c =
          std::min<std::int64_t>(ncols - 1, std::int64_t((x + 0.5) * pixel_mm / col_mm));
      std::int64_t ijk[3] = {0, 0, 0};
      ijk[axes.col] = c;
      ijk[axes.row] = r;  // the fixed axis has extent 1 in the dense slice
      const std::size_t offset = ct.Offset(ijk[0], ijk[1], ijk[2]);
      const float unit = spec.window.ToUnit(ct.data[offset]);
      double rgb[3];
      rgb[0] = rgb[1] = rgb[2] = (unit + 1.0) * 127.5;
      if (overlay != nullptr && labels.data[offset] != 0) {
        const auto& color =
            kPalette[std::size_t(std::abs(labels.data[offset]) - 1) % kPalette.size()];
        for (int ch = 0; ch < 3; ++ch) {
          rgb[ch] = (1.0 - spec.overlay_alpha) * rgb[ch] + spec.overlay_alpha * color[ch];
        }
      }
      std::uint8_t* px =
          &image.pixels[(std::size_t(y) * std::size_t(image.width) + std::size_t(x)) * 3];
      for (int ch = 0; ch < 3; ++ch)
        px[ch] = std::uint8_t(std::clamp(std::lround(rgb[ch]), 0L, 255L));
    }
  }
  return image;
}

Expected<std::string> EncodePng(const RgbImage& image) {
  if (image.width <= 0 || image.height <= 0 ||
      image.pixels.size() != std::size_t(image.width) * std::size_t(image.height) * 3) {
    return MakeError(ErrorCode::kInvalidArgument, "malformed image");
  }
  png_image png;
  std::memset(&png, 0, sizeof(png));
  png.version = PNG_IMAGE_VERSION;
  png.width = png_uint_32(image.width);
  png.height = png_uint_32(image.height);
  png.format = PNG_FORMAT_RGB;
  png_alloc_size_t size = 0;
  if (!png_image_write_to_memory(&png, nullptr, &size, 0, image.pixels.data(), 0, nullptr)) {
    return MakeError(ErrorCode::kInternal, std::string("PNG encoding failed: ") + png.message);
  }
  std::string bytes(size, '\0');
  if (!png_image_write_to_memory(&png, bytes.data(), &size, 0, image.pixels.data(), 0, nullptr)) {
    return MakeError(ErrorCode::kInternal, std::string("PNG encoding failed: ") + png.message);
  }
  bytes.resize(size);
  return bytes;
}

Status WritePng(const std::string& path, const RgbImage& image) {
  std::string extension = std::filesystem::path(path).extension().string();
  for (char& c : extension) c = char(std::tolower(static_cast<unsigned char>(c)));
  if (extension != ".png") {
    return MakeError(ErrorCode::kInvalidArgument,
                     "cannot write '" + path + "': only PNG is written; name the file *.png");
  }
  auto bytes = EncodePng(image);
  if (!bytes) return bytes.error().WithContext("cannot write '" + path + "'");
  return WriteFileAtomic(path, *bytes);
}

Expected<RgbImage> ReadPng(const std::string& path) {
  MEWM_TRY(const std::string bytes, ReadFile(path));
  png_image png;
  std::memset(&png, 0, sizeof(png));
  png.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_memory(&png, bytes.data(), bytes.size())) {
    return MakeError(ErrorCode::kCorruptData,
                     "'" + path + "' is not a readable PNG: " + png.message);
  }
  png.format = PNG_FORMAT_RGB;
  RgbImage image;
  image.width = int(png.width);
  image.height = int(png.height);
  image.pixels.resize(PNG_IMAGE_SIZE(png));
  if (!png_image_finish_read(&png, nullptr, image.pixels.data(), 0, nullptr)) {
    png_image_free(&png);
    return MakeError(ErrorCode::kCorruptData,
                     "'" + path + "' is not a readable PNG: " + png.message);
  }
  return image;
}

}  // namespace mewm

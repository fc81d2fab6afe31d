// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// PNG rendering of one slice of a volume, at a window, with an optional label overlay. Slices are
// taken in index space and shown in radiological convention for an LPS volume with identity
// direction: axial (k fixed) with the patient's right on the image left and anterior up; coronal
// (j fixed) and sagittal (i fixed) with superior up. Pixels are stretched so that displayed
// pixels are square in millimetres.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "mewm/core/crop.h"
#include "mewm/core/expected.h"
#include "mewm/core/volume.h"

namespace mewm {

enum class SlicePlane { kAxial, kCoronal, kSagittal };

/// "axial" | "coronal" | "sagittal" (kInvalidArgument otherwise).
Expected<SlicePlane> ParseSlicePlane(const std::string& text);

/// An 8-bit RGB image, rows top to bottom.
struct RgbImage {
  int width = 0;
  int height = 0;
  std::vector<std::uint8_t> pixels;  ///< width * height * 3
};

struct SliceSpec {
  SlicePlane plane = SlicePlane::kAxial;
  std::int64_t index = -1;  ///< slice index along the fixed axis; -1 = middle of the extent, other
                            ///< negatives are refused
  HuWindow window;
  float overlay_alpha = 0.45f;
};

/// Renders a slice. kInvalidArgument when the index lies outside the extent or the overlay's
/// geometry or extent differs from the volume's.
Expected<RgbImage> RenderSlice(const Volume& volume, const SliceSpec& spec,
                               const LabelVolume* overlay = nullptr);

/// The PNG bytes of an image (8-bit RGB), for files and for data URLs. kInvalidArgument for a
/// malformed image (pixels not width * height * 3).
Expected<std::string> EncodePng(const RgbImage& image);

/// Writes a PNG atomically. kInvalidArgument when the path does not end in .png (any case), kIo
/// on failure.
Status WritePng(const std::string& path, const RgbImage& image);

/// Reads a PNG written by WritePng (8-bit RGB); used by tests and the Turing-test scorer.
Expected<RgbImage> ReadPng(const std::string& path);

}  // namespace mewm

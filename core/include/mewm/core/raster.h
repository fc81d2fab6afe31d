// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Minimal raster drawing on an RgbImage (render.h) for small plots: filled rectangles, lines and
// text in a built-in 5x7 pixel font (digits, letters shown upper-case, and . , : ; % - + = / ( )
// [ ] _ < > ? ! #'). Everything is clipped to the image.
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "mewm/core/render.h"

namespace mewm {

using Rgb = std::array<std::uint8_t, 3>;

/// An image of `width` x `height` filled with `color`.
RgbImage BlankImage(int width, int height, const Rgb& color);

/// Fills the rectangle [x0, x1] x [y0, y1] (inclusive, any order).
void FillRect(RgbImage& image, int x0, int y0, int x1, int y1, const Rgb& color);

/// A line of `thickness` pixels from (x0, y0) to (x1, y1) (Bresenham, square pen).
void DrawLine(RgbImage& image, int x0, int y0, int x1, int y1, const Rgb& color, int thickness = 1);

/// Text with its top-left corner at (x, y), each font pixel drawn as scale x scale; characters
/// advance 6 * scale pixels. Characters outside the font are drawn as '?'.
void DrawText(RgbImage& image, int x, int y, const std::string& text, const Rgb& color,
              int scale = 1);

/// Width in pixels of DrawText's output.
int TextWidth(const std::string& text, int scale = 1);

}  // namespace mewm

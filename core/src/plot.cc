// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/core/plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "mewm/core/raster.h"

namespace mewm {
namespace {

using Color = Rgb;

constexpr double kBandAlpha = 0.25;

void Blend(RgbImage& image, int x, int y, const Color& color, double alpha) {
  if (x < 0 || y < 0 || x >= image.width || y >= image.height) return;
  std::uint8_t* p = &image.pixels[(std::size_t(y) * std::size_t(image.width) + std::size_t(x)) * 3];
  for (int i = 0; i < 3; ++i)
    p[i] = std::uint8_t(std::lround(p[i] * (1.0 - alpha) + color[i] * alpha));
}

Color Lighter(const Color& c, double toward_white) {
  Color out;
  for (int i = 0; i < 3; ++i) {
    out[i] = std::uint8_t(std::lround(c[i] + (255.0 - c[i]) * toward_white));
  }
  return out;
}

/// S(t) of a step curve: `start` before the first time.
double StepAt(const std::vector<double>& times, const std::vector<double>& values, double t,
              double start) {
  const auto it = std::upper_bound(times.begin(), times.end(), t);
  if (it == times.begin()) return start;
  return values[std::size_t(it - times.begin()) - 1];
}

/// A tick step of 1, 2 or 5 times a power of ten giving about `target` ticks over `span`.
double NiceStep(double span, int target) {
  const double raw = span / std::max(1, target);
  const double power = std::pow(10.0, std::floor(std::log10(raw)));
  for (const double m : {1.0, 2.0, 5.0, 10.0}) {
    if (m * power >= raw) return m * power;
  }
  return 10.0 * power;
}

std::string FormatTick(double v, double step) {
  char text[32];
  std::snprintf(text, sizeof text, step >= 1.0 ? "%.0f" : "%.1f", v);
  return text;
}

Status CheckCurve(const PlotCurve& c) {
  const auto bad = [&](const std::string& why) {
    return MakeError(ErrorCode::kInvalidArgument, "plot curve '" + c.label + "': " + why);
  };
  if (c.times.size() != c.values.size()) return bad("times and values differ in size");
  if (!(c.lo.empty() && c.hi.empty()) &&
      (c.lo.size() != c.times.size() || c.hi.size() != c.times.size())) {
    return bad("the band needs one lo and one hi per time");
  }
  for (std::size_t i = 0; i < c.times.size(); ++i) {
    if (!std::isfinite(c.times[i]) || !std::isfinite(c.values[i]) ||
        (i > 0 && !(c.times[i] > c.times[i - 1]))) {
      return bad("times must be finite and increasing, values finite");
    }
  }
  return {};
}

/// The plot area in pixels and the months it spans, with the data-to-pixel mappings.
struct PlotFrame {
  int line = 16;  ///< text line height (7 px glyphs, the title 14 px, and spacing)
  int left = 0, right = 0, top = 0, bottom = 0;
  double max_t = 1.0;
  /// The x pixel of time `t`.
  int Px(double t) const { return left + int(std::lround(t / max_t * (right - left))); }
  /// The y pixel of survival `s` (clamped to 0..1).
  int Py(double s) const {
    return bottom - int(std::lround(std::clamp(s, 0.0, 1.0) * (bottom - top)));
  }
};

/// Checks the plot and its curves, and returns the months its x axis spans.
Expected<double> CheckPlot(const SurvivalPlot& plot) {
  if (plot.curves.empty()) {
    return MakeError(ErrorCode::kInvalidArgument, "a survival plot needs at least one curve");
  }
  if (plot.width < 320 || plot.height < 240) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "a survival plot needs at least 320 x 240 pixels (got " +
                         std::to_string(plot.width) + " x " + std::to_string(plot.height) + ")");
  }
  double max_t = plot.max_months;
  for (const PlotCurve& c : plot.curves) {
    MEWM_RETURN_IF_ERROR(CheckCurve(c));
    if (plot.max_months <= 0.0 && !c.times.empty()) max_t = std::max(max_t, c.times.back());
  }
  if (!(max_t > 0.0)) max_t = 1.0;
  return max_t;
}

/// Lays the plot out: title and y label on top, legend at the bottom, ticks left and below.
Expected<PlotFrame> LayOut(const SurvivalPlot& plot, double max_t) {
  PlotFrame f;
  f.max_t = max_t;
  const int legend_lines = int(plot.curves.size() + plot.notes.size());
  f.left = 64;
  f.right = plot.width - 24;
  f.top = 20 + 2 * f.line;
  f.bottom = plot.height - 16 - f.line * (legend_lines + 2) - 8;
  if (f.bottom - f.top < 60) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "a survival plot of " + std::to_string(plot.height) +
                         " pixels has no room for " + std::to_string(legend_lines) +
                         " legend lines");
  }
  return f;
}

/// Draws the title, axis labels, grid lines and ticks.
void DrawGrid(RgbImage& image, const SurvivalPlot& plot, const PlotFrame& f) {
  const Color black{0, 0, 0}, grid{225, 225, 225}, grey{90, 90, 90};
  DrawText(image, f.left, 8, plot.title, black, 2);
  DrawText(image, 8, 8 + f.line + 4, plot.y_label, grey);
  for (int k = 0; k <= 5; ++k) {
    const double s = 0.2 * k;
    FillRect(image, f.left, f.Py(s), f.right, f.Py(s), grid);
    const std::string label = FormatTick(s, 0.1);
    DrawText(image, f.left - 8 - TextWidth(label), f.Py(s) - 3, label, black);
  }
  const double step = NiceStep(f.max_t, 8);
  for (double t = 0.0; t <= f.max_t + 1e-9; t += step) {
    FillRect(image, f.Px(t), f.top, f.Px(t), f.bottom, grid);
    FillRect(image, f.Px(t), f.bottom, f.Px(t), f.bottom + 4, black);
    const std::string label = FormatTick(t, step);
    DrawText(image, f.Px(t) - TextWidth(label) / 2, f.bottom + 8, label, black);
  }
  DrawText(image, (f.left + f.right - TextWidth(plot.x_label)) / 2, f.bottom + 8 + f.line,
           plot.x_label, grey);
}

/// Draws the bands first, blended so that overlapping bands both show; then the curves, the
/// first one last so that it lies on top.
void DrawCurves(RgbImage& image, const SurvivalPlot& plot, const PlotFrame& f) {
  for (const PlotCurve& c : plot.curves) {
    if (c.lo.empty()) continue;
    for (int x = f.left; x <= f.right; ++x) {
      const double t = double(x - f.left) / double(f.right - f.left) * f.max_t;
      const int y0 = f.Py(StepAt(c.times, c.lo, t, 1.0));
      const int y1 = f.Py(StepAt(c.times, c.hi, t, 1.0));
      for (int yy = std::min(y0, y1); yy <= std::max(y0, y1); ++yy) {
        Blend(image, x, yy, c.color, kBandAlpha);
      }
    }
  }
  for (auto it = plot.curves.rbegin(); it != plot.curves.rend(); ++it) {
    const PlotCurve& c = *it;
    int previous = f.Py(1.0);
    for (int x = f.left; x <= f.right; ++x) {
      const double t = double(x - f.left) / double(f.right - f.left) * f.max_t;
      const int y = f.Py(StepAt(c.times, c.values, t, 1.0));
      const bool on = !c.dashed || ((x - f.left) / 6) % 2 == 0;
      if (on || y != previous)
        FillRect(image, x, std::min(previous, y), x + 1, std::max(previous, y) + 1, c.color);
      previous = y;
    }
  }
}

/// Draws the legend: per curve a swatch (line, with the band colour behind it when there is
/// one) and the label, then the notes.
void DrawLegend(RgbImage& image, const SurvivalPlot& plot, const PlotFrame& f) {
  const Color white{255, 255, 255}, black{0, 0, 0}, grey{90, 90, 90};
  int y = f.bottom + 8 + 2 * f.line + 8;
  for (const PlotCurve& c : plot.curves) {
    if (!c.lo.empty())
      FillRect(image, f.left, y, f.left + 27, y + 9, Lighter(c.color, 1.0 - kBandAlpha));
    FillRect(image, f.left, y + 4, f.left + 27, y + 5, c.color);
    if (c.dashed) FillRect(image, f.left + 10, y + 4, f.left + 16, y + 5, white);
    DrawText(image, f.left + 36, y, c.label, black);
    y += f.line;
  }
  for (const std::string& note : plot.notes) {
    DrawText(image, f.left, y, note, grey);
    y += f.line;
  }
}

}  // namespace

Expected<RgbImage> RenderSurvivalPlot(const SurvivalPlot& plot) {
  MEWM_TRY(const double max_t, CheckPlot(plot));
  RgbImage image;
  image.width = plot.width;
  image.height = plot.height;
  image.pixels.assign(std::size_t(plot.width) * std::size_t(plot.height) * 3, 255);
  MEWM_TRY(const PlotFrame frame, LayOut(plot, max_t));
  DrawGrid(image, plot, frame);
  DrawCurves(image, plot, frame);
  // Axes over everything.
  const Color black{0, 0, 0};
  FillRect(image, frame.left, frame.top, frame.left, frame.bottom, black);
  FillRect(image, frame.left, frame.bottom, frame.right, frame.bottom, black);
  DrawLegend(image, plot, frame);
  return image;
}

}  // namespace mewm

// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Survival-curve plots as RGB images (write them with WritePng, render.h): step curves S(t) with
// an optional shaded band each (the spread over samples), axes with ticks, a title, axis labels
// and a legend. Text is drawn with raster.h's built-in 5x7 pixel font (letters are shown in
// capitals), so plotting needs no font files or libraries beyond libpng.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "mewm/core/expected.h"
#include "mewm/core/render.h"

namespace mewm {

/// One step curve: S(t) = 1 before times[0], values[i] from times[i] on (as RiskScore and
/// Kaplan-Meier curves are stored).
struct PlotCurve {
  std::string label;           ///< legend text
  std::vector<double> times;   ///< increasing, months
  std::vector<double> values;  ///< in [0, 1], one per time
  std::vector<double> lo, hi;  ///< optional band (both empty, or one per time each)
  std::array<std::uint8_t, 3> color{31, 119, 180};
  bool dashed = false;
};

struct SurvivalPlot {
  std::string title;
  std::string x_label = "Months after treatment";
  std::string y_label = "Survival probability";
  double max_months = 0.0;         ///< right end of the x axis; 0 = the last time of any curve
  std::vector<PlotCurve> curves;   ///< drawn in order; the legend lists them in order
  std::vector<std::string> notes;  ///< extra legend lines (e.g. what the bands show)
  int width = 760;
  int height = 520;
};

/// Renders the plot. kInvalidArgument when there is no curve, a curve's sizes differ, its times
/// are not increasing or not finite, or the image is smaller than 320 x 240.
Expected<RgbImage> RenderSurvivalPlot(const SurvivalPlot& plot);

}  // namespace mewm

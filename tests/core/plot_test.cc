// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/core/plot.h"

#include <gtest/gtest.h>

#include "mewm/core/raster.h"
#include "test_env.h"

namespace mewm {
namespace {

bool Has(const RgbImage& image, const std::array<std::uint8_t, 3>& color, int x0, int y0, int x1,
         int y1) {
  for (int y = y0; y <= y1; ++y) {
    for (int x = x0; x <= x1; ++x) {
      const std::uint8_t* p = &image.pixels[(std::size_t(y) * image.width + x) * 3];
      if (p[0] == color[0] && p[1] == color[1] && p[2] == color[2]) return true;
    }
  }
  return false;
}

SurvivalPlot TwoCurves() {
  SurvivalPlot plot;
  plot.title = "Patient P0001: predicted survival";
  PlotCurve a;
  a.label = "Chosen: Epirubicin+Lipiodol (median 20.0 months)";
  a.times = {5, 10, 20, 40};
  a.values = {0.9, 0.7, 0.5, 0.2};
  a.lo = {0.85, 0.6, 0.4, 0.1};
  a.hi = {0.95, 0.8, 0.6, 0.3};
  a.color = {31, 100, 200};
  PlotCurve b = a;
  b.label = "Next best";
  b.values = {0.8, 0.5, 0.3, 0.1};
  b.lo.clear();
  b.hi.clear();
  b.color = {230, 120, 20};
  plot.curves = {a, b};
  plot.notes = {"Bands: lowest to highest sample"};
  return plot;
}

TEST(PlotTest, DrawsCurvesBandsAxesAndALegend) {
  auto image = RenderSurvivalPlot(TwoCurves());
  ASSERT_TRUE(image) << image.error().message;
  EXPECT_EQ(image->width, 760);
  EXPECT_EQ(image->height, 520);
  // Both curve colours, the chosen one's lighter band, and black text/axes appear.
  EXPECT_TRUE(Has(*image, {31, 100, 200}, 0, 0, 759, 519));
  EXPECT_TRUE(Has(*image, {230, 120, 20}, 0, 0, 759, 519));
  EXPECT_TRUE(Has(*image, {0, 0, 0}, 0, 0, 759, 519));
  EXPECT_FALSE(Has(*image, {230, 120, 20}, 0, 0, 63, 519)) << "curves stay right of the y axis";
  // The title is drawn in the top rows.
  EXPECT_TRUE(Has(*image, {0, 0, 0}, 60, 8, 400, 18));
  // The curves start at S = 1 at the top-left of the plot area (left = 64, top = 52), the first
  // curve drawn on top.
  EXPECT_TRUE(Has(*image, {31, 100, 200}, 64, 50, 80, 56));
  // It round-trips through the PNG writer.
  testing::TempDir dir;
  ASSERT_TRUE(WritePng(dir.File("plot.png"), *image));
  auto back = ReadPng(dir.File("plot.png"));
  ASSERT_TRUE(back);
  EXPECT_EQ(back->pixels, image->pixels);
}

TEST(PlotTest, BadCurvesAndTinyImagesAreRefused) {
  SurvivalPlot none;
  EXPECT_FALSE(RenderSurvivalPlot(none));
  SurvivalPlot plot = TwoCurves();
  plot.curves[0].times = {5, 4, 20, 40};
  auto unordered = RenderSurvivalPlot(plot);
  ASSERT_FALSE(unordered);
  EXPECT_NE(unordered.error().message.find("increasing"), std::string::npos);
  plot = TwoCurves();
  plot.curves[0].lo.pop_back();
  EXPECT_FALSE(RenderSurvivalPlot(plot));
  plot = TwoCurves();
  plot.width = 100;
  EXPECT_FALSE(RenderSurvivalPlot(plot));
}

TEST(RasterTest, TextIsDrawnInCapitalsAndItsWidthIsKnown) {
  RgbImage a = BlankImage(80, 20, {255, 255, 255}), b = a, blank = a;
  DrawText(a, 1, 1, "Months", {0, 0, 0});
  DrawText(b, 1, 1, "MONTHS", {0, 0, 0});
  EXPECT_EQ(a.pixels, b.pixels);
  EXPECT_NE(a.pixels, blank.pixels);
  EXPECT_EQ(TextWidth("ab", 2), 22);  // 6 pixels a character at scale 1, less the last gap
  // Text past the edge is clipped, not written out of bounds.
  DrawText(blank, 70, 15, "overflow", {0, 0, 0}, 3);
  EXPECT_EQ(blank.pixels.size(), std::size_t(80 * 20 * 3));
}

}  // namespace
}  // namespace mewm

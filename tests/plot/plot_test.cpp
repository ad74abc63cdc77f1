// Tests for src/plot: tick selection, and rendered charts read back pixel by pixel.
#include "plot/plot.h"

#include <gtest/gtest.h>

#include <cmath>

namespace vla::plot {
namespace {

// Pixels within `tol` (per channel) of colour c inside the box [x0, x1) x [y0, y1).
int count_near(const Image& im, std::array<uint8_t, 3> c, int tol = 30, int x0 = 0, int y0 = 0,
               int x1 = -1, int y1 = -1) {
  if (x1 < 0) x1 = im.width;
  if (y1 < 0) y1 = im.height;
  int n = 0;
  for (int y = y0; y < y1; ++y)
    for (int x = x0; x < x1; ++x) {
      const uint8_t* p = im.row(y) + 3 * x;
      n += std::abs(p[0] - c[0]) <= tol && std::abs(p[1] - c[1]) <= tol &&
           std::abs(p[2] - c[2]) <= tol;
    }
  return n;
}

TEST(Plot, NiceTicksUseOneTwoFiveSteps) {
  auto expect_ticks = [](const std::vector<double>& got, const std::vector<double>& want) {
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-12) << i;
  };
  expect_ticks(nice_ticks(0, 1), {0, 0.2, 0.4, 0.6, 0.8, 1.0});
  expect_ticks(nice_ticks(-3, 7), {-2, 0, 2, 4, 6});
  const auto t = nice_ticks(0.13, 0.97);
  ASSERT_GE(t.size(), 3u);
  for (size_t i = 1; i < t.size(); ++i) EXPECT_NEAR(t[i] - t[i - 1], 0.2, 1e-12);
  EXPECT_FALSE(nice_ticks(5, 5).empty());  // a single value still gets a tick
  EXPECT_THROW(nice_ticks(1, 0), Error);
  EXPECT_THROW(nice_ticks(0, NAN), Error);
}

TEST(Plot, LinesAndLegendUseTheSeriesColours) {
  Chart c;
  c.width = 400, c.height = 240;
  Series a{"rising", Mark::kLine, {0, 1, 2, 3}, {0, 1, 2, 3}};
  a.width = 3;
  Series b{"falling", Mark::kLine, {0, 1, 2, 3}, {3, 2, 1, 0}};
  b.width = 3;
  c.series = {a, b};
  const Image im = render(c);
  ASSERT_EQ(im.width, 400);
  ASSERT_EQ(im.height, 240);
  EXPECT_GT(count_near(im, palette(0), 20), 300);  // two diagonals of ~280 px, 3 px wide
  EXPECT_GT(count_near(im, palette(1), 20), 300);
  // Legend: both swatches in the top-right corner box.
  EXPECT_GT(count_near(im, palette(0), 20, 250, 0, 400, 80), 10);
  EXPECT_GT(count_near(im, palette(1), 20, 250, 0, 400, 80), 10);
  // The background stays white where nothing is drawn (most of the image).
  EXPECT_GT(count_near(im, {255, 255, 255}, 0), 400 * 240 / 2);
}

// The legend takes the corner with the least data, counting a segment wherever it spans: here a
// segment across the top (starting top-left) rules out both top corners.
TEST(Plot, LegendAvoidsTheSpanOfSegments) {
  Chart c;
  c.width = 400, c.height = 240;
  c.x.min = 0, c.x.max = 10, c.y.min = 0, c.y.max = 10;
  Series seg{"call", Mark::kSegments, {0.2}, {9.5}};
  seg.x_end = {9.8};
  seg.width = 3;
  Series mid{"age", Mark::kPoints, {5, 5.2}, {5, 5.2}};
  mid.width = 4;
  c.series = {seg, mid};
  const Image im = render(c);
  // The legend (with the "age" swatch, palette 1) sits at the bottom right, not at the top.
  EXPECT_GT(count_near(im, palette(1), 20, 250, 130, 400, 240), 10);
  EXPECT_EQ(count_near(im, palette(1), 20, 250, 0, 400, 100), 0);
}

TEST(Plot, AxisLabelsAndTitleAreDrawn) {
  // Same layout (non-empty labels reserve their room), blank text vs real text.
  Chart plain;
  plain.width = 400, plain.height = 240;
  plain.series = {{"", Mark::kLine, {0, 10}, {0, 1}}};
  plain.x.label = plain.y.label = plain.title = " ";
  Chart labelled = plain;
  labelled.x.label = "time (s)";
  labelled.y.label = "force (N)";
  labelled.title = "A title";
  const Image a = render(plain), b = render(labelled);
  const auto dark = std::array<uint8_t, 3>{0, 0, 0};
  // Text is dark ink: the labelled chart has more of it in the bottom strip, the left strip and
  // the top strip.
  EXPECT_GT(count_near(b, dark, 120, 0, 220, 400, 240),
            count_near(a, dark, 120, 0, 220, 400, 240) + 20);
  EXPECT_GT(count_near(b, dark, 120, 0, 0, 18, 240), count_near(a, dark, 120, 0, 0, 18, 240) + 20);
  EXPECT_GT(count_near(b, dark, 120, 0, 0, 400, 20), count_near(a, dark, 120, 0, 0, 400, 20) + 20);
}

TEST(Plot, BarsAreProportionalToTheirValues) {
  Chart c;
  c.width = 400, c.height = 300;
  c.x.categories = {"a", "b"};
  c.y.min = 0, c.y.max = 100;
  c.series = {{"", Mark::kBars, {0, 1}, {50, 100}, 2}};
  const Image im = render(c);
  // Column heights of the bar colour at each category's centre.
  auto height_at = [&](double frac) {
    const int x = static_cast<int>(frac * im.width);
    int h = 0;
    for (int y = 0; y < im.height; ++y) h += count_near(im, palette(2), 10, x, y, x + 1, y + 1);
    return h;
  };
  const int h0 = height_at(0.35), h1 = height_at(0.78);
  ASSERT_GT(h1, 100);
  EXPECT_NEAR(static_cast<double>(h0) / h1, 0.5, 0.05);
}

TEST(Plot, LogAxisSkipsNonPositiveValues) {
  Chart c;
  c.width = 300, c.height = 200;
  c.y.log = true;
  Series s{"loss", Mark::kPoints, {0, 1, 2, 3}, {100, 0, 1, 0.01}};
  s.width = 3;
  c.series = {s};
  const Image im = render(c);
  EXPECT_GT(count_near(im, palette(0), 20), 20);
}

TEST(Plot, BadChartsGiveClearErrors) {
  Chart c;
  c.series = {{"mismatch", Mark::kLine, {0, 1}, {0}}};
  EXPECT_THROW(render(c), Error);
  Chart tiny;
  tiny.width = 50;
  EXPECT_THROW(render(tiny), Error);
  Chart seg;
  seg.series = {{"s", Mark::kSegments, {0, 1}, {1, 1}}};  // no x_end
  EXPECT_THROW(render(seg), Error);
  Chart range;
  range.y.min = 2, range.y.max = 1;
  EXPECT_THROW(render(range), Error);
}

TEST(Plot, EmptyChartStillHasAFrame) {
  Chart c;
  c.x.label = "x (m)";
  const Image im = render(c);
  EXPECT_GT(count_near(im, {0, 0, 0}, 60), 1000);  // the frame around the plot area
}

}  // namespace
}  // namespace vla::plot

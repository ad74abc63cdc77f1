// vla plot: the one chart renderer every PNG plot of the tool goes through (training loss, the
// runtime's timeline and feature-age histogram, evaluation bar charts). Charts carry a title, axis
// labels with units, tick labels and a legend. Drawing is Cairo's (Debian libcairo2); the result
// is an RGB vla::Image the caller writes with vla::write_png (crash-safe).
#pragma once

#include <array>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "core/core.h"

namespace vla::plot {

// How a series is drawn.
enum class Mark {
  kLine,      // polyline through (x[i], y[i]); non-finite points break the line
  kPoints,    // a dot per point
  kSegments,  // horizontal segments from (x[i], y[i]) to (x_end[i], y[i]) (intervals)
  kBars,      // bars from the baseline (0, or the axis minimum on a log axis) to y[i], centred
              // on x[i]; several bar series side by side share each x (grouped bars)
};

struct Series {
  Series() = default;
  Series(std::string label_, Mark mark_, std::vector<double> x_ = {}, std::vector<double> y_ = {},
         int color_ = -1, double width_ = 1.5)
      : label(std::move(label_)),
        mark(mark_),
        x(std::move(x_)),
        y(std::move(y_)),
        color(color_),
        width(width_) {}
  std::string label;          // legend entry; empty: not listed
  Mark mark = Mark::kLine;    //
  std::vector<double> x, y;   // same length
  std::vector<double> x_end;  // kSegments only: end of each interval (same length as x)
  int color = -1;             // palette index (matplotlib's tab10); -1: the series' index
  double width = 1.5;         // line width / dot radius / bar width fraction (kBars: 0..1)
};

struct Axis {
  std::string label;     // with the unit, e.g. "time (s)"
  bool log = false;      // log10 scale (values <= 0 are skipped)
  bool integer = false;  // whole-number ticks only (counts)
  // Fixed range; both NaN (the default): fit the data with a small margin.
  double min = std::numeric_limits<double>::quiet_NaN();
  double max = std::numeric_limits<double>::quiet_NaN();
  // Categorical ticks: category i sits at x = i and is labelled categories[i] (bar charts).
  std::vector<std::string> categories;
};

struct Chart {
  std::string title;
  Axis x, y;
  std::vector<Series> series;
  int width = 800, height = 400;  // pixels
};

// Renders the chart (white background). Throws vla::Error on a size below 120x80, mismatched
// series lengths or an unknown palette colour.
Image render(const Chart& chart);

// "Nice" tick positions (1, 2, 5 x 10^k steps) covering [lo, hi], at most about `max_ticks`.
// Requires lo <= hi, both finite.
std::vector<double> nice_ticks(double lo, double hi, int max_ticks = 6);

// Palette colour i (0-255 RGB), cycling through matplotlib's tab10.
std::array<uint8_t, 3> palette(int i);

}  // namespace vla::plot

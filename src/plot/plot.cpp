// Chart rendering with Cairo: plot area, grid, ticks, labels, series, legend.
#include "plot/plot.h"

#include <cairo.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <mutex>

namespace vla::plot {

std::array<uint8_t, 3> palette(int i) {
  static const std::array<uint8_t, 3> tab10[] = {
      {31, 119, 180}, {255, 127, 14},  {44, 160, 44},   {214, 39, 40},  {148, 103, 189},
      {140, 86, 75},  {227, 119, 194}, {127, 127, 127}, {188, 189, 34}, {23, 190, 207}};
  VLA_CHECK(i >= 0, "plot: palette index must be >= 0, got ", i);
  return tab10[i % 10];
}

std::vector<double> nice_ticks(double lo, double hi, int max_ticks) {
  VLA_CHECK(std::isfinite(lo) && std::isfinite(hi) && lo <= hi, "plot: bad tick range [", lo, ", ",
            hi, "]");
  max_ticks = std::max(2, max_ticks);
  const double span = hi - lo > 0 ? hi - lo : std::max(1.0, std::fabs(lo));
  const double raw = span / (max_ticks - 1);
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (m * mag >= raw - 1e-12 * mag) {
      step = m * mag;
      break;
    }
  std::vector<double> t;
  for (double v = std::ceil(lo / step - 1e-9) * step; v <= hi + 1e-9 * step; v += step)
    t.push_back(std::fabs(v) < 1e-12 * step ? 0.0 : v);
  if (t.empty()) t.push_back(lo);
  return t;
}

namespace {

std::string tick_label(double v) {
  char buf[32];
  const double a = std::fabs(v);
  if (a != 0 && (a >= 1e5 || a < 1e-3))
    std::snprintf(buf, sizeof(buf), "%.0e", v);
  else
    std::snprintf(buf, sizeof(buf), "%.4g", v);
  return buf;
}

struct Range {
  double lo = std::numeric_limits<double>::infinity();
  double hi = -std::numeric_limits<double>::infinity();
  void add(double v, bool log) {
    if (!std::isfinite(v) || (log && v <= 0)) return;
    lo = std::min(lo, v), hi = std::max(hi, v);
  }
  bool empty() const { return !(hi >= lo); }
};

// Data range of one axis -> the drawn range (in axis units, log10 for log axes).
Range fit(const Axis& axis, Range data, bool pad) {
  Range r;
  if (std::isfinite(axis.min) && std::isfinite(axis.max)) {
    VLA_CHECK(axis.min < axis.max && (!axis.log || axis.min > 0), "plot: bad axis range for '",
              axis.label, "'");
    r.lo = axis.min, r.hi = axis.max;
  } else if (!axis.categories.empty()) {
    r.lo = -0.5, r.hi = static_cast<double>(axis.categories.size()) - 0.5;
  } else if (data.empty()) {
    r.lo = axis.log ? 1.0 : 0.0, r.hi = axis.log ? 10.0 : 1.0;
  } else {
    r = data;
  }
  if (axis.log) r.lo = std::log10(r.lo), r.hi = std::log10(r.hi);
  if (r.hi - r.lo < 1e-12) r.lo -= 0.5, r.hi += 0.5;
  if (pad && axis.categories.empty() && !(std::isfinite(axis.min) && std::isfinite(axis.max))) {
    const double m = 0.05 * (r.hi - r.lo);
    r.lo -= m, r.hi += m;
  }
  return r;
}

std::vector<double> ticks_for(const Axis& axis, const Range& r) {
  if (!axis.categories.empty()) {
    std::vector<double> t;
    for (size_t i = 0; i < axis.categories.size(); ++i) t.push_back(static_cast<double>(i));
    return t;
  }
  if (!axis.log) {
    std::vector<double> t = nice_ticks(r.lo, r.hi);
    if (axis.integer && t.size() > 1 && t[1] - t[0] < 1) {  // counts: no fractional ticks
      std::vector<double> whole;
      for (double v = std::ceil(r.lo); v <= r.hi; v += 1) whole.push_back(v);
      return whole;
    }
    return t;
  }
  // Decades (in log10 units); 2x and 5x between them when the axis spans few decades.
  std::vector<double> t;
  const bool fine = r.hi - r.lo < 2.5;
  for (double d = std::floor(r.lo); d <= std::ceil(r.hi); d += 1)
    for (double m : fine ? std::vector<double>{1, 2, 5} : std::vector<double>{1}) {
      const double v = d + std::log10(m);
      if (v >= r.lo - 1e-9 && v <= r.hi + 1e-9) t.push_back(v);
    }
  return t;
}

void set_rgb(cairo_t* cr, std::array<uint8_t, 3> c) {
  cairo_set_source_rgb(cr, c[0] / 255.0, c[1] / 255.0, c[2] / 255.0);
}

// Text anchored at (x, y): ax / ay in {0, 0.5, 1} for left|centre|right, top|middle|bottom.
void text(cairo_t* cr, const std::string& s, double x, double y, double ax, double ay,
          double angle = 0) {
  cairo_text_extents_t e;
  cairo_text_extents(cr, s.c_str(), &e);
  cairo_save(cr);
  cairo_translate(cr, x, y);
  cairo_rotate(cr, angle);
  cairo_move_to(cr, -e.x_bearing - ax * e.width, -e.y_bearing - ay * e.height);
  cairo_show_text(cr, s.c_str());
  cairo_restore(cr);
}

}  // namespace

Image render(const Chart& c) {
  VLA_CHECK(c.width >= 120 && c.height >= 80, "plot: chart must be at least 120x80 pixels, got ",
            c.width, "x", c.height);
  Range dx, dy;
  int n_bars = 0;
  bool any_bars = false;
  for (const Series& s : c.series) {
    VLA_CHECK(s.x.size() == s.y.size(), "plot: series '", s.label, "' has ", s.x.size(), " x and ",
              s.y.size(), " y values");
    VLA_CHECK(s.mark != Mark::kSegments || s.x_end.size() == s.x.size(), "plot: segments '",
              s.label, "' need one x_end per x");
    for (size_t i = 0; i < s.x.size(); ++i) {
      dx.add(s.x[i], c.x.log);
      if (s.mark == Mark::kSegments) dx.add(s.x_end[i], c.x.log);
      dy.add(s.y[i], c.y.log);
    }
    if (s.mark == Mark::kBars) ++n_bars, any_bars = true;
  }
  if (any_bars && !c.y.log) dy.add(0.0, false);  // bars start at zero
  Range rx = fit(c.x, dx, false), ry = fit(c.y, dy, !any_bars);
  if (any_bars && c.x.categories.empty() && !dx.empty() && dx.hi > dx.lo) {
    // Numeric bars (histograms): leave half a bar at each end.
    double gap = dx.hi - dx.lo;
    for (const Series& s : c.series)
      if (s.mark == Mark::kBars)
        for (size_t i = 1; i < s.x.size(); ++i)
          if (s.x[i] != s.x[i - 1]) gap = std::min(gap, std::fabs(s.x[i] - s.x[i - 1]));
    rx.lo = dx.lo - gap / 2, rx.hi = dx.hi + gap / 2;
  }
  if (any_bars && !c.y.log) ry.hi += 0.05 * (ry.hi - ry.lo);

  std::unique_ptr<cairo_surface_t, void (*)(cairo_surface_t*)> surf(
      cairo_image_surface_create(CAIRO_FORMAT_RGB24, c.width, c.height), cairo_surface_destroy);
  std::unique_ptr<cairo_t, void (*)(cairo_t*)> ctx(cairo_create(surf.get()), cairo_destroy);
  VLA_CHECK(cairo_status(ctx.get()) == CAIRO_STATUS_SUCCESS,
            "plot: cairo: ", cairo_status_to_string(cairo_status(ctx.get())));
  cairo_t* cr = ctx.get();
  cairo_set_source_rgb(cr, 1, 1, 1);
  cairo_paint(cr);
  cairo_select_font_face(cr, "DejaVu Sans", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
  const double fs = std::clamp(c.height / 32.0, 9.0, 13.0);
  cairo_set_font_size(cr, fs);
  {
    cairo_text_extents_t e;
    cairo_text_extents(cr, "0", &e);
    static std::once_flag warned;
    if (e.x_advance <= 0)
      std::call_once(warned, [] {
        log_warn(
            "plot: no font found (fontconfig); charts are drawn without text. Install "
            "fonts-dejavu-core, or point FONTCONFIG_FILE at a config that lists fonts.");
      });
  }

  // Plot area: room for the title, the y tick labels and both axis labels.
  const double left = 4.6 * fs + (c.y.label.empty() ? 0 : 1.6 * fs);
  const double right = c.width - 1.2 * fs;
  const double top = c.title.empty() ? 1.2 * fs : 2.6 * fs;
  const double bottom = c.height - (c.x.label.empty() ? 2.2 * fs : 3.8 * fs);
  VLA_CHECK(right - left > 20 && bottom - top > 20, "plot: chart ", c.width, "x", c.height,
            " leaves no room for the plot area");
  auto axis_value = [](const Axis& a, double v) { return a.log ? std::log10(v) : v; };
  auto px = [&](double v) {
    return left + (axis_value(c.x, v) - rx.lo) / (rx.hi - rx.lo) * (right - left);
  };
  auto py = [&](double v) {
    return bottom - (axis_value(c.y, v) - ry.lo) / (ry.hi - ry.lo) * (bottom - top);
  };

  // Grid and ticks (tick positions are in axis units: log10 on log axes).
  cairo_set_line_width(cr, 1.0);
  const std::vector<double> xt = ticks_for(c.x, rx), yt = ticks_for(c.y, ry);
  auto from_axis = [](const Axis& a, double t) { return a.log ? std::pow(10.0, t) : t; };
  for (double t : yt) {
    const double y = std::round(py(from_axis(c.y, t))) + 0.5;
    cairo_set_source_rgb(cr, 0.9, 0.9, 0.9);
    cairo_move_to(cr, left, y), cairo_line_to(cr, right, y), cairo_stroke(cr);
    cairo_set_source_rgb(cr, 0, 0, 0);
    cairo_move_to(cr, left - 4, y), cairo_line_to(cr, left, y), cairo_stroke(cr);
    text(cr, tick_label(from_axis(c.y, t)), left - 6, y, 1.0, 0.5);
  }
  for (double t : xt) {
    const double x = std::round(px(from_axis(c.x, t))) + 0.5;
    if (c.x.categories.empty()) {
      cairo_set_source_rgb(cr, 0.9, 0.9, 0.9);
      cairo_move_to(cr, x, top), cairo_line_to(cr, x, bottom), cairo_stroke(cr);
    }
    cairo_set_source_rgb(cr, 0, 0, 0);
    cairo_move_to(cr, x, bottom), cairo_line_to(cr, x, bottom + 4), cairo_stroke(cr);
    const std::string lab = c.x.categories.empty()
                                ? tick_label(from_axis(c.x, t))
                                : c.x.categories[static_cast<size_t>(std::lround(t))];
    text(cr, lab, x, bottom + 6, 0.5, 0.0);
  }

  // Series, clipped to the plot area.
  cairo_save(cr);
  cairo_rectangle(cr, left, top, right - left, bottom - top);
  cairo_clip(cr);
  const double base = c.y.log ? std::pow(10.0, ry.lo) : 0.0;
  int bar_index = 0;
  for (size_t k = 0; k < c.series.size(); ++k) {
    const Series& s = c.series[k];
    set_rgb(cr, palette(s.color >= 0 ? s.color : static_cast<int>(k)));
    cairo_set_line_width(cr, s.width);
    auto ok = [&](size_t i) {
      return std::isfinite(s.x[i]) && std::isfinite(s.y[i]) && (!c.x.log || s.x[i] > 0) &&
             (!c.y.log || s.y[i] > 0);
    };
    switch (s.mark) {
      case Mark::kLine: {
        bool pen = false;
        for (size_t i = 0; i < s.x.size(); ++i) {
          if (!ok(i)) {
            pen = false;
            continue;
          }
          if (pen)
            cairo_line_to(cr, px(s.x[i]), py(s.y[i]));
          else
            cairo_move_to(cr, px(s.x[i]), py(s.y[i]));
          pen = true;
        }
        cairo_stroke(cr);
        break;
      }
      case Mark::kPoints:
        for (size_t i = 0; i < s.x.size(); ++i)
          if (ok(i)) {
            cairo_arc(cr, px(s.x[i]), py(s.y[i]), std::max(1.0, s.width), 0, 2 * M_PI);
            cairo_fill(cr);
          }
        break;
      case Mark::kSegments:
        for (size_t i = 0; i < s.x.size(); ++i)
          if (ok(i) && std::isfinite(s.x_end[i])) {
            cairo_move_to(cr, px(s.x[i]), py(s.y[i]));
            cairo_line_to(cr, std::max(px(s.x_end[i]), px(s.x[i]) + 1), py(s.y[i]));
            cairo_stroke(cr);
          }
        break;
      case Mark::kBars: {
        // Slot width: one category, or the smallest gap between numeric x values.
        double slot = 1.0;
        if (c.x.categories.empty()) {
          slot = rx.hi - rx.lo;
          for (size_t i = 1; i < s.x.size(); ++i)
            if (s.x[i] != s.x[i - 1]) slot = std::min(slot, std::fabs(s.x[i] - s.x[i - 1]));
        }
        const double frac = s.width > 0 && s.width <= 1 ? s.width : 0.8;
        const double w = slot * frac / n_bars;
        for (size_t i = 0; i < s.x.size(); ++i) {
          if (!ok(i)) continue;
          const double x0 = s.x[i] - slot * frac / 2 + bar_index * w;
          const double xa = px(x0), xb = px(x0 + w);
          const double ya = py(s.y[i]), yb = py(base);
          cairo_rectangle(cr, xa, std::min(ya, yb), std::max(1.0, xb - xa - 1), std::fabs(yb - ya));
          cairo_fill(cr);
        }
        ++bar_index;
        break;
      }
    }
  }
  cairo_restore(cr);

  // Frame, labels, title.
  cairo_set_source_rgb(cr, 0, 0, 0);
  cairo_set_line_width(cr, 1.0);
  cairo_rectangle(cr, std::round(left) + 0.5, std::round(top) + 0.5, std::round(right - left),
                  std::round(bottom - top));
  cairo_stroke(cr);
  if (!c.x.label.empty()) text(cr, c.x.label, (left + right) / 2, c.height - 4, 0.5, 1.0);
  if (!c.y.label.empty()) text(cr, c.y.label, 4, (top + bottom) / 2, 0.5, 0.0, -M_PI / 2);
  if (!c.title.empty()) {
    cairo_save(cr);
    cairo_set_font_size(cr, fs * 1.15);
    text(cr, c.title, (left + right) / 2, 0.6 * fs, 0.5, 0.0);
    cairo_restore(cr);
  }

  // Legend (top right inside the plot area): a swatch and the label per named series.
  std::vector<size_t> named;
  double lw = 0;
  for (size_t k = 0; k < c.series.size(); ++k)
    if (!c.series[k].label.empty()) {
      named.push_back(k);
      cairo_text_extents_t e;
      cairo_text_extents(cr, c.series[k].label.c_str(), &e);
      lw = std::max(lw, e.x_advance);
    }
  if (!named.empty()) {
    const double row = 1.4 * fs, sw = 1.6 * fs;
    const double bw = lw + sw + 1.2 * fs, bh = row * static_cast<double>(named.size()) + 0.6 * fs;
    // The corner of the plot area that covers the fewest data points.
    double bx = right - bw - 6, by = top + 6;
    size_t best = std::numeric_limits<size_t>::max();
    for (int corner = 0; corner < 4; ++corner) {
      const double cx = corner % 2 ? left + 6 : right - bw - 6;
      const double cy = corner < 2 ? top + 6 : bottom - bh - 6;
      size_t covered = 0;
      for (const Series& s : c.series)
        for (size_t i = 0; i < s.x.size(); ++i) {
          if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) continue;
          const double x = px(s.x[i]), y = py(s.y[i]);
          // A segment is covered where any of its span is (not only its start).
          const double x1 =
              s.mark == Mark::kSegments && std::isfinite(s.x_end[i]) ? px(s.x_end[i]) : x;
          covered += std::max(x, x1) >= cx && std::min(x, x1) <= cx + bw && y >= cy && y <= cy + bh;
        }
      if (covered < best) best = covered, bx = cx, by = cy;
    }
    cairo_rectangle(cr, bx, by, bw, bh);
    cairo_set_source_rgba(cr, 1, 1, 1, 0.85);
    cairo_fill_preserve(cr);
    cairo_set_source_rgb(cr, 0.6, 0.6, 0.6);
    cairo_stroke(cr);
    for (size_t r = 0; r < named.size(); ++r) {
      const Series& s = c.series[named[r]];
      const double cy = by + 0.3 * fs + row * (static_cast<double>(r) + 0.5);
      set_rgb(cr, palette(s.color >= 0 ? s.color : static_cast<int>(named[r])));
      if (s.mark == Mark::kPoints) {
        cairo_arc(cr, bx + 0.4 * fs + sw / 2, cy, std::max(2.0, s.width), 0, 2 * M_PI);
        cairo_fill(cr);
      } else if (s.mark == Mark::kBars) {
        cairo_rectangle(cr, bx + 0.4 * fs, cy - 0.35 * fs, sw, 0.7 * fs);
        cairo_fill(cr);
      } else {
        cairo_set_line_width(cr, std::max(2.0, s.width));
        cairo_move_to(cr, bx + 0.4 * fs, cy), cairo_line_to(cr, bx + 0.4 * fs + sw, cy);
        cairo_stroke(cr);
      }
      cairo_set_source_rgb(cr, 0, 0, 0);
      text(cr, s.label, bx + 0.8 * fs + sw, cy, 0.0, 0.5);
    }
  }

  cairo_surface_flush(surf.get());
  Image img = make_image(c.width, c.height, 3, 255);
  const unsigned char* data = cairo_image_surface_get_data(surf.get());
  const int stride = cairo_image_surface_get_stride(surf.get());
  for (int y = 0; y < c.height; ++y) {
    const auto* src = reinterpret_cast<const uint32_t*>(data + static_cast<ptrdiff_t>(y) * stride);
    uint8_t* dst = img.row(y);
    for (int x = 0; x < c.width; ++x) {
      const uint32_t p = src[x];  // RGB24: 0x00RRGGBB in native endianness
      dst[3 * x] = static_cast<uint8_t>(p >> 16);
      dst[3 * x + 1] = static_cast<uint8_t>(p >> 8);
      dst[3 * x + 2] = static_cast<uint8_t>(p);
    }
  }
  return img;
}

}  // namespace vla::plot

// Ground-truth scene captions (English / Korean) and the loss-curve plot.
#include <algorithm>
#include <cmath>

#include "train/train.h"

namespace vla::train {

namespace {

// Coarse grid over the port area (x in +-65 mm, y in +-45 mm; y points away from the front).
std::string where_en(double x, double y) {
  std::string h = x < -0.022 ? "left" : x > 0.022 ? "right" : "";
  std::string v = y < -0.015 ? "front" : y > 0.015 ? "back" : "";
  if (h.empty() && v.empty()) return "center";
  if (h.empty()) return v + " center";
  if (v.empty()) return h;
  return v + " " + h;
}

std::string where_ko(double x, double y) {
  std::string h = x < -0.022 ? "왼쪽" : x > 0.022 ? "오른쪽" : "";
  std::string v = y < -0.015 ? "앞쪽" : y > 0.015 ? "뒤쪽" : "";
  if (h.empty() && v.empty()) return "가운데";
  if (h.empty()) return v + " 가운데";
  if (v.empty()) return h;
  return v + " " + h;
}

}  // namespace

const std::string& caption_prompt(const std::string& lang) {
  static const std::string en = "Describe the ports and the needle.";
  static const std::string ko = "포트와 바늘을 설명하세요.";
  VLA_CHECK(lang == "en" || lang == "ko", "caption language must be en or ko, got '", lang, "'");
  return lang == "en" ? en : ko;
}

std::string scene_caption(const dataset::Episode& ep, int tick, const std::string& lang) {
  VLA_CHECK(lang == "en" || lang == "ko", "caption language must be en or ko, got '", lang, "'");
  VLA_CHECK(!ep.ports.empty(), "episode ", ep.name, ": no ports in meta.json");
  std::vector<size_t> order(ep.ports.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return ep.ports[a].pos[0] < ep.ports[b].pos[0]; });
  std::string out;
  for (size_t k : order) {
    const auto& p = ep.ports[k];
    if (lang == "en")
      out += str_cat("the ", p.color, " port is at the ", where_en(p.pos[0], p.pos[1]), ". ");
    else
      out += str_cat(p.color_ko, " 포트는 ", where_ko(p.pos[0], p.pos[1]), "에 있습니다. ");
  }
  // Needle: the stage position at the tick, described by the nearest port (x/y distance).
  if (ep.proprio.defined() && ep.proprio.size(0) > 0) {
    int64_t a = std::min<int64_t>(8LL * tick, ep.proprio.size(0) - 1);
    double nx = ep.proprio[a][0].item<double>(), ny = ep.proprio[a][1].item<double>();
    size_t best = 0;
    double bd = 1e9;
    for (size_t k = 0; k < ep.ports.size(); ++k) {
      double d = std::hypot(nx - ep.ports[k].pos[0], ny - ep.ports[k].pos[1]);
      if (d < bd) bd = d, best = k;
    }
    const auto& p = ep.ports[best];
    if (lang == "en")
      out += bd < 0.01 ? str_cat("the needle is above the ", p.color, " port.")
                       : str_cat("the needle is near the ", where_en(nx, ny), ".");
    else
      out += bd < 0.01 ? str_cat("바늘이 ", p.color_ko, " 포트 위에 있습니다.")
                       : str_cat("바늘이 ", where_ko(nx, ny), " 근처에 있습니다.");
  }
  return out;
}

// ---------------------------------------------------------------- plot
namespace {

// 3x5 bitmap glyphs for axis labels.
const char* glyph(char c) {
  switch (c) {
    case '0':
      return "111101101101111";
    case '1':
      return "010110010010111";
    case '2':
      return "111001111100111";
    case '3':
      return "111001111001111";
    case '4':
      return "101101111001001";
    case '5':
      return "111100111001111";
    case '6':
      return "111100111101111";
    case '7':
      return "111001001001001";
    case '8':
      return "111101111101111";
    case '9':
      return "111101111001111";
    case '.':
      return "000000000000010";
    case '-':
      return "000000111000000";
    case 'e':
      return "000111101110011";
    default:
      return "000000000000000";
  }
}

void put(Image& im, int x, int y, std::array<uint8_t, 3> c) {
  if (x < 0 || y < 0 || x >= im.width || y >= im.height) return;
  uint8_t* p = im.row(y) + x * 3;
  p[0] = c[0], p[1] = c[1], p[2] = c[2];
}

void text(Image& im, int x, int y, const std::string& s, int scale = 2) {
  for (char ch : s) {
    const char* g = glyph(ch);
    for (int r = 0; r < 5; ++r)
      for (int q = 0; q < 3; ++q)
        if (g[r * 3 + q] == '1')
          for (int a = 0; a < scale; ++a)
            for (int b = 0; b < scale; ++b)
              put(im, x + q * scale + a, y + r * scale + b, {0, 0, 0});
    x += 4 * scale;
  }
}

void line(Image& im, int x0, int y0, int x1, int y1, std::array<uint8_t, 3> c) {
  int dx = std::abs(x1 - x0), dy = -std::abs(y1 - y0), sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1,
      err = dx + dy;
  while (true) {
    put(im, x0, y0, c);
    put(im, x0, y0 + 1, c);
    if (x0 == x1 && y0 == y1) break;
    int e2 = 2 * err;
    if (e2 >= dy) err += dy, x0 += sx;
    if (e2 <= dx) err += dx, y0 += sy;
  }
}

std::string label(double v) {
  char buf[32];
  if (std::fabs(v) >= 1e4 || (std::fabs(v) < 1e-2 && v != 0))
    std::snprintf(buf, sizeof(buf), "%.1e", v);
  else
    std::snprintf(buf, sizeof(buf), "%.3g", v);
  return buf;
}

}  // namespace

Image plot_loss_curve(const std::vector<double>& steps, const std::vector<double>& losses,
                      int width, int height) {
  VLA_CHECK(steps.size() == losses.size(), "plot_loss_curve: size mismatch");
  Image im = make_image(width, height, 3, 255);
  const int l = 70, r = width - 20, t = 20, b = height - 40;
  line(im, l, t, l, b, {0, 0, 0});
  line(im, l, b, r, b, {0, 0, 0});
  if (steps.empty()) return im;
  double lo = 1e300, hi = -1e300;
  for (double v : losses)
    if (std::isfinite(v)) lo = std::min(lo, v), hi = std::max(hi, v);
  if (!(hi >= lo)) return im;
  const bool logy = lo > 0 && hi / lo > 10.0;
  auto fy = [&](double v) { return logy ? std::log10(v) : v; };
  double ylo = fy(lo), yhi = fy(hi);
  if (yhi - ylo < 1e-12) yhi = ylo + 1;
  double x0 = steps.front(), x1 = std::max(steps.back(), x0 + 1);
  auto px = [&](double s) { return l + static_cast<int>((s - x0) / (x1 - x0) * (r - l)); };
  auto py = [&](double v) { return b - static_cast<int>((fy(v) - ylo) / (yhi - ylo) * (b - t)); };
  for (int k = 0; k <= 4; ++k) {  // ticks + labels
    int y = b - k * (b - t) / 4;
    line(im, l - 5, y, l, y, {0, 0, 0});
    double v = ylo + k * (yhi - ylo) / 4;
    text(im, 4, y - 5, label(logy ? std::pow(10.0, v) : v));
    int x = l + k * (r - l) / 4;
    line(im, x, b, x, b + 5, {0, 0, 0});
    text(im, x - 12, b + 10, label(x0 + k * (x1 - x0) / 4));
  }
  int lx = -1, ly = -1;
  for (size_t i = 0; i < steps.size(); ++i) {
    if (!std::isfinite(losses[i])) continue;
    int x = px(steps[i]), y = py(losses[i]);
    if (lx >= 0) line(im, lx, ly, x, y, {30, 90, 200});
    lx = x, ly = y;
  }
  return im;
}

}  // namespace vla::train

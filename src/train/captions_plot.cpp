// Ground-truth scene captions (English / Korean) and the loss-curve chart.
#include <algorithm>
#include <cmath>

#include "plot/plot.h"
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
Image plot_loss_curve(const std::vector<double>& steps, const std::vector<double>& losses,
                      int width, int height) {
  VLA_CHECK(steps.size() == losses.size(), "plot_loss_curve: size mismatch");
  double lo = std::numeric_limits<double>::infinity(), hi = 0;
  for (double v : losses)
    if (std::isfinite(v) && v > 0) lo = std::min(lo, v), hi = std::max(hi, v);
  plot::Chart c;
  c.title = "Training loss";
  c.x.label = "optimizer step";
  c.y.log = hi > 10 * lo;  // log scale when the loss spans more than a decade
  c.y.label = c.y.log ? "loss (log scale)" : "loss";
  c.width = width, c.height = height;
  c.series.push_back(
      {"training loss (mean per logging interval)", plot::Mark::kLine, steps, losses});
  return plot::render(c);
}

}  // namespace vla::train

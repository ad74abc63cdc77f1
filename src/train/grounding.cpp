// Grounding through language: location tokens (PaliGemma / Kosmos-2 style) naming where the
// instructed port is, and the linear localisation probe on the VL features the expert receives.
#include <algorithm>
#include <cmath>

#include "train/train.h"

namespace vla::train {

std::optional<LocationGrid> LocationGrid::find(const policy::VlmEncoder& vlm) {
  std::vector<int64_t> a, b;
  try {
    a = vlm.token_ids(cell_token(0));
    b = vlm.token_ids(cell_token(kCells - 1));
  } catch (const Error&) {
    return std::nullopt;
  }
  if (a.size() != 1 || b.size() != 1) return std::nullopt;
  VLA_CHECK(b[0] - a[0] == kCells - 1 && b[0] < vlm.vocab_size(),
            "VLM tokenizer: location tokens <loc_0000>..", cell_token(kCells - 1),
            " must be consecutive ids inside the vocabulary (got ", a[0], "..", b[0], ", vocab ",
            vlm.vocab_size(), "); rebuild the folder with scripts/make_vlm_init.py");
  LocationGrid g;
  g.first_id = a[0];
  return g;
}

std::string LocationGrid::cell_token(int cell) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "<loc_%04d>", cell);
  return buf;
}

int LocationGrid::cell(double x, double y) {
  const int ix = std::clamp(static_cast<int>(std::lround((x - kX0) / kCell)), 0, kNx - 1);
  const int iy = std::clamp(static_cast<int>(std::lround((y - kY0) / kCell)), 0, kNy - 1);
  return iy * kNx + ix;
}

std::array<double, 2> LocationGrid::centre(int cell) {
  VLA_CHECK(cell >= 0 && cell < kCells, "location cell ", cell, " out of range 0..", kCells - 1);
  return {kX0 + kCell * (cell % kNx), kY0 + kCell * (cell / kNx)};
}

std::string LocationGrid::token(double x, double y) const { return cell_token(cell(x, y)); }

torch::Tensor LocationGrid::soft_target(double x, double y, int64_t vocab, double sigma) const {
  VLA_CHECK(sigma > 0, "location target: sigma must be > 0");
  VLA_CHECK(first_id + kCells <= vocab, "location target: vocabulary ", vocab, " too small");
  auto ix = torch::arange(kNx, torch::kFloat64) * kCell + kX0;
  auto iy = torch::arange(kNy, torch::kFloat64) * kCell + kY0;
  auto w = torch::exp(-(iy.sub(y).pow(2).unsqueeze(1) + ix.sub(x).pow(2).unsqueeze(0)) /
                      (2 * sigma * sigma))
               .flatten();
  auto out = torch::zeros({vocab}, torch::kFloat32);
  out.narrow(0, first_id, kCells).copy_((w / w.sum()).to(torch::kFloat32));
  return out;
}

std::optional<std::array<double, 2>> LocationGrid::parse(const std::string& text) {
  const auto p = text.find("<loc_");
  if (p == std::string::npos || p + 10 > text.size() || text[p + 9] != '>') return std::nullopt;
  int cell = 0;
  for (size_t i = p + 5; i < p + 9; ++i) {
    if (text[i] < '0' || text[i] > '9') return std::nullopt;
    cell = cell * 10 + (text[i] - '0');
  }
  if (cell >= kCells) return std::nullopt;
  return centre(cell);
}

bool is_korean(const std::string& text) {
  return std::any_of(text.begin(), text.end(), [](char c) { return (c & 0x80) != 0; });
}

std::string grounding_caption(const dataset::Episode& ep, int tick, const LocationGrid& grid) {
  VLA_CHECK(ep.target >= 0 && ep.target < static_cast<int>(ep.ports.size()), "episode ", ep.name,
            ": target port ", ep.target, " but ", ep.ports.size(), " ports");
  const auto& p = ep.ports[ep.target].pos;
  return grid.token(p[0], p[1]) + " " +
         scene_caption(ep, tick, is_korean(ep.instruction) ? "ko" : "en");
}

// ---------------------------------------------------------------- probe
torch::Tensor dense_grounding_target(const dataset::Episode& ep, int view, int grid_h, int grid_w,
                                     const std::vector<std::string>& colours) {
  VLA_CHECK(grid_h > 0 && grid_w > 0, "dense grounding: bad token grid ", grid_h, "x", grid_w);
  VLA_CHECK(ep.width > 0 && ep.height > 0, "episode ", ep.name, ": no image size");
  auto g = torch::zeros({grid_h * grid_w, 1 + static_cast<int64_t>(colours.size())});
  auto acc = g.accessor<float, 2>();
  for (size_t k = 0; k < ep.ports.size(); ++k) {
    const auto& p = ep.ports[k];
    VLA_CHECK(static_cast<int>(p.pixels.size()) > view, "episode ", ep.name,
              ": port has no pixel label for view ", view,
              " (recorded before labels existed; run `vla datagen` again)");
    const auto [u, v] = p.pixels[view];
    if (u < 0 || v < 0) continue;  // behind the camera
    // Token coordinates of the pixel (token centres at integers), clamped to the grid.
    const double tx = std::clamp(u / ep.width * grid_w - 0.5, 0.0, grid_w - 1.0);
    const double ty = std::clamp(v / ep.height * grid_h - 0.5, 0.0, grid_h - 1.0);
    const int x0 = std::min(static_cast<int>(tx), grid_w - 1),
              y0 = std::min(static_cast<int>(ty), grid_h - 1);
    const int x1 = std::min(x0 + 1, grid_w - 1), y1 = std::min(y0 + 1, grid_h - 1);
    const double fx = tx - x0, fy = ty - y0;
    std::vector<int> channels;
    if (static_cast<int>(k) == ep.target) channels.push_back(0);
    for (size_t c = 0; c < colours.size(); ++c)
      if (colours[c] == p.color) channels.push_back(1 + static_cast<int>(c));
    for (int ch : channels) {
      acc[y0 * grid_w + x0][ch] += static_cast<float>((1 - fx) * (1 - fy));
      acc[y0 * grid_w + x1][ch] += static_cast<float>(fx * (1 - fy));
      acc[y1 * grid_w + x0][ch] += static_cast<float>((1 - fx) * fy);
      acc[y1 * grid_w + x1][ch] += static_cast<float>(fx * fy);
    }
  }
  return g;
}

ProbeReport localisation_probe(policy::VlmEncoder& vlm, const dataset::Dataset& ds,
                               int max_episodes, double holdout, double ridge, bool progress) {
  const size_t n =
      max_episodes > 0 ? std::min(ds.size(), static_cast<size_t>(max_episodes)) : ds.size();
  VLA_CHECK(n >= 8, "localisation probe: needs >= 8 episodes, the dataset has ", n);
  std::vector<torch::Tensor> feats;
  std::vector<double> xy;
  ProgressBar bar("probe features", static_cast<int64_t>(n));
  constexpr size_t kChunk = 64;  // layouts per padded VLM forward
  for (size_t i0 = 0; i0 < n; i0 += kChunk) {
    std::vector<dataset::Episode> eps;
    std::vector<const std::vector<Image>*> views;
    std::vector<std::string> instructions;
    for (size_t i = i0; i < std::min(n, i0 + kChunk); ++i) {
      eps.push_back(ds.load(i, true));
      const auto& ep = eps.back();
      VLA_CHECK(!ep.frames.empty(), "episode ", ep.name, " has no frames");
      VLA_CHECK(ep.target >= 0 && ep.target < static_cast<int>(ep.ports.size()), "episode ",
                ep.name, ": bad target port");
      xy.push_back(ep.ports[ep.target].pos[0]);
      xy.push_back(ep.ports[ep.target].pos[1]);
    }
    for (const auto& ep : eps) {
      views.push_back(&ep.frames[0]);
      instructions.push_back(ep.instruction);
    }
    feats.push_back(vlm.encode_batch(views, instructions).flatten(1).to(torch::kFloat64));
    if (progress) bar.tick(static_cast<int64_t>(eps.size()));
  }
  if (progress) bar.finish();
  std::vector<size_t> tr, ho;
  split_episodes(n, holdout, &tr, &ho);
  VLA_CHECK(!ho.empty() && tr.size() >= 4, "localisation probe: empty train or held-out split");
  auto X = torch::cat(feats, 0);
  auto Y = torch::tensor(xy, torch::kFloat64).view({-1, 2});
  auto idx = [](const std::vector<size_t>& v) {
    std::vector<int64_t> o(v.begin(), v.end());
    return torch::tensor(o, torch::kInt64);
  };
  auto Xt = X.index_select(0, idx(tr)), Yt = Y.index_select(0, idx(tr));
  auto Xh = X.index_select(0, idx(ho)), Yh = Y.index_select(0, idx(ho));
  // Ridge regression on standardised features (float64): with centred targets the bias is the
  // target mean, and one thin SVD A = U S V^T gives W(lambda) = V diag(s / (s^2 + lambda)) U^T Y
  // for every penalty (cheap also when features outnumber layouts).
  struct Fit {
    torch::Tensor mu, sd, ym, W;
    torch::Tensor predict(const torch::Tensor& x) const { return ((x - mu) / sd).mm(W) + ym; }
  };
  auto fits = [](const torch::Tensor& x, const torch::Tensor& y,
                 const std::vector<double>& lambdas) {
    auto mu = x.mean(0), sd = x.std(0).clamp_min(1e-8), ym = y.mean(0);
    auto usv = torch::linalg_svd((x - mu) / sd, /*full_matrices=*/false);
    auto U = std::get<0>(usv), S = std::get<1>(usv), Vh = std::get<2>(usv);
    auto uty = U.t().mm(y - ym);
    std::vector<Fit> out;
    for (double l : lambdas)
      out.push_back({mu, sd, ym, Vh.t().mm((S / (S * S + l)).unsqueeze(1) * uty)});
    return out;
  };
  auto mm_error = [](const torch::Tensor& pred, const torch::Tensor& y) {
    auto e = (pred - y) * 1000.0;  // mm
    return std::array<double, 3>{e.norm(2, 1).mean().item<double>(),
                                 e.select(1, 0).abs().mean().item<double>(),
                                 e.select(1, 1).abs().mean().item<double>()};
  };
  double lambda = ridge;
  if (lambda <= 0) {
    const std::vector<double> grid = {1e-2, 1e-1, 1, 10, 1e2, 1e3, 1e4, 1e5};
    const int64_t nv = std::max<int64_t>(1, Xt.size(0) / 5), nf = Xt.size(0) - nv;
    VLA_CHECK(nf >= 2, "localisation probe: too few training layouts to choose the penalty");
    auto f = fits(Xt.narrow(0, 0, nf), Yt.narrow(0, 0, nf), grid);
    double best = 1e300;
    for (size_t k = 0; k < grid.size(); ++k) {
      const double e = mm_error(f[k].predict(Xt.narrow(0, nf, nv)), Yt.narrow(0, nf, nv))[0];
      if (e < best) best = e, lambda = grid[k];
    }
  }
  const Fit fit = fits(Xt, Yt, {lambda})[0];
  auto err = [&](const torch::Tensor& x, const torch::Tensor& y) {
    return mm_error(fit.predict(x), y);
  };
  ProbeReport r;
  r.train_layouts = static_cast<int>(tr.size());
  r.heldout_layouts = static_cast<int>(ho.size());
  r.feature_dim = static_cast<int>(X.size(1));
  r.ridge = lambda;
  const auto et = err(Xt, Yt), eh = err(Xh, Yh);
  r.train_error_mm = et[0];
  r.heldout_error_mm = eh[0];
  r.heldout_x_mm = eh[1];
  r.heldout_y_mm = eh[2];
  // Baseline: always predict the training mean (what "no localisation" scores).
  r.baseline_mm = ((Yh - Yt.mean(0)) * 1000.0).norm(2, 1).mean().item<double>();
  return r;
}

nlohmann::json ProbeReport::to_json() const {
  return {{"train_layouts", train_layouts},
          {"heldout_layouts", heldout_layouts},
          {"feature_dim", feature_dim},
          {"train_error_mm", train_error_mm},
          {"heldout_error_mm", heldout_error_mm},
          {"heldout_x_mm", heldout_x_mm},
          {"heldout_y_mm", heldout_y_mm},
          {"mean_predictor_mm", baseline_mm},
          {"ridge", ridge}};
}

}  // namespace vla::train

// Qwen2-VL image preprocessing: smart_resize, exact uint8 antialiased bicubic resize (torch and
// Pillow flavours), rescale + normalise, temporal duplication and patch flattening.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>

#include "vision/vision.h"

namespace vla {

namespace {

// Keys cubic convolution with a = -0.5, as torch's aa bicubic filter writes it.
double cubic_torch(double x) {
  const double a = -0.5;
  x = std::abs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
  if (x < 2.0) return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a;
  return 0.0;
}

// The same filter as Pillow writes it (different rounding of the second branch).
double cubic_pillow(double x) {
  const double a = -0.5;
  x = std::abs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
  if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
  return 0.0;
}

int32_t round_away(double v) {
  return v < 0 ? static_cast<int32_t>(-0.5 + v) : static_cast<int32_t>(0.5 + v);
}

}  // namespace

ResizeFilter resize_filter(int64_t in_size, int64_t out_size, ResizeBackend backend) {
  VLA_CHECK(in_size > 0 && out_size > 0, "resize: bad sizes ", in_size, " -> ", out_size);
  const double scale = static_cast<double>(in_size) / static_cast<double>(out_size);
  const double support = scale >= 1.0 ? 2.0 * scale : 2.0;
  const double invscale = scale >= 1.0 ? 1.0 / scale : 1.0;
  ResizeFilter w;
  w.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  w.xmin.resize(out_size);
  w.xsize.resize(out_size);
  std::vector<double> wd(static_cast<size_t>(out_size) * w.ksize, 0.0);
  double wt_max = 0.0;
  for (int64_t i = 0; i < out_size; ++i) {
    const double center = scale * (static_cast<double>(i) + 0.5);
    int64_t xmin = std::max(static_cast<int64_t>(center - support + 0.5), int64_t{0});
    int64_t xsize = std::min(static_cast<int64_t>(center + support + 0.5), in_size) - xmin;
    xsize = std::clamp<int64_t>(xsize, 0, w.ksize);
    double* row = wd.data() + i * w.ksize;
    double total = 0.0;
    for (int64_t j = 0; j < xsize; ++j) {
      const double arg = (static_cast<double>(j + xmin) - center + 0.5) * invscale;
      row[j] = backend == ResizeBackend::kTorchvision ? cubic_torch(arg) : cubic_pillow(arg);
      total += row[j];
    }
    if (total != 0.0) {
      for (int64_t j = 0; j < xsize; ++j) {
        row[j] /= total;
        wt_max = std::max(wt_max, row[j]);
      }
    }
    w.xmin[i] = xmin;
    w.xsize[i] = xsize;
  }
  if (backend == ResizeBackend::kTorchvision) {
    // torch: the largest precision whose scaled maximum weight still fits int16.
    int p = 0;
    for (p = 0; p < 22; ++p) {
      const int next = static_cast<int>(0.5 + wt_max * static_cast<double>(1 << (p + 1)));
      if (next >= (1 << 15)) break;
    }
    w.precision = p;
  } else {
    w.precision = 22;  // Pillow's PRECISION_BITS for 8-bit images
  }
  w.k.resize(wd.size());
  const double mult = static_cast<double>(1 << w.precision);
  for (size_t i = 0; i < wd.size(); ++i) w.k[i] = round_away(wd[i] * mult);
  return w;
}

namespace {

inline uint8_t clamp_shift(int32_t ss, int precision) {
  const int32_t v = ss >> precision;  // arithmetic shift, as both implementations do
  return static_cast<uint8_t>(std::clamp<int32_t>(v, 0, 255));
}

Image resample_horizontal(const Image& src, int out_w, const ResizeFilter& w) {
  Image dst = make_image(out_w, src.height, src.channels);
  const int C = src.channels;
  const int32_t init = 1 << (w.precision - 1);
  for (int y = 0; y < src.height; ++y) {
    const uint8_t* in = src.row(y);
    uint8_t* out = dst.row(y);
    for (int x = 0; x < out_w; ++x) {
      const int32_t* k = w.k.data() + static_cast<size_t>(x) * w.ksize;
      const uint8_t* base = in + w.xmin[x] * C;
      for (int c = 0; c < C; ++c) {
        int32_t ss = init;
        for (int64_t j = 0; j < w.xsize[x]; ++j) ss += static_cast<int32_t>(base[j * C + c]) * k[j];
        out[x * C + c] = clamp_shift(ss, w.precision);
      }
    }
  }
  return dst;
}

Image resample_vertical(const Image& src, int out_h, const ResizeFilter& w) {
  Image dst = make_image(src.width, out_h, src.channels);
  const int rowlen = src.width * src.channels;
  const int32_t init = 1 << (w.precision - 1);
  std::vector<int32_t> acc(rowlen);
  for (int y = 0; y < out_h; ++y) {
    std::fill(acc.begin(), acc.end(), init);
    const int32_t* k = w.k.data() + static_cast<size_t>(y) * w.ksize;
    for (int64_t j = 0; j < w.xsize[y]; ++j) {
      const uint8_t* in = src.row(static_cast<int>(w.xmin[y] + j));
      const int32_t kj = k[j];
      for (int i = 0; i < rowlen; ++i) acc[i] += static_cast<int32_t>(in[i]) * kj;
    }
    uint8_t* out = dst.row(y);
    for (int i = 0; i < rowlen; ++i) out[i] = clamp_shift(acc[i], w.precision);
  }
  return dst;
}

int64_t json_int(const nlohmann::json& j, const char* key, int64_t def, const std::string& where) {
  if (!j.contains(key) || j[key].is_null()) return def;
  VLA_CHECK(j[key].is_number_integer(), where, ": field '", key, "' must be an integer, got ",
            j[key].dump());
  return j[key].get<int64_t>();
}

}  // namespace

// ---------------------------------------------------------------- config

void ImagePreprocessConfig::validate() const {
  VLA_CHECK(patch_size > 0 && temporal_patch_size > 0 && merge_size > 0,
            "image processor: patch_size, temporal_patch_size and merge_size must be positive");
  VLA_CHECK(min_pixels > 0 && max_pixels >= min_pixels, "image processor: need 0 < min_pixels (",
            min_pixels, ") <= max_pixels (", max_pixels, ")");
  for (int c = 0; c < 3; ++c)
    VLA_CHECK(image_std[c] > 0, "image processor: image_std must be positive");
  VLA_CHECK(rescale_factor > 0, "image processor: rescale_factor must be positive");
}

ImagePreprocessConfig ImagePreprocessConfig::from_json(const nlohmann::json& j,
                                                       const std::string& where) {
  VLA_CHECK(j.is_object(), where, ": image processor config must be a JSON object");
  ImagePreprocessConfig c;
  if (j.contains("size") && j["size"].is_object()) {
    const auto& s = j["size"];
    c.min_pixels = json_int(s, "shortest_edge", c.min_pixels, where + " size");
    c.max_pixels = json_int(s, "longest_edge", c.max_pixels, where + " size");
    c.min_pixels = json_int(s, "min_pixels", c.min_pixels, where + " size");
    c.max_pixels = json_int(s, "max_pixels", c.max_pixels, where + " size");
  }
  // transformers: explicit min_pixels / max_pixels override size (backward compatibility).
  c.min_pixels = json_int(j, "min_pixels", c.min_pixels, where);
  c.max_pixels = json_int(j, "max_pixels", c.max_pixels, where);
  c.patch_size = static_cast<int>(json_int(j, "patch_size", c.patch_size, where));
  c.temporal_patch_size =
      static_cast<int>(json_int(j, "temporal_patch_size", c.temporal_patch_size, where));
  c.merge_size = static_cast<int>(json_int(j, "merge_size", c.merge_size, where));
  auto get_bool = [&](const char* key, bool def) {
    if (!j.contains(key) || j[key].is_null()) return def;
    VLA_CHECK(j[key].is_boolean(), where, ": field '", key, "' must be a boolean");
    return j[key].get<bool>();
  };
  c.do_resize = get_bool("do_resize", c.do_resize);
  c.do_rescale = get_bool("do_rescale", c.do_rescale);
  c.do_normalize = get_bool("do_normalize", c.do_normalize);
  if (j.contains("rescale_factor") && !j["rescale_factor"].is_null()) {
    VLA_CHECK(j["rescale_factor"].is_number(), where, ": rescale_factor must be a number");
    c.rescale_factor = j["rescale_factor"].get<double>();
  }
  auto get3 = [&](const char* key, std::array<double, 3>& dst) {
    if (!j.contains(key) || j[key].is_null()) return;
    const auto& v = j[key];
    if (v.is_number()) {
      dst.fill(v.get<double>());
      return;
    }
    VLA_CHECK(v.is_array() && v.size() == 3, where, ": field '", key,
              "' must be a number or a list of 3 numbers, got ", v.dump());
    for (int i = 0; i < 3; ++i) dst[i] = v[i].get<double>();
  };
  get3("image_mean", c.image_mean);
  get3("image_std", c.image_std);
  if (j.contains("resample") && j["resample"].is_number_integer()) {
    const int r = j["resample"].get<int>();
    if (r != 3) log_warn(where, ": resample=", r, " is not bicubic (3); using bicubic anyway");
  }
  if (j.contains("image_processor_type") && j["image_processor_type"].is_string()) {
    const auto t = j["image_processor_type"].get<std::string>();
    if (t.find("Pil") != std::string::npos) c.backend = ResizeBackend::kPillow;
  }
  c.validate();
  return c;
}

ImagePreprocessConfig ImagePreprocessConfig::from_folder(const std::string& dir) {
  const std::string p5 = dir + "/processor_config.json";
  const std::string p4 = dir + "/preprocessor_config.json";
  if (file_exists(p5)) {
    auto j = read_json(p5);
    if (j.contains("image_processor")) return from_json(j["image_processor"], p5);
  }
  if (file_exists(p4)) return from_json(read_json(p4), p4);
  log_warn("no processor_config.json / preprocessor_config.json in ", dir,
           "; using Qwen2-VL image processor defaults");
  return ImagePreprocessConfig{};
}

// ---------------------------------------------------------------- resize

std::pair<int, int> smart_resize(int height, int width, int factor, int64_t min_pixels,
                                 int64_t max_pixels) {
  VLA_CHECK(height > 0 && width > 0, "smart_resize: empty image (", height, "x", width, ")");
  VLA_CHECK(factor > 0, "smart_resize: factor must be positive");
  const double ratio =
      static_cast<double>(std::max(height, width)) / static_cast<double>(std::min(height, width));
  VLA_CHECK(ratio <= 200.0, "smart_resize: absolute aspect ratio must be at most 200, got ", ratio,
            " (", height, "x", width, ")");
  const double f = factor;
  // Python's round() rounds half to even, like nearbyint in the default rounding mode.
  int64_t h_bar = static_cast<int64_t>(std::nearbyint(height / f)) * factor;
  int64_t w_bar = static_cast<int64_t>(std::nearbyint(width / f)) * factor;
  if (h_bar * w_bar > max_pixels) {
    const double beta = std::sqrt(static_cast<double>(height) * width / max_pixels);
    h_bar = std::max<int64_t>(factor, static_cast<int64_t>(std::floor(height / beta / f)) * factor);
    w_bar = std::max<int64_t>(factor, static_cast<int64_t>(std::floor(width / beta / f)) * factor);
  } else if (h_bar * w_bar < min_pixels) {
    const double beta =
        std::sqrt(static_cast<double>(min_pixels) / (static_cast<double>(height) * width));
    h_bar = static_cast<int64_t>(std::ceil(height * beta / f)) * factor;
    w_bar = static_cast<int64_t>(std::ceil(width * beta / f)) * factor;
  }
  return {static_cast<int>(h_bar), static_cast<int>(w_bar)};
}

Image resize_bicubic(const Image& src, int out_height, int out_width, ResizeBackend backend) {
  VLA_CHECK(!src.empty() && src.width > 0 && src.height > 0, "resize: empty image");
  VLA_CHECK(src.pixels.size() == static_cast<size_t>(src.width) * src.height * src.channels,
            "resize: image buffer size ", src.pixels.size(), " does not match ", src.width, "x",
            src.height, "x", src.channels);
  VLA_CHECK(out_height > 0 && out_width > 0, "resize: bad output size ", out_height, "x",
            out_width);
  const bool need_h = out_width != src.width;
  const bool need_v = out_height != src.height;
  if (!need_h && !need_v) return src;
  Image cur = src;
  if (need_h)
    cur = resample_horizontal(cur, out_width, resize_filter(src.width, out_width, backend));
  if (need_v)
    cur = resample_vertical(cur, out_height, resize_filter(src.height, out_height, backend));
  return cur;
}

Image to_rgb(const Image& src) {
  VLA_CHECK(!src.empty(), "image is empty");
  VLA_CHECK(src.channels >= 1 && src.channels <= 4, "image has ", src.channels,
            " channels; expected 1-4");
  VLA_CHECK(src.pixels.size() == static_cast<size_t>(src.width) * src.height * src.channels,
            "image buffer size does not match its shape");
  if (src.channels == 3) return src;
  Image dst = make_image(src.width, src.height, 3);
  const size_t n = static_cast<size_t>(src.width) * src.height;
  for (size_t i = 0; i < n; ++i) {
    const uint8_t* p = src.pixels.data() + i * src.channels;
    uint8_t* q = dst.pixels.data() + i * 3;
    const bool grey = src.channels <= 2;
    const int alpha = (src.channels == 2 || src.channels == 4) ? p[src.channels - 1] : 255;
    for (int c = 0; c < 3; ++c) {
      const int v = grey ? p[0] : p[c];
      // composite over white
      q[c] = static_cast<uint8_t>((v * alpha + 255 * (255 - alpha) + 127) / 255);
    }
  }
  return dst;
}

// ---------------------------------------------------------------- pipeline

std::vector<int64_t> PreprocessedImages::tokens_per_image(int merge_size) const {
  std::vector<int64_t> out;
  if (!grid_thw.defined()) return out;
  auto g = grid_thw.to(torch::kCPU).contiguous();
  const int64_t* d = g.data_ptr<int64_t>();
  const int64_t mm = static_cast<int64_t>(merge_size) * merge_size;
  for (int64_t i = 0; i < g.size(0); ++i)
    out.push_back(d[i * 3] * d[i * 3 + 1] * d[i * 3 + 2] / mm);
  return out;
}

Image resize_for_model(const Image& rgb, const ImagePreprocessConfig& cfg) {
  if (!cfg.do_resize) {
    VLA_CHECK(rgb.height % cfg.factor() == 0 && rgb.width % cfg.factor() == 0, "image ", rgb.height,
              "x", rgb.width, " must be a multiple of ", cfg.factor(), " when do_resize is false");
    return rgb;
  }
  auto [h, w] = smart_resize(rgb.height, rgb.width, cfg.factor(), cfg.min_pixels, cfg.max_pixels);
  return resize_bicubic(rgb, h, w, cfg.backend);
}

NormalizeConstants normalize_constants(const ImagePreprocessConfig& cfg) {
  const double s = cfg.do_rescale ? 1.0 / cfg.rescale_factor : 1.0;
  NormalizeConstants nc;
  for (size_t c = 0; c < 3; ++c) {
    nc.shift[c] = static_cast<float>(cfg.image_mean[c] * s);
    nc.divisor[c] = static_cast<float>(cfg.image_std[c] * s);
  }
  return nc;
}

torch::Tensor pixel_values_from_uint8(const torch::Tensor& nhwc, const ImagePreprocessConfig& cfg) {
  VLA_CHECK(nhwc.dim() == 4 && nhwc.size(3) == 3 && nhwc.scalar_type() == torch::kUInt8,
            "pixel_values_from_uint8: expected uint8 (N, H, W, 3), got ", nhwc.sizes(), " ",
            nhwc.scalar_type());
  const int64_t N = nhwc.size(0), H = nhwc.size(1), W = nhwc.size(2), C = 3;
  const int64_t p = cfg.patch_size, m = cfg.merge_size, tp = cfg.temporal_patch_size;
  VLA_CHECK(H % (p * m) == 0 && W % (p * m) == 0, "patchify: ", H, "x", W, " is not a multiple of ",
            p * m);
  auto x = nhwc.to(torch::kFloat32);
  // Float32 throughout, as HF's fused rescale + normalise.
  if (cfg.do_normalize) {  // in place: x is a fresh float copy
    const auto nc = normalize_constants(cfg);
    auto t = [&](const std::array<float, 3>& v) {
      return torch::tensor(std::vector<float>(v.begin(), v.end()), torch::kFloat32).to(x.device());
    };
    x.sub_(t(nc.shift)).div_(t(nc.divisor));
  } else if (cfg.do_rescale) {
    x.mul_(static_cast<float>(cfg.rescale_factor));
  }
  const int64_t gh = H / p, gw = W / p;
  // (N, H, W, C) -> (N, tp, C, gh/m, m, p, gw/m, m, p) -> (N, gh/m, gw/m, m, m, C, tp, p, p).
  x = x.permute({0, 3, 1, 2}).unsqueeze(1).expand({N, tp, C, H, W});
  x = x.reshape({N, tp, C, gh / m, m, p, gw / m, m, p}).permute({0, 3, 6, 4, 7, 2, 1, 5, 8});
  return x.reshape({N * gh * gw, C * tp * p * p}).contiguous();
}

namespace {
torch::Tensor grid_row(const Image& r, const ImagePreprocessConfig& cfg) {
  return torch::tensor({int64_t{1}, static_cast<int64_t>(r.height / cfg.patch_size),
                        static_cast<int64_t>(r.width / cfg.patch_size)},
                       torch::kInt64)
      .reshape({1, 3});
}
// Resized images (same size) -> uint8 (N, H, W, 3) on `device`, through pinned memory for CUDA.
torch::Tensor stack_uint8(const std::vector<Image>& rs, const torch::Device& device) {
  const int64_t H = rs[0].height, W = rs[0].width, N = static_cast<int64_t>(rs.size());
  auto opts = torch::TensorOptions().dtype(torch::kUInt8).pinned_memory(device.is_cuda());
  auto host = torch::empty({N, H, W, 3}, opts);
  const size_t bytes = static_cast<size_t>(H * W * 3);
  uint8_t* dst = host.data_ptr<uint8_t>();
  for (int64_t i = 0; i < N; ++i)
    std::memcpy(dst + static_cast<size_t>(i) * bytes, rs[static_cast<size_t>(i)].pixels.data(),
                bytes);
  return host.to(device, /*non_blocking=*/device.is_cuda());
}
}  // namespace

PreprocessedImages preprocess_image(const Image& image, const ImagePreprocessConfig& cfg) {
  return preprocess_images({image}, cfg);
}

PreprocessedImages preprocess_images(const std::vector<Image>& images,
                                     const ImagePreprocessConfig& cfg,
                                     const torch::Device& device) {
  VLA_CHECK(!images.empty(), "preprocess_images: no images given");
  cfg.validate();
  const size_t n = images.size();
  std::vector<Image> resized(n);
  std::vector<std::string> errors(n);
  // Images are independent: a training batch of hundreds resizes on all cores.
  at::parallel_for(0, static_cast<int64_t>(n), 8, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      try {
        resized[static_cast<size_t>(i)] =
            resize_for_model(to_rgb(images[static_cast<size_t>(i)]), cfg);
      } catch (const Error& e) {
        errors[static_cast<size_t>(i)] = e.what();
      }
    }
  });
  for (size_t i = 0; i < n; ++i) VLA_CHECK(errors[i].empty(), "image ", i, ": ", errors[i]);
  std::vector<torch::Tensor> grids;
  bool same_size = true;
  for (const auto& r : resized) {
    grids.push_back(grid_row(r, cfg));
    same_size = same_size && r.height == resized[0].height && r.width == resized[0].width;
  }
  torch::Tensor pv;
  if (same_size) {
    pv = pixel_values_from_uint8(stack_uint8(resized, device), cfg);
  } else {  // several sizes: one batch per image, concatenated in order
    std::vector<torch::Tensor> parts;
    for (const auto& r : resized)
      parts.push_back(pixel_values_from_uint8(stack_uint8({r}, device), cfg));
    pv = torch::cat(parts, 0);
  }
  return {pv, torch::cat(grids, 0)};
}

}  // namespace vla

// vla vision: image preprocessing identical to Hugging Face's Qwen2VLImageProcessor.
//
// transformers 5.x gives the torchvision backend by default (AutoProcessor /
// Qwen2VLImageProcessor): the uint8 image is resized with torch's uint8 antialiased bicubic
// kernel (separable, a = -0.5, int16 fixed-point weights whose precision is chosen per axis,
// horizontal pass first, uint8 rounding between passes), then rescale + normalise are fused as
// (x - mean/rescale) / (std/rescale) in float32. The PIL backend (Qwen2VLImageProcessorPil) uses
// Pillow's resampler (22-bit fixed point); both are implemented here, the torchvision one is the
// default. Patches are flattened to (N, C * temporal_patch * patch * patch) in HF's exact order
// (2x2 merge groups contiguous), with image_grid_thw = (t, h, w) in patches.
#pragma once

#include <torch/torch.h>

#include <array>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/core.h"

namespace vla {

enum class ResizeBackend {
  kTorchvision,  // transformers 5.x default (torch uint8 AA bicubic, int16 weights)
  kPillow,       // Pillow Image.resize(BICUBIC) (Qwen2VLImageProcessorPil, transformers 4.x slow)
};

struct ImagePreprocessConfig {
  int64_t min_pixels = 56 * 56;         // size.shortest_edge (5.x) / min_pixels (4.x)
  int64_t max_pixels = 28 * 28 * 1280;  // size.longest_edge (5.x) / max_pixels (4.x)
  int patch_size = 14;
  int temporal_patch_size = 2;
  int merge_size = 2;
  bool do_resize = true;
  bool do_rescale = true;
  double rescale_factor = 1.0 / 255.0;
  bool do_normalize = true;
  std::array<double, 3> image_mean = {0.48145466, 0.4578275, 0.40821073};  // OpenAI CLIP
  std::array<double, 3> image_std = {0.26862954, 0.26130258, 0.27577711};
  ResizeBackend backend = ResizeBackend::kTorchvision;

  int factor() const { return patch_size * merge_size; }
  // Reads processor_config.json ("image_processor" section, transformers 5.x) or
  // preprocessor_config.json (4.x) from a checkpoint folder; falls back to the defaults above
  // when neither exists. Validates the values (clear vla::Error naming file and field).
  static ImagePreprocessConfig from_folder(const std::string& dir);
  // Parses one image-processor JSON object (either layout).
  static ImagePreprocessConfig from_json(const nlohmann::json& j, const std::string& where);
  void validate() const;
};

// HF smart_resize: (height, width) rounded to multiples of `factor`, total pixels in
// [min_pixels, max_pixels], aspect ratio kept as closely as possible. Throws for images smaller
// than 10 px on a side or with aspect ratio above 200.
std::pair<int, int> smart_resize(int height, int width, int factor = 28,
                                 int64_t min_pixels = 56 * 56, int64_t max_pixels = 28 * 28 * 1280);

// Antialiased bicubic resize of a uint8 image (any channel count), bit-exact with
// torch.nn.functional.interpolate(uint8, mode="bicubic", antialias=True) on AVX2 CPUs
// (= torchvision v2 resize) or with Pillow's Image.resize(BICUBIC).
Image resize_bicubic(const Image& src, int out_height, int out_width,
                     ResizeBackend backend = ResizeBackend::kTorchvision);

// Fixed-point weights of one axis of resize_bicubic (torch's / Pillow's separable antialiased
// bicubic, a = -0.5, support scaled when downscaling): output i is
// (2^(precision-1) + sum_j in[xmin[i] + j] * k[i * ksize + j]) >> precision, j < xsize[i], clamped
// to [0, 255]. Exposed so that other executors (the GPU kernels in src/gpu) apply the very same
// weights. Source: ATen UpSampleKernel.cpp (_compute_indices_int16_weights_aa), Pillow Resample.c.
struct ResizeFilter {
  int ksize = 0;
  int precision = 0;
  std::vector<int64_t> xmin, xsize;  // [out_size]
  std::vector<int32_t> k;            // [out_size * ksize]
};
// Throws vla::Error for non-positive sizes.
ResizeFilter resize_filter(int64_t in_size, int64_t out_size,
                           ResizeBackend backend = ResizeBackend::kTorchvision);

// Converts grey (1 channel) / grey+alpha / RGBA images to RGB as HF's convert_to_rgb does
// (alpha composited over white); RGB passes through.
Image to_rgb(const Image& src);

struct PreprocessedImages {
  torch::Tensor pixel_values;  // float32 (sum_i t_i*h_i*w_i, C * tp * p * p)
  torch::Tensor grid_thw;      // int64 (num_images, 3): t, h, w in patches
  // Number of LLM tokens (merged patches) per image: t*h*w / merge^2.
  std::vector<int64_t> tokens_per_image(int merge_size = 2) const;
};

// Resized (but not yet normalised) uint8 image, exactly as the processor produces it.
Image resize_for_model(const Image& rgb, const ImagePreprocessConfig& cfg);
// Full pipeline for one image: (pixel_values (N, 1176), grid (t, h, w)).
PreprocessedImages preprocess_image(const Image& image, const ImagePreprocessConfig& cfg);
// Several images: pixel_values concatenated in order, grid_thw one row per image (on the CPU).
// Resizing runs on the CPU (all cores); rescale, normalise and patch flattening run on `device`:
// same-size images travel there as one uint8 batch (pinned host memory for CUDA: 8x fewer bytes
// than float32 pixel_values with temporal_patch_size 2), so a GPU trainer's host thread does not
// build the float tensor. Values are identical on every device (IEEE float32 subtract and divide).
// Throws vla::Error (naming the image) for empty or malformed images.
PreprocessedImages preprocess_images(const std::vector<Image>& images,
                                     const ImagePreprocessConfig& cfg,
                                     const torch::Device& device = torch::kCPU);

// transformers' fused rescale + normalise of a uint8 value x with do_normalize:
// pixel = (x - shift[c]) / divisor[c] in float32, shift = mean / rescale_factor and
// divisor = std / rescale_factor (mean and std alone without do_rescale).
struct NormalizeConstants {
  std::array<float, 3> shift{}, divisor{};
};
NormalizeConstants normalize_constants(const ImagePreprocessConfig& cfg);

// uint8 images (N, H, W, 3), already resized, on any device -> pixel_values (N*h*w, C*tp*p*p)
// float32 on the same device: transformers' Qwen2VLImageProcessor rescale + normalise (fused as
// (x - mean/rescale) / (std/rescale)) and patch order (image_processing_qwen2_vl.py, _preprocess),
// each frame repeated temporal_patch_size times. H and W must be multiples of patch * merge.
torch::Tensor pixel_values_from_uint8(const torch::Tensor& nhwc, const ImagePreprocessConfig& cfg);

}  // namespace vla

// Parity of the Qwen2-VL image preprocessing with transformers 5.17 (fixtures made by
// tests/fixtures/qwen25vl/make_fixtures.py on the GPU machine).
#include "vision/vision.h"

#include <gtest/gtest.h>
#include <torch/cuda.h>

#include "weights/weights.h"

namespace {

const std::string kFix = std::string(VLA_SOURCE_DIR) + "/tests/fixtures/qwen25vl";
const std::vector<std::string> kImages = {"img_a", "img_b", "img_c", "img_d", "img_e"};

vla::Image image_from_tensor(const torch::Tensor& hwc) {
  auto t = hwc.contiguous();
  vla::Image im = vla::make_image(static_cast<int>(t.size(1)), static_cast<int>(t.size(0)),
                                  static_cast<int>(t.size(2)));
  std::memcpy(im.pixels.data(), t.data_ptr<uint8_t>(), im.pixels.size());
  return im;
}

torch::Tensor image_to_tensor(const vla::Image& im) {
  return torch::from_blob(const_cast<uint8_t*>(im.pixels.data()),
                          {im.height, im.width, im.channels}, torch::kUInt8)
      .clone();
}

vla::ImagePreprocessConfig fixture_config() {
  return vla::ImagePreprocessConfig::from_folder(kFix + "/tiny_a");
}

}  // namespace

TEST(SmartResize, MatchesHfRules) {
  // Values from transformers' smart_resize (factor 28, min 3136, max 31360).
  EXPECT_EQ(vla::smart_resize(90, 120, 28, 3136, 31360), std::make_pair(84, 112));
  EXPECT_EQ(vla::smart_resize(300, 260, 28, 3136, 31360), std::make_pair(168, 140));
  EXPECT_EQ(vla::smart_resize(20, 24, 28, 3136, 31360), std::make_pair(56, 84));
  // Defaults (min 56*56, max 28*28*1280): 640x360 -> 644x364? h=round(360/28)=13*28=364.
  EXPECT_EQ(vla::smart_resize(360, 640), std::make_pair(364, 644));
  // Half-way rounds to even like Python's round(): 42/28 = 1.5 -> 2, 70/28 = 2.5 -> 2.
  EXPECT_EQ(vla::smart_resize(42, 70, 28, 1, 1 << 30), std::make_pair(56, 56));
  EXPECT_THROW(vla::smart_resize(0, 10), vla::Error);
  EXPECT_THROW(vla::smart_resize(10, 2500), vla::Error);  // aspect ratio 250 > 200
}

TEST(ImagePreprocessConfig, ReadsBothLayouts) {
  auto c5 = vla::ImagePreprocessConfig::from_folder(kFix + "/tiny_a");     // processor_config.json
  auto c4 = vla::ImagePreprocessConfig::from_folder(kFix + "/tiny_a_v4");  // preprocessor_config
  for (const auto& c : {c5, c4}) {
    EXPECT_EQ(c.min_pixels, 3136);
    EXPECT_EQ(c.max_pixels, 31360);
    EXPECT_EQ(c.patch_size, 14);
    EXPECT_EQ(c.merge_size, 2);
    EXPECT_EQ(c.temporal_patch_size, 2);
    EXPECT_NEAR(c.image_mean[0], 0.48145466, 1e-12);
    EXPECT_NEAR(c.image_std[2], 0.27577711, 1e-12);
    EXPECT_EQ(c.backend, vla::ResizeBackend::kTorchvision);
  }
  nlohmann::json bad = {{"image_std", {1.0, 0.0, 1.0}}};
  EXPECT_THROW(vla::ImagePreprocessConfig::from_json(bad, "x.json"), vla::Error);
  nlohmann::json bad2 = {{"size", {{"shortest_edge", "big"}}}};
  EXPECT_THROW(vla::ImagePreprocessConfig::from_json(bad2, "x.json"), vla::Error);
}

TEST(Resize, TorchvisionBicubicAntialiasBitExact) {
  auto pre = vla::SafetensorsFile::open(kFix + "/preprocess.safetensors");
  for (const auto& name : kImages) {
    SCOPED_TRACE(name);
    auto src = pre->load(name + ".uint8");
    auto want = pre->load(name + ".resized_tv");
    // The PNG on disk is the same image.
    auto png = vla::read_image(kFix + "/images/" + name + ".png");
    ASSERT_TRUE(torch::equal(image_to_tensor(png), src));
    auto got =
        vla::resize_bicubic(image_from_tensor(src), static_cast<int>(want.size(0)),
                            static_cast<int>(want.size(1)), vla::ResizeBackend::kTorchvision);
    auto g = image_to_tensor(got);
    EXPECT_EQ((g.to(torch::kInt32) - want.to(torch::kInt32)).abs().max().item<int>(), 0);
  }
}

TEST(Resize, PillowBicubicBitExact) {
  auto pre = vla::SafetensorsFile::open(kFix + "/preprocess.safetensors");
  auto pil = vla::SafetensorsFile::open(kFix + "/pil_resized.safetensors");
  int64_t differs_from_tv = 0;
  for (const auto& name : kImages) {
    SCOPED_TRACE(name);
    auto src = pre->load(name + ".uint8");
    auto want = pil->load(name + ".resized_pil");
    auto got = image_to_tensor(
        vla::resize_bicubic(image_from_tensor(src), static_cast<int>(want.size(0)),
                            static_cast<int>(want.size(1)), vla::ResizeBackend::kPillow));
    EXPECT_EQ((got.to(torch::kInt32) - want.to(torch::kInt32)).abs().max().item<int>(), 0);
    differs_from_tv += (pre->load(name + ".resized_tv") != want).sum().item<int64_t>();
  }
  EXPECT_GT(differs_from_tv, 0);  // the two backends really differ: the test can tell them apart
}

TEST(Preprocess, PixelValuesAndGridMatchTransformers) {
  auto pre = vla::SafetensorsFile::open(kFix + "/preprocess.safetensors");
  auto cfg = fixture_config();
  for (const auto& name : kImages) {
    SCOPED_TRACE(name);
    auto img = vla::read_image(kFix + "/images/" + name + ".png");
    auto r = vla::preprocess_image(img, cfg);
    auto want_pv = pre->load(name + ".pixel_values");
    auto want_grid = pre->load(name + ".grid_thw");
    ASSERT_EQ(r.pixel_values.sizes(), want_pv.sizes());
    EXPECT_TRUE(torch::equal(r.grid_thw, want_grid)) << r.grid_thw << want_grid;
    EXPECT_LE((r.pixel_values - want_pv).abs().max().item<double>(), 1e-6);
  }
}

TEST(Preprocess, SeveralImagesConcatenateInOrder) {
  auto cfg = fixture_config();
  std::vector<vla::Image> imgs;
  for (const auto& n : {"img_b", "img_c", "img_e"})
    imgs.push_back(vla::read_image(kFix + "/images/" + std::string(n) + ".png"));
  auto r = vla::preprocess_images(imgs, cfg);
  auto ref = vla::SafetensorsFile::open(kFix + "/ref_a.safetensors");
  EXPECT_TRUE(torch::equal(r.grid_thw, ref->load("multi.grid_thw")));
  EXPECT_EQ(r.tokens_per_image(), (std::vector<int64_t>{20, 6, 6}));
  EXPECT_EQ(r.pixel_values.size(0), (80 + 24 + 24));
}

TEST(Preprocess, ConvertsGreyAndRgba) {
  auto cfg = fixture_config();
  vla::Image grey = vla::make_image(40, 30, 1, 100);
  vla::Image rgb = vla::make_image(40, 30, 3, 100);
  EXPECT_TRUE(torch::equal(vla::preprocess_image(grey, cfg).pixel_values,
                           vla::preprocess_image(rgb, cfg).pixel_values));
  vla::Image rgba = vla::make_image(40, 30, 4, 0);  // fully transparent -> white
  auto white = vla::preprocess_image(vla::make_image(40, 30, 3, 255), cfg).pixel_values;
  EXPECT_TRUE(torch::equal(vla::preprocess_image(rgba, cfg).pixel_values, white));
}

TEST(Preprocess, BadImagesGiveClearErrors) {
  auto cfg = fixture_config();
  vla::Image empty;
  EXPECT_THROW(vla::preprocess_image(empty, cfg), vla::Error);
  vla::Image lying = vla::make_image(10, 10, 3);
  lying.pixels.resize(10);
  EXPECT_THROW(vla::preprocess_image(lying, cfg), vla::Error);
  EXPECT_THROW(vla::preprocess_images({}, cfg), vla::Error);
  try {
    vla::preprocess_images({vla::make_image(20, 20, 3), vla::make_image(3000, 5, 3)}, cfg);
    FAIL() << "expected an error";
  } catch (const vla::Error& e) {
    EXPECT_NE(std::string(e.what()).find("image 1"), std::string::npos) << e.what();
  }
}

TEST(Preprocess, PatchOrderIsMergeGrouped) {
  // A 56x56 image whose red channel is the pixel's row and green its column (no rescale or
  // normalise): the first 4 rows of pixel_values must be the 2x2 patches of the top-left merge
  // group, each row laid out (channel, temporal, patch row, patch column).
  vla::ImagePreprocessConfig cfg;
  cfg.do_rescale = false;
  cfg.do_normalize = false;
  auto img = torch::zeros({1, 56, 56, 3}, torch::kUInt8);
  for (int r = 0; r < 56; ++r)
    for (int c = 0; c < 56; ++c) {
      img[0][r][c][0] = r;
      img[0][r][c][1] = c;
    }
  auto p = vla::pixel_values_from_uint8(img, cfg);
  ASSERT_EQ(p.sizes(), (std::vector<int64_t>{16, 3 * 2 * 14 * 14}));
  const int64_t green = 2 * 14 * 14;
  auto rc = [&](int64_t row) {
    return std::make_pair(p[row][0].item<float>(), p[row][green].item<float>());
  };
  EXPECT_EQ(rc(0), std::make_pair(0.0f, 0.0f));    // patch (0,0)
  EXPECT_EQ(rc(1), std::make_pair(0.0f, 14.0f));   // patch (0,1)
  EXPECT_EQ(rc(2), std::make_pair(14.0f, 0.0f));   // patch (1,0)
  EXPECT_EQ(rc(3), std::make_pair(14.0f, 14.0f));  // patch (1,1)
  EXPECT_EQ(rc(4), std::make_pair(0.0f, 28.0f));   // next merge group to the right
  EXPECT_EQ(p[3][196].item<float>(), 14.0f);       // temporal duplicate
  EXPECT_EQ(p[0][14].item<float>(), 1.0f);         // second row of the first patch
  EXPECT_EQ(p[0][green + 1].item<float>(), 1.0f);  // second column of the first patch
}

TEST(Preprocess, BatchOfMixedSizesMatchesOneImageAtATime) {
  auto cfg = fixture_config();
  std::vector<vla::Image> imgs;
  for (const auto& n : {"img_b", "img_b", "img_c", "img_e"})
    imgs.push_back(vla::read_image(kFix + "/images/" + std::string(n) + ".png"));
  std::vector<torch::Tensor> one;
  for (const auto& im : imgs) one.push_back(vla::preprocess_image(im, cfg).pixel_values);
  EXPECT_TRUE(torch::equal(vla::preprocess_images(imgs, cfg).pixel_values, torch::cat(one, 0)));
  std::vector<vla::Image> same(3, imgs[0]);
  EXPECT_TRUE(torch::equal(vla::preprocess_images(same, cfg).pixel_values,
                           torch::cat({one[0], one[0], one[0]}, 0)));
}

TEST(Preprocess, CudaPixelValuesEqualCpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  auto cfg = fixture_config();
  std::vector<vla::Image> imgs;
  for (const auto& n : {"img_a", "img_b", "img_b", "img_c"})
    imgs.push_back(vla::read_image(kFix + "/images/" + std::string(n) + ".png"));
  auto cpu = vla::preprocess_images(imgs, cfg);
  auto gpu = vla::preprocess_images(imgs, cfg, torch::Device(torch::kCUDA, 0));
  ASSERT_TRUE(gpu.pixel_values.is_cuda());
  // IEEE float32 subtract and divide: bit-identical, not just close.
  EXPECT_TRUE(torch::equal(gpu.pixel_values.cpu(), cpu.pixel_values));
  EXPECT_TRUE(torch::equal(gpu.grid_thw, cpu.grid_thw));
}

#include "core/core.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

namespace vla {
namespace {

std::string temp_dir() {
  char tmpl[] = "/tmp/vla_core_test_XXXXXX";
  char* d = mkdtemp(tmpl);
  return d ? std::string(d) : std::string("/tmp");
}

TEST(Check, ThrowsWithConcatenatedMessage) {
  try {
    VLA_CHECK(1 + 1 == 3, "value ", 42, " is wrong");
    FAIL() << "no throw";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "value 42 is wrong");
  }
}

TEST(Files, AtomicWriteReplacesWholeFileAndLeavesNoTemp) {
  const std::string dir = temp_dir();
  const std::string path = dir + "/a.json";
  write_json_atomic(path, nlohmann::json{{"x", 1}});
  write_json_atomic(path, nlohmann::json{{"x", 2}, {"y", "z"}});
  auto j = read_json(path);
  EXPECT_EQ(j["x"], 2);
  EXPECT_EQ(j["y"], "z");
  EXPECT_FALSE(file_exists(path + ".tmp." + std::to_string(getpid())));
}

// User bytes (prompts, file names, captions) reach JSON writers: invalid UTF-8 is replaced by
// U+FFFD, consistently, instead of nlohmann's type_error.316 after the work is done.
TEST(Files, JsonWritersReplaceInvalidUtf8) {
  const std::string bad = std::string("ab\xff\xfe") + "cd \xc3\x28 ok";
  nlohmann::json j = {{"prompt", bad}, {"n", 1}};
  EXPECT_THROW((void)j.dump(), nlohmann::json::type_error);  // what the writers used to do
  const std::string text = dump_json(j);
  EXPECT_NE(text.find("ab\xef\xbf\xbd\xef\xbf\xbd"
                      "cd"),
            std::string::npos)
      << text;
  EXPECT_EQ(nlohmann::json::parse(text)["n"], 1);
  const std::string path = temp_dir() + "/bad.json";
  write_json_atomic(path, j);
  EXPECT_EQ(read_json(path)["prompt"].get<std::string>().substr(0, 2), "ab");
}

TEST(Files, AtomicWriteIntoMissingDirectoryFailsClearly) {
  EXPECT_THROW(write_file_atomic("/nonexistent_dir_vla/x.bin", std::string("abc")), Error);
}

TEST(Files, ReadJsonReportsPathOnBadJson) {
  const std::string path = temp_dir() + "/bad.json";
  write_file_atomic(path, std::string("{not json"));
  try {
    read_json(path);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos);
  }
}

TEST(Files, MakeDirsCreatesNested) {
  const std::string dir = temp_dir() + "/a/b/c";
  make_dirs(dir);
  EXPECT_TRUE(file_exists(dir));
  make_dirs(dir);  // idempotent
}

TEST(Images, PngRoundTripIsLossless) {
  Image im = make_image(7, 5, 3);
  for (size_t i = 0; i < im.pixels.size(); ++i) im.pixels[i] = static_cast<uint8_t>(i * 37);
  auto png = encode_png(im);
  Image back = decode_image(png.data(), png.size(), 3);
  EXPECT_EQ(back.width, 7);
  EXPECT_EQ(back.height, 5);
  EXPECT_EQ(back.pixels, im.pixels);
}

TEST(Images, JpegRoundTripIsClose) {
  Image im = make_image(16, 16, 3, 128);
  auto jpg = encode_jpeg(im, 95);
  Image back = decode_image(jpg.data(), jpg.size(), 3);
  for (uint8_t p : back.pixels) EXPECT_NEAR(p, 128, 3);
}

TEST(Images, DecodeGarbageThrows) {
  std::vector<uint8_t> junk(100, 0xAB);
  EXPECT_THROW(decode_image(junk.data(), junk.size()), Error);
}

TEST(Images, TilePlacesImagesInGrid) {
  std::vector<Image> ims = {make_image(4, 3, 3, 10), make_image(4, 3, 3, 200),
                            make_image(4, 3, 3, 90)};
  Image sheet = tile_images(ims, 2, 0);
  EXPECT_EQ(sheet.width, 2 * 4 + 3 * 2);
  EXPECT_EQ(sheet.height, 2 * 3 + 3 * 2);
  EXPECT_EQ(sheet.row(2)[2 * 3], 10);             // first tile
  EXPECT_EQ(sheet.row(2)[(2 + 4 + 2) * 3], 200);  // second tile, same row
  EXPECT_EQ(sheet.row(2 + 3 + 2)[2 * 3], 90);     // third tile, next row
  EXPECT_THROW(tile_images({make_image(4, 3), make_image(5, 3)}, 2), Error);
}

TEST(Stats, PercentileInterpolates) {
  std::vector<double> v = {4, 1, 3, 2};
  EXPECT_DOUBLE_EQ(percentile(v, 0), 1.0);
  EXPECT_DOUBLE_EQ(percentile(v, 100), 4.0);
  EXPECT_DOUBLE_EQ(percentile(v, 50), 2.5);
  EXPECT_DOUBLE_EQ(mean(v), 2.5);
  EXPECT_DOUBLE_EQ(percentile({}, 50), 0.0);
}

TEST(Table, AlignsColumns) {
  Table t({"a", "long"});
  t.add_row({"xyz", "1"});
  EXPECT_EQ(t.to_string(), "a   | long\n----+-----\nxyz | 1   \n");
}

TEST(Torch, ThreadsFollowRequest) {
  EXPECT_EQ(configure_torch_threads(1), 1);
  EXPECT_GE(configure_torch_threads(0), 1);
}

TEST(Log, ParseLevels) {
  EXPECT_EQ(parse_log_level("warn"), LogLevel::kWarn);
  EXPECT_THROW(parse_log_level("loud"), Error);
}

}  // namespace
}  // namespace vla

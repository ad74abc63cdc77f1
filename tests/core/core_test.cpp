#include "core/core.h"

#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

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

TEST(Files, RemoveTreeRemovesNestedFilesAndLinksWithoutFollowingThem) {
  const std::string root = temp_dir() + "/tree", keep = temp_dir() + "/kept";
  make_dirs(root + "/a/b");
  make_dirs(keep);
  write_file_atomic(root + "/a/b/f.txt", std::string("x"));
  write_file_atomic(root + "/top.txt", std::string("y"));
  write_file_atomic(keep + "/k.txt", std::string("z"));
  ASSERT_EQ(::symlink(keep.c_str(), (root + "/link").c_str()), 0);
  remove_tree(root);
  EXPECT_FALSE(file_exists(root));
  EXPECT_TRUE(file_exists(keep + "/k.txt"));  // the link went, not what it points to
  remove_tree(root);                          // absent: no-op
  write_file_atomic(root, std::string("a file"));
  remove_tree(root);
  EXPECT_FALSE(file_exists(root));
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
  try {
    decode_image(junk.data(), junk.size());
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("PNG and JPEG"), std::string::npos) << e.what();
  }
  // Found by fuzz/image_fuzz: made stb_image write out of bounds; now a clear error.
  auto crash = read_file(std::string(VLA_SOURCE_DIR) +
                         "/tests/fixtures/images/fuzz_stb_huffman_overflow.jpg");
  EXPECT_THROW(decode_image(reinterpret_cast<const uint8_t*>(crash.data()), crash.size()), Error);
  auto png = encode_png(make_image(4, 4, 3, 9));
  png.resize(png.size() / 2);  // truncated
  EXPECT_THROW(decode_image(png.data(), png.size()), Error);
}

TEST(Images, DecodingFollowsPilConvertRules) {
  // RGBA -> RGB drops alpha (no compositing); grey -> RGB replicates; RGB -> grey is ITU-R 601-2.
  Image rgba = make_image(2, 1, 4);
  rgba.pixels = {200, 100, 50, 0, 10, 20, 30, 128};
  auto p = encode_png(rgba);
  EXPECT_EQ(decode_image(p.data(), p.size(), 3).pixels,
            (std::vector<uint8_t>{200, 100, 50, 10, 20, 30}));
  EXPECT_EQ(decode_image(p.data(), p.size(), 4).pixels, rgba.pixels);
  Image grey = make_image(2, 1, 1);
  grey.pixels = {7, 250};
  p = encode_png(grey);
  EXPECT_EQ(decode_image(p.data(), p.size(), 3).pixels,
            (std::vector<uint8_t>{7, 7, 7, 250, 250, 250}));
  Image rgb = make_image(1, 1, 3);
  rgb.pixels = {255, 0, 0};
  p = encode_png(rgb);
  EXPECT_EQ(decode_image(p.data(), p.size(), 1).pixels[0], 76);  // round(255 * 0.299)
  // Palette and 16-bit grey files (the fuzz seeds): palette expanded, 16-bit -> high byte.
  const std::string seeds = std::string(VLA_SOURCE_DIR) + "/fuzz/corpus/image/";
  auto pal = read_image(seeds + "palette.png");
  EXPECT_EQ(pal.pixels, (std::vector<uint8_t>{255, 0, 0, 0, 0, 255, 255, 0, 0, 0, 0, 255}));
  auto g16 = read_image(seeds + "gray16.png");
  EXPECT_EQ(g16.pixels, (std::vector<uint8_t>{0x12, 0x12, 0x12, 255, 255, 255, 0x12, 0x12, 0x12,
                                              255, 255, 255}));
}

TEST(Images, HugeImagesAreRefusedBeforeDecoding) {
  // A PNG header claiming 20000 x 20000 pixels (4e8 > PIL's 2 x 89,478,485 limit): an error, no
  // 1.2 GB allocation. The CRC of the header chunk is right, so only the size is wrong.
  std::vector<uint8_t> ihdr = {'I', 'H',  'D',  'R', 0, 0, 0x4e, 0x20, 0,
                               0,   0x4e, 0x20, 8,   2, 0, 0,    0};
  const uint32_t crc = static_cast<uint32_t>(crc32(0, ihdr.data(), ihdr.size()));
  std::vector<uint8_t> png = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0, 0, 13};
  png.insert(png.end(), ihdr.begin(), ihdr.end());
  for (int s : {24, 16, 8, 0}) png.push_back(static_cast<uint8_t>(crc >> s));
  // An empty IDAT chunk: the header is read up to the first image data.
  const uint8_t idat[4] = {'I', 'D', 'A', 'T'};
  const uint32_t icrc = static_cast<uint32_t>(crc32(0, idat, 4));
  png.insert(png.end(), {0, 0, 0, 0, 'I', 'D', 'A', 'T'});
  for (int s : {24, 16, 8, 0}) png.push_back(static_cast<uint8_t>(icrc >> s));
  try {
    decode_image(png.data(), png.size());
    ADD_FAILURE() << "decoded a 20000 x 20000 header";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("pixel limit"), std::string::npos) << e.what();
  }
}

// A JPEG whose APP1 segment says EXIF orientation `o` (IFD0 with one SHORT entry), in the byte
// order given: what phones write.
std::vector<uint8_t> jpeg_with_orientation(const Image& im, int o, bool little_endian) {
  auto jpg = encode_jpeg(im, 100);
  std::vector<uint8_t> tiff =
      little_endian
          ? std::vector<uint8_t>{'I',
                                 'I',
                                 42,
                                 0,
                                 8,
                                 0,
                                 0,
                                 0,
                                 1,
                                 0,
                                 0x12,
                                 0x01,
                                 3,
                                 0,
                                 1,
                                 0,
                                 0,
                                 0,
                                 static_cast<uint8_t>(o),
                                 0,
                                 0,
                                 0,
                                 0,
                                 0,
                                 0,
                                 0,
                                 0,
                                 0}
          : std::vector<uint8_t>{'M',  'M',  0, 42, 0, 0, 0, 8, 0, 1,
                                 0x01, 0x12, 0, 3,  0, 0, 0, 1, 0, static_cast<uint8_t>(o),
                                 0,    0,    0, 0,  0, 0, 0, 0};
  std::vector<uint8_t> app1 = {0xFF, 0xE1, 0, 0, 'E', 'x', 'i', 'f', 0, 0};
  app1.insert(app1.end(), tiff.begin(), tiff.end());
  const size_t len = app1.size() - 2;
  app1[2] = static_cast<uint8_t>(len >> 8);
  app1[3] = static_cast<uint8_t>(len & 0xFF);
  std::vector<uint8_t> out;  // SOI, APP1, the rest of the JPEG
  out.reserve(jpg.size() + app1.size());
  for (size_t i = 0; i < jpg.size(); ++i) {
    out.push_back(jpg[i]);
    if (i == 1)
      for (uint8_t b : app1) out.push_back(b);
  }
  return out;
}

// Decoding applies the EXIF orientation like PIL.ImageOps.exif_transpose (transformers'
// load_image): a 32x16 image with a red left half, stored with orientation 6 (rotate 90 CW), is
// seen 16x32 with the red half on top.
TEST(Images, JpegExifOrientationIsApplied) {
  Image im = make_image(32, 16, 3, 0);
  for (int y = 0; y < 16; ++y)
    for (int x = 0; x < 16; ++x) im.row(y)[3 * x] = 255;
  for (bool le : {true, false}) {
    auto bytes = jpeg_with_orientation(im, 6, le);
    EXPECT_EQ(jpeg_exif_orientation(bytes.data(), bytes.size()), 6);
    Image d = decode_image(bytes.data(), bytes.size());
    ASSERT_EQ(d.width, 16);
    ASSERT_EQ(d.height, 32);
    EXPECT_GT(d.row(4)[3 * 8], 200);  // top half red
    EXPECT_LT(d.row(28)[3 * 8], 60);  // bottom half black
    auto b3 = jpeg_with_orientation(im, 3, le);
    Image r = decode_image(b3.data(), b3.size());
    ASSERT_EQ(r.width, 32);
    EXPECT_LT(r.row(8)[3 * 4], 60);  // rotated 180: red on the right
    EXPECT_GT(r.row(8)[3 * 28], 200);
  }
  // Every orientation against the pixel mapping on a lossless image; 1 and unknown are identity.
  Image g = make_image(3, 2, 1, 0);
  for (int i = 0; i < 6; ++i) g.pixels[i] = static_cast<uint8_t>(i);  // [[0 1 2] [3 4 5]]
  const std::vector<std::vector<uint8_t>> want = {
      {0, 1, 2, 3, 4, 5}, {2, 1, 0, 5, 4, 3}, {5, 4, 3, 2, 1, 0}, {3, 4, 5, 0, 1, 2},
      {0, 3, 1, 4, 2, 5}, {3, 0, 4, 1, 5, 2}, {5, 2, 4, 1, 3, 0}, {2, 5, 1, 4, 0, 3}};
  for (int o = 1; o <= 8; ++o) EXPECT_EQ(apply_exif_orientation(g, o).pixels, want[o - 1]) << o;
  EXPECT_EQ(apply_exif_orientation(g, 9).pixels, want[0]);
  // No EXIF, truncated or garbage segments: orientation 1, never a crash.
  auto plain = encode_jpeg(im, 90);
  EXPECT_EQ(jpeg_exif_orientation(plain.data(), plain.size()), 1);
  auto cut = jpeg_with_orientation(im, 6, true);
  EXPECT_EQ(jpeg_exif_orientation(cut.data(), 20), 1);
  const uint8_t junk[] = {0xFF, 0xD8, 0xFF, 0xE1, 0xFF, 0xFF, 'E', 'x'};
  EXPECT_EQ(jpeg_exif_orientation(junk, sizeof(junk)), 1);
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

// PNG and JPEG decoding and encoding for every image path (CLI, dataset reader and writer,
// training, server inputs) through Debian's libpng and libjpeg-turbo: hardened codecs (OSS-Fuzz)
// for bytes that come from users and networks. (stb_image, used before, wrote out of bounds on a
// fuzzed JPEG, and stb_image_write's JPEG encoder shifts signed ints past their range.)
//
// Pixel rules, as PIL's Image.convert does for transformers' load_image: alpha is dropped (not
// composited), grey is replicated to RGB, palettes are expanded, 16-bit samples keep their high
// byte; a JPEG's EXIF orientation is applied (core.cpp). Images above PIL's decompression-bomb
// limit (2 x 89,478,485 pixels) are refused before any pixel is decoded.
#include <jpeglib.h>
#include <png.h>

#include <csetjmp>
#include <cstdlib>
#include <cstring>

#include "core/core.h"

namespace vla {

namespace {

constexpr uint64_t kMaxPixels = 2ull * 89478485ull;  // PIL.Image.MAX_IMAGE_PIXELS * 2

// Interleaved 8-bit samples with src_channels per pixel -> want_channels (1, 3 or 4).
Image convert_channels(const uint8_t* src, int w, int h, int src_channels, bool src_alpha,
                       int want_channels) {
  Image im = make_image(w, h, want_channels);
  const int colour = src_alpha ? src_channels - 1 : src_channels;  // 1 (grey) or 3 (RGB)
  const size_t n = static_cast<size_t>(w) * h;
  for (size_t i = 0; i < n; ++i) {
    const uint8_t* s = src + i * src_channels;
    uint8_t* d = im.pixels.data() + i * want_channels;
    uint8_t rgb[3] = {s[0], colour == 3 ? s[1] : s[0], colour == 3 ? s[2] : s[0]};
    if (want_channels == 1) {
      // ITU-R 601-2 luma, as PIL's convert("L"): L = R * 299/1000 + G * 587/1000 + B * 114/1000.
      d[0] = colour == 1
                 ? s[0]
                 : static_cast<uint8_t>((rgb[0] * 299 + rgb[1] * 587 + rgb[2] * 114 + 500) / 1000);
      continue;
    }
    std::memcpy(d, rgb, 3);
    if (want_channels == 4) d[3] = src_alpha ? s[src_channels - 1] : 255;
  }
  return im;
}

// ---------------------------------------------------------------- PNG (libpng)
struct PngReader {
  const uint8_t* data;
  size_t size, pos;
};

void png_read_from_memory(png_structp png, png_bytep out, png_size_t n) {
  auto* r = static_cast<PngReader*>(png_get_io_ptr(png));
  if (n > r->size - r->pos) png_error(png, "truncated PNG data");
  std::memcpy(out, r->data + r->pos, n);
  r->pos += n;
}

void png_error_to_longjmp(png_structp png, png_const_charp msg) {
  auto* err = static_cast<std::string*>(png_get_error_ptr(png));
  *err = msg;
  png_longjmp(png, 1);
}

void png_ignore_warning(png_structp, png_const_charp) {}

Image decode_png(const uint8_t* data, size_t size, int want_channels) {
  std::string err;
  png_structp png =
      png_create_read_struct(PNG_LIBPNG_VER_STRING, &err, png_error_to_longjmp, png_ignore_warning);
  VLA_CHECK(png != nullptr, "PNG: out of memory");
  png_infop info = png_create_info_struct(png);
  PngReader reader{data, size, 0};
  std::vector<uint8_t> buf;
  std::vector<png_bytep> rows;
  int w = 0, h = 0, channels = 0;
  bool alpha = false;
  if (setjmp(png_jmpbuf(png))) {  // every libpng error lands here (no C++ object is skipped)
    png_destroy_read_struct(&png, &info, nullptr);
    throw Error("cannot decode PNG: " + err);
  }
  if (info == nullptr) png_error(png, "out of memory");
  png_set_read_fn(png, &reader, png_read_from_memory);
  png_set_user_limits(png, 1u << 16, 1u << 16);
  png_read_info(png, info);
  const uint64_t pw = png_get_image_width(png, info), ph = png_get_image_height(png, info);
  if (pw * ph > kMaxPixels) png_error(png, "image above the pixel limit (a decompression bomb?)");
  png_set_strip_16(png);  // high byte, as PIL
  png_set_packing(png);
  png_set_expand(png);  // palette -> RGB, grey < 8 bit -> 8 bit, tRNS -> alpha
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  w = static_cast<int>(png_get_image_width(png, info));
  h = static_cast<int>(png_get_image_height(png, info));
  channels = png_get_channels(png, info);
  const int ct = png_get_color_type(png, info);
  alpha = (ct & PNG_COLOR_MASK_ALPHA) != 0;
  if (png_get_rowbytes(png, info) != static_cast<size_t>(w) * channels)
    png_error(png, "unexpected row layout");
  buf.resize(static_cast<size_t>(w) * h * channels);
  rows.resize(h);
  for (int y = 0; y < h; ++y) rows[y] = buf.data() + static_cast<size_t>(y) * w * channels;
  png_read_image(png, rows.data());
  png_read_end(png, nullptr);
  png_destroy_read_struct(&png, &info, nullptr);
  return convert_channels(buf.data(), w, h, channels, alpha, want_channels);
}

// ---------------------------------------------------------------- JPEG (libjpeg-turbo)
struct JpegError {
  jpeg_error_mgr mgr;
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

void jpeg_error_to_longjmp(j_common_ptr cinfo) {
  auto* e = reinterpret_cast<JpegError*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, e->message);
  longjmp(e->jump, 1);
}

void jpeg_ignore_message(j_common_ptr, int) {}

Image decode_jpeg(const uint8_t* data, size_t size, int want_channels) {
  jpeg_decompress_struct cinfo;
  JpegError jerr;
  cinfo.err = jpeg_std_error(&jerr.mgr);
  jerr.mgr.error_exit = jpeg_error_to_longjmp;
  jerr.mgr.emit_message = jpeg_ignore_message;
  std::vector<uint8_t> buf;
  int w = 0, h = 0, channels = 0;
  if (setjmp(jerr.jump)) {
    jpeg_destroy_decompress(&cinfo);
    throw Error(std::string("cannot decode JPEG: ") + jerr.message);
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, data, static_cast<unsigned long>(size));
  jpeg_read_header(&cinfo, TRUE);
  if (static_cast<uint64_t>(cinfo.image_width) * cinfo.image_height > kMaxPixels) {
    std::strcpy(jerr.message, "image above the pixel limit (a decompression bomb?)");
    longjmp(jerr.jump, 1);
  }
  if (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK) {
    std::strcpy(jerr.message, "CMYK JPEGs are not supported (convert to RGB)");
    longjmp(jerr.jump, 1);
  }
  cinfo.out_color_space = cinfo.num_components == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_start_decompress(&cinfo);
  w = static_cast<int>(cinfo.output_width);
  h = static_cast<int>(cinfo.output_height);
  channels = cinfo.output_components;
  buf.resize(static_cast<size_t>(w) * h * channels);
  while (cinfo.output_scanline < cinfo.output_height) {
    JSAMPROW row = buf.data() + static_cast<size_t>(cinfo.output_scanline) * w * channels;
    jpeg_read_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  return convert_channels(buf.data(), w, h, channels, false, want_channels);
}

Image decode_pixels(const uint8_t* data, size_t size, int want_channels) {
  VLA_CHECK(want_channels == 1 || want_channels == 3 || want_channels == 4,
            "decode_image: want_channels must be 1, 3 or 4, got ", want_channels);
  VLA_CHECK(data != nullptr && size > 0, "image data is empty");
  static const uint8_t kPng[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  if (size >= 8 && std::memcmp(data, kPng, 8) == 0) return decode_png(data, size, want_channels);
  if (size >= 3 && data[0] == 0xff && data[1] == 0xd8 && data[2] == 0xff)
    return decode_jpeg(data, size, want_channels);
  throw Error("unsupported image format (PNG and JPEG are read; the data starts with " +
              std::to_string(size) + " bytes of something else)");
}

void check_image(const Image& im) {
  VLA_CHECK(im.width > 0 && im.height > 0 && im.channels >= 1 && im.channels <= 4, "invalid image ",
            im.width, "x", im.height, "x", im.channels);
  VLA_CHECK(im.pixels.size() == static_cast<size_t>(im.width) * im.height * im.channels,
            "image buffer holds ", im.pixels.size(), " bytes, expected ",
            static_cast<size_t>(im.width) * im.height * im.channels);
}

}  // namespace

std::vector<uint8_t> encode_png(const Image& im) {
  check_image(im);
  png_image image;
  std::memset(&image, 0, sizeof(image));
  image.version = PNG_IMAGE_VERSION;
  image.width = static_cast<png_uint_32>(im.width);
  image.height = static_cast<png_uint_32>(im.height);
  static const png_uint_32 kFormats[5] = {0, PNG_FORMAT_GRAY, PNG_FORMAT_GA, PNG_FORMAT_RGB,
                                          PNG_FORMAT_RGBA};
  image.format = kFormats[im.channels];
  png_alloc_size_t size = 0;
  // First call sizes the buffer, the second writes it (libpng's simplified API).
  VLA_CHECK(png_image_write_to_memory(&image, nullptr, &size, 0, im.pixels.data(), 0, nullptr),
            "PNG encoding failed: ", image.message);
  std::vector<uint8_t> out(size);
  VLA_CHECK(png_image_write_to_memory(&image, out.data(), &size, 0, im.pixels.data(), 0, nullptr),
            "PNG encoding failed: ", image.message);
  out.resize(size);
  return out;
}

std::vector<uint8_t> encode_jpeg(const Image& im, int quality) {
  check_image(im);
  VLA_CHECK(im.channels == 1 || im.channels == 3, "JPEG encoding needs 1 or 3 channels, got ",
            im.channels);
  VLA_CHECK(quality >= 1 && quality <= 100, "JPEG quality must be 1..100, got ", quality);
  jpeg_compress_struct cinfo;
  JpegError jerr;
  cinfo.err = jpeg_std_error(&jerr.mgr);
  jerr.mgr.error_exit = jpeg_error_to_longjmp;
  unsigned char* buf = nullptr;
  unsigned long size = 0;
  if (setjmp(jerr.jump)) {
    jpeg_destroy_compress(&cinfo);
    std::free(buf);
    throw Error(std::string("JPEG encoding failed: ") + jerr.message);
  }
  jpeg_create_compress(&cinfo);
  jpeg_mem_dest(&cinfo, &buf, &size);
  cinfo.image_width = static_cast<JDIMENSION>(im.width);
  cinfo.image_height = static_cast<JDIMENSION>(im.height);
  cinfo.input_components = im.channels;
  cinfo.in_color_space = im.channels == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_set_defaults(&cinfo);
  jpeg_set_quality(&cinfo, quality, TRUE);
  jpeg_start_compress(&cinfo, TRUE);
  while (cinfo.next_scanline < cinfo.image_height) {
    auto row = const_cast<JSAMPROW>(im.row(static_cast<int>(cinfo.next_scanline)));
    jpeg_write_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_compress(&cinfo);
  std::vector<uint8_t> out(buf, buf + size);
  jpeg_destroy_compress(&cinfo);
  std::free(buf);
  return out;
}

Image decode_image(const uint8_t* data, size_t size, int want_channels) {
  VLA_CHECK(size < (1ull << 31), "image data of ", size, " bytes");
  // What a user's photo means: the EXIF orientation is applied, as transformers' load_image does
  // (PIL.ImageOps.exif_transpose). PNG carries no EXIF here.
  return apply_exif_orientation(decode_pixels(data, size, want_channels),
                                jpeg_exif_orientation(data, size));
}

}  // namespace vla

// vla core: errors, logging, clocks, crash-safe file writes, PNG I/O, progress bars,
// console tables, statistics and LibTorch set-up shared by every other concern.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace c10 {
struct Device;  // torch::Device; core.h stays free of the torch headers
}

namespace vla {

// ---------------------------------------------------------------- the task's clocks
// The rates every layer shares (simulator, dataset, policy, runtime, server): force/torque samples
// and physics steps at 650 Hz, actions at 80 Hz in chunks of 8 (100 ms, one control tick at
// 10 Hz), and a 100 ms force window of 65 samples per tick.
constexpr double kForceHz = 650.0;
constexpr double kActionHz = 80.0;
constexpr int kChunkSize = 8;
constexpr double kControlHz = 10.0;
constexpr int kForceWindow = 65;

// A Cartesian stage target delta or position (m), x y z: what an action and the proprio are.
using Action = std::array<float, 3>;
// One force/torque sample: time stamp (s, on the producer's clock) and Fx Fy Fz (N), Tx Ty Tz (N
// m).
struct ForceSample {
  double t = 0.0;
  std::array<float, 6> f{};
};

// ---------------------------------------------------------------- errors
// Every user-facing failure is a vla::Error with a message that says what and where.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

namespace detail {
inline void append(std::ostringstream&) {}
template <typename T, typename... Rest>
void append(std::ostringstream& os, const T& v, const Rest&... rest) {
  os << v;
  append(os, rest...);
}
}  // namespace detail

// Concatenates all arguments with operator<< into a string.
template <typename... Args>
std::string str_cat(const Args&... args) {
  std::ostringstream os;
  detail::append(os, args...);
  return os.str();
}

// Throws vla::Error with the concatenated message when cond is false.
#define VLA_CHECK(cond, ...)                                      \
  do {                                                            \
    if (!(cond)) throw ::vla::Error(::vla::str_cat(__VA_ARGS__)); \
  } while (0)

// Appends the UTF-8 encoding of one Unicode code point (no validation of surrogates).
void append_utf8(std::string& out, char32_t cp);

// ---------------------------------------------------------------- logging
enum class LogLevel { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3, kOff = 4 };
void set_log_level(LogLevel level);
LogLevel log_level();
// Parses "debug|info|warn|error|off"; throws on anything else.
LogLevel parse_log_level(const std::string& name);
void log_message(LogLevel level, const std::string& message);

template <typename... Args>
void log_debug(const Args&... a) {
  if (log_level() <= LogLevel::kDebug) log_message(LogLevel::kDebug, str_cat(a...));
}
template <typename... Args>
void log_info(const Args&... a) {
  if (log_level() <= LogLevel::kInfo) log_message(LogLevel::kInfo, str_cat(a...));
}
template <typename... Args>
void log_warn(const Args&... a) {
  if (log_level() <= LogLevel::kWarn) log_message(LogLevel::kWarn, str_cat(a...));
}
template <typename... Args>
void log_error(const Args&... a) {
  if (log_level() <= LogLevel::kError) log_message(LogLevel::kError, str_cat(a...));
}

// ---------------------------------------------------------------- clocks
// One monotonic clock for the whole engine (std::chrono::steady_clock).
using Clock = std::chrono::steady_clock;
inline int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
      .count();
}
inline double now_s() { return static_cast<double>(now_ns()) * 1e-9; }

// Measures elapsed wall time since construction or the last reset().
class Stopwatch {
 public:
  Stopwatch() : start_(now_ns()) {}
  void reset() { start_ = now_ns(); }
  double elapsed_s() const { return static_cast<double>(now_ns() - start_) * 1e-9; }
  double elapsed_ms() const { return static_cast<double>(now_ns() - start_) * 1e-6; }

 private:
  int64_t start_;
};

// ---------------------------------------------------------------- files
// Crash-safe writes: the data goes to "<path>.tmp.<pid>", is flushed and fsync'ed, then renamed
// over path, so a reader sees either the old file or the complete new one, never a torn write.
void write_file_atomic(const std::string& path, const void* data, size_t size);
void write_file_atomic(const std::string& path, const std::string& contents);
void write_json_atomic(const std::string& path, const nlohmann::json& j, int indent = 2);
// JSON text of j for every writer of user-derived text (prompts, file names, captions): invalid
// UTF-8 bytes become U+FFFD instead of an exception after the work is done (nlohmann's default
// throws type_error.316). indent < 0: compact.
std::string dump_json(const nlohmann::json& j, int indent = -1);
std::string dump_json(const nlohmann::ordered_json& j, int indent = -1);  // keeps key order
std::string read_file(const std::string& path);
nlohmann::json read_json(const std::string& path);
bool file_exists(const std::string& path);
// "cpu" | "cuda" | "cuda:N" -> a torch device (the `--device` option of every command). Throws
// vla::Error for another spelling, a build or machine without CUDA, or a missing index.
c10::Device parse_device(const std::string& text);
// Creates the directory and its parents; no-op when it exists.
void make_dirs(const std::string& path);
// Removes a file or a directory tree (links are removed, not followed); no-op when absent.
// Throws vla::Error naming the path that could not be removed. Walks with POSIX nftw():
// std::filesystem::remove_all on a non-empty directory crashed (SIGSEGV) in the build against
// PyTorch's libtorch on the GPU machine (docs/development/README.md).
void remove_tree(const std::string& path);

// ---------------------------------------------------------------- images
// 8-bit interleaved image, rows top first.
struct Image {
  int width = 0;
  int height = 0;
  int channels = 3;
  std::vector<uint8_t> pixels;  // height * width * channels
  uint8_t* row(int y) { return pixels.data() + static_cast<size_t>(y) * width * channels; }
  const uint8_t* row(int y) const {
    return pixels.data() + static_cast<size_t>(y) * width * channels;
  }
  bool empty() const { return pixels.empty(); }
};
Image make_image(int width, int height, int channels = 3, uint8_t fill = 0);
// PNG (libpng) / JPEG (libjpeg-turbo) encoding; src/core/image_codec.cpp.
std::vector<uint8_t> encode_png(const Image& image);
std::vector<uint8_t> encode_jpeg(const Image& image, int quality = 90);
// Decodes PNG (libpng) or JPEG (libjpeg-turbo) bytes to want_channels = 1, 3 or 4 with PIL's
// convert() rules (alpha dropped, grey replicated, palette expanded, 16-bit -> high byte); a
// JPEG's EXIF orientation is applied. Throws vla::Error on bad or unsupported data and on images
// above 2 x 89,478,485 pixels (PIL's decompression-bomb limit). src/core/image_codec.cpp.
Image decode_image(const uint8_t* data, size_t size, int want_channels = 3);
// EXIF Orientation 1..8 of JPEG bytes (1 when absent or malformed) and its transform
// (PIL.ImageOps.exif_transpose: 2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90 CW,
// 7 transverse, 8 rotate 90 CCW; 5-8 swap width and height).
int jpeg_exif_orientation(const uint8_t* data, size_t size);
Image apply_exif_orientation(const Image& image, int orientation);
Image read_image(const std::string& path, int want_channels = 3);
void write_png(const std::string& path, const Image& image);
// Tiles images (same size) into a grid with `columns` columns; a contact sheet.
Image tile_images(const std::vector<Image>& images, int columns, uint8_t background = 32);

// ---------------------------------------------------------------- console
// A progress bar on stderr; redraws in place on a terminal, prints every ~10% otherwise.
class ProgressBar {
 public:
  ProgressBar(std::string label, int64_t total);
  ~ProgressBar();
  // Advances by n and sets a free-form status (e.g. "loss 0.012 | 340 samples/s").
  void tick(int64_t n = 1, const std::string& status = "");
  void set_status(const std::string& status);
  void finish();

 private:
  void draw(bool force);
  std::string label_;
  int64_t total_;
  int64_t done_ = 0;
  std::string status_;
  Stopwatch clock_;
  double last_draw_s_ = -1.0;
  int last_decile_ = -1;
  bool tty_;
  bool finished_ = false;
};

// Fixed-width text table for CLI reports.
class Table {
 public:
  explicit Table(std::vector<std::string> header);
  void add_row(std::vector<std::string> row);
  std::string to_string() const;
  void print(std::FILE* out = stdout) const;

 private:
  std::vector<std::vector<std::string>> rows_;
};
// Formats a double with the given number of decimals.
std::string fmt_double(double v, int decimals = 3);
// 64-bit FNV-1a of the bytes as 16 lowercase hex digits (content keys and fingerprints; not
// cryptographic).
std::string fnv1a_hex(const void* data, size_t size);

// ---------------------------------------------------------------- statistics
// Percentile (0..100) with linear interpolation; 0 for an empty input.
double percentile(std::vector<double> values, double p);
double mean(const std::vector<double>& values);

// ---------------------------------------------------------------- torch
// Sets LibTorch's intra-op threads: `requested` when > 0, else $VLA_THREADS, else all cores.
// Returns the count in effect. LibTorch starts with one thread, which wastes the machine.
int configure_torch_threads(int requested = 0);
// "torch 1.13.1 (CPU)" / "torch 2.11.0 (CUDA: NVIDIA H100 ...)".
std::string torch_build_info();
// Seeds torch and the C++ RNGs used in vla.
void seed_everything(uint64_t seed);

}  // namespace vla

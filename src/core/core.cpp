#include "core/core.h"

#include <fcntl.h>
#include <ftw.h>
#include <sys/stat.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <mutex>
#include <random>
#include <thread>

namespace vla {

// ---------------------------------------------------------------- logging
namespace {
LogLevel initial_level() {
  const char* env = std::getenv("VLA_LOG");
  if (!env) return LogLevel::kInfo;
  try {
    return parse_log_level(env);
  } catch (const Error&) {
    return LogLevel::kInfo;
  }
}
std::atomic<int>& level_store() {
  static std::atomic<int> level{static_cast<int>(initial_level())};
  return level;
}
std::mutex& log_mutex() {
  static std::mutex m;
  return m;
}
}  // namespace

void set_log_level(LogLevel level) { level_store().store(static_cast<int>(level)); }
LogLevel log_level() { return static_cast<LogLevel>(level_store().load()); }

LogLevel parse_log_level(const std::string& name) {
  if (name == "debug") return LogLevel::kDebug;
  if (name == "info") return LogLevel::kInfo;
  if (name == "warn") return LogLevel::kWarn;
  if (name == "error") return LogLevel::kError;
  if (name == "off") return LogLevel::kOff;
  throw Error("unknown log level '" + name + "' (expected debug, info, warn, error or off)");
}

void log_message(LogLevel level, const std::string& message) {
  static const char* names[] = {"debug", "info", "warn", "error"};
  std::lock_guard<std::mutex> lock(log_mutex());
  std::fprintf(stderr, "[vla %s] %s\n", names[static_cast<int>(level)], message.c_str());
}

// ---------------------------------------------------------------- files
void write_file_atomic(const std::string& path, const void* data, size_t size) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  VLA_CHECK(fd >= 0, "cannot create ", tmp, ": ", std::strerror(errno));
  const char* p = static_cast<const char*>(data);
  size_t left = size;
  while (left > 0) {
    ssize_t n = ::write(fd, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      throw Error(str_cat("write to ", tmp, " failed: ", std::strerror(err)));
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    ::unlink(tmp.c_str());
    throw Error(str_cat("flushing ", tmp, " failed: ", std::strerror(errno)));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    throw Error(str_cat("rename ", tmp, " -> ", path, " failed: ", std::strerror(err)));
  }
}

void write_file_atomic(const std::string& path, const std::string& contents) {
  write_file_atomic(path, contents.data(), contents.size());
}

std::string dump_json(const nlohmann::json& j, int indent) {
  return j.dump(indent, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string dump_json(const nlohmann::ordered_json& j, int indent) {
  return j.dump(indent, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

void write_json_atomic(const std::string& path, const nlohmann::json& j, int indent) {
  write_file_atomic(path, dump_json(j, indent) + "\n");
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  VLA_CHECK(in.good(), "cannot open ", path, ": ", std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

nlohmann::json read_json(const std::string& path) {
  std::string text = read_file(path);
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw Error(str_cat("invalid JSON in ", path, ": ", e.what()));
  }
}

bool file_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

c10::Device parse_device(const std::string& text) {
  const bool cuda = text == "cuda" || text.rfind("cuda:", 0) == 0;
  VLA_CHECK(text == "cpu" || cuda, "--device must be cpu, cuda or cuda:N, got '", text, "'");
  if (!cuda) return torch::kCPU;
  VLA_CHECK(torch::cuda::is_available(), "--device ", text,
            ": this build or machine has no CUDA (torch::cuda::is_available() is false)");
  torch::Device d(text);
  VLA_CHECK(!d.has_index() || d.index() < static_cast<int>(torch::cuda::device_count()),
            "--device ", text, ": only ", torch::cuda::device_count(), " CUDA device(s)");
  return d;
}

void remove_tree(const std::string& path) {
  struct stat st;
  if (path.empty() || ::lstat(path.c_str(), &st) != 0) return;
  static thread_local std::string failed;
  failed.clear();
  auto remove_one = [](const char* p, const struct stat*, int type, struct FTW*) -> int {
    const int rc = type == FTW_DP ? ::rmdir(p) : ::unlink(p);
    if (rc != 0 && errno != ENOENT) {
      failed = str_cat(p, ": ", std::strerror(errno));
      return 1;
    }
    return 0;
  };
  // Depth first (children before their directory), physical (never follows links).
  if (::nftw(path.c_str(), remove_one, 32, FTW_DEPTH | FTW_PHYS) != 0)
    throw Error(str_cat("cannot remove ", failed.empty() ? path : failed));
}

void make_dirs(const std::string& path) {
  if (path.empty()) return;
  std::string cur;
  size_t pos = 0;
  while (pos != std::string::npos) {
    pos = path.find('/', pos + 1);
    cur = path.substr(0, pos);
    if (cur.empty()) continue;
    if (::mkdir(cur.c_str(), 0755) != 0 && errno != EEXIST) {
      throw Error(str_cat("cannot create directory ", cur, ": ", std::strerror(errno)));
    }
  }
}

// ---------------------------------------------------------------- images
Image make_image(int width, int height, int channels, uint8_t fill) {
  VLA_CHECK(width > 0 && height > 0 && channels > 0, "invalid image size ", width, "x", height, "x",
            channels);
  Image im;
  im.width = width;
  im.height = height;
  im.channels = channels;
  im.pixels.assign(static_cast<size_t>(width) * height * channels, fill);
  return im;
}

// EXIF Orientation (tag 0x0112 in IFD0 of the APP1 "Exif" segment) of a JPEG; 1 when absent or
// unreadable. Written here (a few dozen lines of a well-specified format) rather than adding
// libexif for one tag. Every read is bounds-checked; a malformed segment means "no orientation".
int jpeg_exif_orientation(const uint8_t* d, size_t n) {
  if (n < 4 || d[0] != 0xFF || d[1] != 0xD8) return 1;
  size_t p = 2;
  while (p + 4 <= n && d[p] == 0xFF) {
    const uint8_t marker = d[p + 1];
    if (marker == 0xDA || marker == 0xD9) break;  // start of scan / end of image
    const size_t len = (static_cast<size_t>(d[p + 2]) << 8) | d[p + 3];
    if (len < 2 || p + 2 + len > n) break;
    const uint8_t* seg = d + p + 4;
    const size_t sl = len - 2;
    if (marker == 0xE1 && sl >= 14 && std::memcmp(seg, "Exif\0\0", 6) == 0) {
      const uint8_t* t = seg + 6;
      const size_t tl = sl - 6;
      const bool le = t[0] == 'I' && t[1] == 'I';
      if (!le && !(t[0] == 'M' && t[1] == 'M')) return 1;
      auto u16 = [&](size_t o) -> uint32_t {
        return le ? t[o] | (t[o + 1] << 8) : (t[o] << 8) | t[o + 1];
      };
      auto u32 = [&](size_t o) -> uint32_t {
        return le ? u16(o) | (u16(o + 2) << 16) : (u16(o) << 16) | u16(o + 2);
      };
      if (u16(2) != 42) return 1;
      const size_t ifd = u32(4);
      if (ifd + 2 > tl) return 1;
      const size_t count = u16(ifd);
      for (size_t i = 0; i < count; ++i) {
        const size_t e = ifd + 2 + 12 * i;
        if (e + 12 > tl) return 1;
        if (u16(e) == 0x0112 && u16(e + 2) == 3) {  // SHORT
          const uint32_t o = u16(e + 8);
          return o >= 1 && o <= 8 ? static_cast<int>(o) : 1;
        }
      }
      return 1;
    }
    p += 2 + len;
  }
  return 1;
}

Image apply_exif_orientation(const Image& in, int orientation) {
  if (orientation <= 1 || orientation > 8) return in;
  const int W = in.width, H = in.height, C = in.channels;
  const bool swap = orientation >= 5;
  Image out = make_image(swap ? H : W, swap ? W : H, C);
  for (int y = 0; y < out.height; ++y) {
    for (int x = 0; x < out.width; ++x) {
      int sx = x, sy = y;  // PIL.ImageOps.exif_transpose semantics
      switch (orientation) {
        case 2:
          sx = W - 1 - x;
          break;  // mirror
        case 3:
          sx = W - 1 - x;
          sy = H - 1 - y;
          break;  // rotate 180
        case 4:
          sy = H - 1 - y;
          break;  // flip
        case 5:
          sx = y;
          sy = x;
          break;  // transpose
        case 6:
          sx = y;
          sy = H - 1 - x;
          break;  // rotate 90 clockwise
        case 7:
          sx = W - 1 - y;
          sy = H - 1 - x;
          break;  // transverse
        case 8:
          sx = W - 1 - y;
          sy = x;
          break;  // rotate 90 counter-clockwise
      }
      std::memcpy(out.row(y) + static_cast<size_t>(x) * C, in.row(sy) + static_cast<size_t>(sx) * C,
                  static_cast<size_t>(C));
    }
  }
  return out;
}

Image read_image(const std::string& path, int want_channels) {
  std::string bytes = read_file(path);
  try {
    return decode_image(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(),
                        want_channels);
  } catch (const Error& e) {
    throw Error(path + ": " + e.what());
  }
}

void write_png(const std::string& path, const Image& image) {
  auto bytes = encode_png(image);
  write_file_atomic(path, bytes.data(), bytes.size());
}

Image tile_images(const std::vector<Image>& images, int columns, uint8_t background) {
  VLA_CHECK(!images.empty(), "tile_images: no images");
  VLA_CHECK(columns > 0, "tile_images: columns must be positive");
  const int w = images[0].width, h = images[0].height, c = images[0].channels;
  for (const auto& im : images) {
    VLA_CHECK(im.width == w && im.height == h && im.channels == c,
              "tile_images: all images must share one size");
  }
  const int cols = std::min<int>(columns, static_cast<int>(images.size()));
  const int rows = (static_cast<int>(images.size()) + cols - 1) / cols;
  const int pad = 2;
  Image sheet = make_image(cols * w + (cols + 1) * pad, rows * h + (rows + 1) * pad, c, background);
  for (size_t i = 0; i < images.size(); ++i) {
    const int x0 = pad + static_cast<int>(i % cols) * (w + pad);
    const int y0 = pad + static_cast<int>(i / cols) * (h + pad);
    for (int y = 0; y < h; ++y) {
      std::memcpy(sheet.row(y0 + y) + static_cast<size_t>(x0) * c, images[i].row(y),
                  static_cast<size_t>(w) * c);
    }
  }
  return sheet;
}

// ---------------------------------------------------------------- console
ProgressBar::ProgressBar(std::string label, int64_t total)
    : label_(std::move(label)), total_(std::max<int64_t>(total, 1)), tty_(::isatty(2)) {
  draw(true);
}

ProgressBar::~ProgressBar() {
  if (!finished_) finish();
}

void ProgressBar::tick(int64_t n, const std::string& status) {
  done_ = std::min(total_, done_ + n);
  if (!status.empty()) status_ = status;
  draw(done_ == total_);
}

void ProgressBar::set_status(const std::string& status) {
  status_ = status;
  draw(false);
}

void ProgressBar::finish() {
  if (finished_) return;
  draw(true);
  if (tty_) std::fprintf(stderr, "\n");
  finished_ = true;
}

void ProgressBar::draw(bool force) {
  const double t = clock_.elapsed_s();
  const double frac = static_cast<double>(done_) / static_cast<double>(total_);
  const int decile = static_cast<int>(frac * 10);
  if (tty_) {
    if (!force && t - last_draw_s_ < 0.1) return;
  } else if (!force && decile == last_decile_ && t - last_draw_s_ < 30.0) {
    return;  // logs: a line per tenth of the work, and at least every 30 s of a long one
  }
  if (!tty_ && force && decile == last_decile_ && done_ != total_ && t - last_draw_s_ < 30.0)
    return;
  last_draw_s_ = t;
  last_decile_ = decile;
  const int width = 30;
  const int filled = static_cast<int>(frac * width);
  std::string bar(static_cast<size_t>(filled), '#');
  bar.resize(width, '.');
  const double rate = t > 0 ? static_cast<double>(done_) / t : 0.0;
  const double eta = rate > 0 ? static_cast<double>(total_ - done_) / rate : 0.0;
  std::fprintf(stderr, "%s%s [%s] %lld/%lld %5.1f%% %.1fs eta %.1fs %s%s", tty_ ? "\r\033[K" : "",
               label_.c_str(), bar.c_str(), static_cast<long long>(done_),
               static_cast<long long>(total_), frac * 100.0, t, eta, status_.c_str(),
               tty_ ? "" : "\n");
  std::fflush(stderr);
}

Table::Table(std::vector<std::string> header) { rows_.push_back(std::move(header)); }

void Table::add_row(std::vector<std::string> row) {
  row.resize(rows_[0].size());
  rows_.push_back(std::move(row));
}

std::string Table::to_string() const {
  std::vector<size_t> width(rows_[0].size(), 0);
  for (const auto& r : rows_) {
    for (size_t i = 0; i < r.size(); ++i) width[i] = std::max(width[i], r[i].size());
  }
  std::ostringstream os;
  for (size_t ri = 0; ri < rows_.size(); ++ri) {
    for (size_t i = 0; i < rows_[ri].size(); ++i) {
      os << (i ? " | " : "") << rows_[ri][i] << std::string(width[i] - rows_[ri][i].size(), ' ');
    }
    os << "\n";
    if (ri == 0) {
      for (size_t i = 0; i < width.size(); ++i)
        os << (i ? "-+-" : "") << std::string(width[i], '-');
      os << "\n";
    }
  }
  return os.str();
}

void Table::print(std::FILE* out) const {
  std::fputs(to_string().c_str(), out);
  std::fflush(out);
}

void append_utf8(std::string& out, char32_t c) {
  if (c < 0x80) {
    out.push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (c >> 6)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (c >> 12)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (c >> 18)));
    out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

std::string fnv1a_hex(const void* data, size_t size) {
  uint64_t h = 1469598103934665603ULL;
  const auto* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < size; ++i) {
    h ^= p[i];
    h *= 1099511628211ULL;
  }
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

std::string fmt_double(double v, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*f", decimals, v);
  return buf;
}

// ---------------------------------------------------------------- statistics
double percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0.0;
  std::sort(values.begin(), values.end());
  const double pos = std::clamp(p, 0.0, 100.0) / 100.0 * static_cast<double>(values.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, values.size() - 1);
  const double f = pos - static_cast<double>(lo);
  return values[lo] * (1.0 - f) + values[hi] * f;
}

double mean(const std::vector<double>& values) {
  if (values.empty()) return 0.0;
  double s = 0;
  for (double v : values) s += v;
  return s / static_cast<double>(values.size());
}

// ---------------------------------------------------------------- torch
int configure_torch_threads(int requested) {
  int n = requested;
  if (n <= 0) {
    if (const char* env = std::getenv("VLA_THREADS")) n = std::atoi(env);
  }
  if (n <= 0) n = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  at::set_num_threads(n);
  return at::get_num_threads();
}

std::string torch_build_info() {
  std::string s =
      str_cat("torch ", TORCH_VERSION_MAJOR, ".", TORCH_VERSION_MINOR, ".", TORCH_VERSION_PATCH);
  if (torch::cuda::is_available()) {
    s += str_cat(" (CUDA, ", torch::cuda::device_count(), " device(s))");
  } else {
    s += " (CPU)";
  }
  return s;
}

void seed_everything(uint64_t seed) { torch::manual_seed(seed); }

}  // namespace vla

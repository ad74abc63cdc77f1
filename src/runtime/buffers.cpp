// FeatureSlot (triple buffer), SensorRing (timestamped ring, windows by time), ChunkBlender.
#include <dlfcn.h>

#include <cmath>

#include "runtime/runtime.h"

namespace vla::runtime {

// ---------------------------------------------------------------- FeatureSlot
FeatureSlot::FeatureSlot() = default;

void FeatureSlot::publish(Features f) {
  buf_[back_] = std::move(f);  // releases the tensor that was here on this (the writer's) thread
  uint8_t old = middle_.exchange(static_cast<uint8_t>(back_) | kDirty, std::memory_order_acq_rel);
  back_ = old & 3;
  published_.fetch_add(1, std::memory_order_acq_rel);
}

const Features& FeatureSlot::read() {
  if (middle_.load(std::memory_order_acquire) & kDirty) {
    uint8_t old = middle_.exchange(static_cast<uint8_t>(front_), std::memory_order_acq_rel);
    front_ = old & 3;
  }
  return buf_[front_];
}

// ---------------------------------------------------------------- SensorRing
const char* to_string(WindowStatus s) {
  switch (s) {
    case WindowStatus::kOk:
      return "ok";
    case WindowStatus::kShort:
      return "short";
    case WindowStatus::kGap:
      return "gap";
    case WindowStatus::kNaN:
      return "nan";
    case WindowStatus::kDropout:
      return "dropout";
  }
  return "?";
}

SensorRing::SensorRing(size_t capacity, double rate_hz) : buf_(capacity), period_(1.0 / rate_hz) {
  VLA_CHECK(capacity >= 2, "SensorRing: capacity must be >= 2, got ", capacity);
  VLA_CHECK(rate_hz > 0, "SensorRing: rate must be > 0, got ", rate_hz);
}

bool SensorRing::push(const ForceSample& s) {
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t cap = static_cast<int64_t>(buf_.size());
  if (!std::isfinite(s.t) || (head_ > 0 && s.t <= buf_[static_cast<size_t>((head_ - 1) % cap)].t)) {
    ++rejected_;
    return false;
  }
  buf_[static_cast<size_t>(head_ % cap)] = s;
  ++head_;
  return true;
}

void SensorRing::clear() {
  std::lock_guard<std::mutex> lock(mu_);
  head_ = 0;
  rejected_ = 0;
}

int64_t SensorRing::rejected() const {
  std::lock_guard<std::mutex> lock(mu_);
  return rejected_;
}

size_t SensorRing::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<size_t>(std::min<int64_t>(head_, static_cast<int64_t>(buf_.size())));
}

int64_t SensorRing::total_pushed() const {
  std::lock_guard<std::mutex> lock(mu_);
  return head_;
}

WindowStatus SensorRing::window(double t_end, int n, float* out, double timeout_s,
                                double gap_factor) const {
  VLA_CHECK(n > 0 && static_cast<size_t>(n) <= buf_.size(), "SensorRing: window of ", n,
            " samples does not fit a ring of ", buf_.size());
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t cap = static_cast<int64_t>(buf_.size());
  const int64_t avail = std::min(head_, cap);
  // Newest sample at or before t_end (samples are pushed in time order).
  int64_t last = head_ - 1;
  const int64_t oldest = head_ - avail;
  while (last >= oldest && buf_[static_cast<size_t>(last % cap)].t > t_end + 1e-9) --last;
  if (last < oldest) {
    std::fill(out, out + static_cast<size_t>(n) * 6, 0.0f);
    return avail == 0 ? WindowStatus::kShort : WindowStatus::kDropout;
  }
  const int64_t have = std::min<int64_t>(n, last - oldest + 1);
  const int64_t first = last - have + 1;
  const int64_t pad = n - have;
  WindowStatus status = WindowStatus::kOk;
  bool nan = false, gap = false;
  double prev_t = 0.0;
  for (int64_t i = 0; i < have; ++i) {
    const ForceSample& s = buf_[static_cast<size_t>((first + i) % cap)];
    float* row = out + (pad + i) * 6;
    for (int k = 0; k < 6; ++k) {
      row[k] = s.f[k];
      if (!std::isfinite(s.f[k])) nan = true;
    }
    if (i > 0 && s.t - prev_t > gap_factor * period_) gap = true;
    prev_t = s.t;
  }
  for (int64_t i = 0; i < pad; ++i) std::copy(out + pad * 6, out + pad * 6 + 6, out + i * 6);
  const double newest = buf_[static_cast<size_t>(last % cap)].t;
  if (nan) {
    status = WindowStatus::kNaN;
  } else if (t_end - newest > timeout_s) {
    status = WindowStatus::kDropout;
  } else if (gap) {
    status = WindowStatus::kGap;
  } else if (pad > 0) {
    status = WindowStatus::kShort;
  }
  return status;
}

// ---------------------------------------------------------------- ChunkBlender
BlendMode parse_blend(const std::string& name) {
  if (name == "replace") return BlendMode::kReplace;
  if (name == "ensemble") return BlendMode::kEnsemble;
  if (name == "rtc") return BlendMode::kRtc;
  throw Error(str_cat("unknown blend mode '", name, "' (expected replace | ensemble | rtc)"));
}

const char* to_string(BlendMode m) {
  switch (m) {
    case BlendMode::kReplace:
      return "replace";
    case BlendMode::kEnsemble:
      return "ensemble";
    case BlendMode::kRtc:
      return "rtc";
  }
  return "?";
}

ChunkBlender::ChunkBlender(BlendMode mode, int horizon, double ensemble_m, int rtc_prefix,
                           double step_hz)
    : mode_(mode), horizon_(horizon), m_(ensemble_m), rtc_prefix_(rtc_prefix), step_hz_(step_hz) {
  VLA_CHECK(horizon >= 1 && horizon <= kMaxHorizon, "ChunkBlender: horizon ", horizon,
            " outside 1..", kMaxHorizon);
  VLA_CHECK(rtc_prefix >= 0 && rtc_prefix <= horizon, "ChunkBlender: rtc prefix ", rtc_prefix,
            " outside 0..", horizon);
  VLA_CHECK(step_hz > 0, "ChunkBlender: step rate must be > 0");
}

void ChunkBlender::reset() {
  count_ = 0;
  next_ = 0;
}

bool ChunkBlender::value_at(int idx, double tau, Action& a) const {
  const Stored& s = hist_[static_cast<size_t>(idx)];
  const double pos = (tau - s.t) * step_hz_;
  if (pos < -1e-6 || pos > horizon_ - 1 + 1e-6) return false;
  const int i0 = std::max(0, std::min(horizon_ - 1, static_cast<int>(std::floor(pos + 1e-6))));
  const int i1 = std::min(horizon_ - 1, i0 + 1);
  const float w = static_cast<float>(std::max(0.0, std::min(1.0, pos - i0)));
  for (int k = 0; k < 3; ++k) a[k] = (1.0f - w) * s.a[i0][k] + w * s.a[i1][k];
  return true;
}

void ChunkBlender::blend(double t, const float* chunk, std::vector<Action>& out) {
  if (out.size() != static_cast<size_t>(horizon_)) out.resize(static_cast<size_t>(horizon_));
  const int n_hist = static_cast<int>(hist_.size());
  // Stored chunks, oldest first.
  auto stored = [&](int k) { return (next_ - count_ + k + n_hist) % n_hist; };
  for (int i = 0; i < horizon_; ++i) {
    const double tau = t + i / step_hz_;
    Action fresh{chunk[i * 3], chunk[i * 3 + 1], chunk[i * 3 + 2]};
    if (mode_ == BlendMode::kReplace || count_ == 0) {
      out[static_cast<size_t>(i)] = fresh;
      continue;
    }
    if (mode_ == BlendMode::kEnsemble) {
      double wsum = 0.0;
      double acc[3] = {0, 0, 0};
      int k_cover = 0;
      Action v;
      for (int k = 0; k < count_; ++k) {
        if (!value_at(stored(k), tau, v)) continue;
        const double w = std::exp(-m_ * k_cover++);
        for (int d = 0; d < 3; ++d) acc[d] += w * v[d];
        wsum += w;
      }
      const double w = std::exp(-m_ * k_cover);
      for (int d = 0; d < 3; ++d) acc[d] += w * fresh[d];
      wsum += w;
      for (int d = 0; d < 3; ++d)
        out[static_cast<size_t>(i)][d] = static_cast<float>(acc[d] / wsum);
    } else {  // rtc: previous committed plan = the newest stored (already blended) plan
      Action prev;
      if (!value_at(stored(count_ - 1), tau, prev)) {
        out[static_cast<size_t>(i)] = fresh;
      } else if (i < rtc_prefix_) {
        out[static_cast<size_t>(i)] = prev;
      } else {
        const int span = horizon_ - rtc_prefix_;
        const float w = span > 0 ? static_cast<float>(i - rtc_prefix_ + 1) / span : 1.0f;
        for (int d = 0; d < 3; ++d)
          out[static_cast<size_t>(i)][d] = (1 - w) * prev[d] + w * fresh[d];
      }
    }
  }
  // Store: ensemble keeps raw predictions; rtc keeps the executed (blended) plan.
  Stored& s = hist_[static_cast<size_t>(next_)];
  s.t = t;
  for (int i = 0; i < horizon_; ++i) {
    if (mode_ == BlendMode::kRtc) {
      s.a[static_cast<size_t>(i)] = out[static_cast<size_t>(i)];
    } else {
      s.a[static_cast<size_t>(i)] = {chunk[i * 3], chunk[i * 3 + 1], chunk[i * 3 + 2]};
    }
  }
  next_ = (next_ + 1) % n_hist;
  count_ = std::min(count_ + 1, n_hist);
}

// ---------------------------------------------------------------- BLAS threads
void set_blas_threads(int n) {
  using Fn = void (*)(int);
  static Fn fn = reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  if (fn) fn(n);
}

}  // namespace vla::runtime

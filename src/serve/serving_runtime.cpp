// The dual-rate runtime behind `vla serve`: a VLM thread fed by a newest-wins mailbox of frames,
// the 650 Hz force/torque ring fed by each request's samples, and the action expert run per
// request on the newest features and the freshest 100 ms window (same policy code as `vla run`).
#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <fstream>
#include <future>
#include <limits>
#include <mutex>
#include <thread>

#include "runtime/runtime.h"
#include "serve/serve.h"
#include "sim/sim.h"

namespace vla::serve {

namespace {
// VmRSS of this process (Linux /proc), bytes; 0 when unreadable.
int64_t resident_bytes() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6)) * 1024;  // kB
  return 0;
}
}  // namespace

struct ServingRuntime::Impl {
  std::shared_ptr<policy::Policy> policy;
  ServeOptions opt;
  std::vector<int> used;  // view indices given to the VLM
  int64_t t0_ns = now_ns();

  // VLM mailbox (newest wins) and thread.
  std::mutex job_mu;
  std::condition_variable job_cv;
  bool job_ready = false, stopping = false;
  std::vector<Image> job_views;
  std::string job_prompt, last_prompt;
  int64_t job_t_ns = 0;
  std::thread vlm;
  bool job_reset = false;    // a request asked for a new episode
  torch::Tensor first_feat;  // scene memory (VLM thread only)
  std::string first_prompt;

  // Newest features.
  std::mutex feat_mu;
  torch::Tensor feat;
  int64_t version = -1, feat_t_ns = 0;

  // Force/torque stream (robot clock).
  std::mutex force_mu;
  runtime::SensorRing ring{4096};
  double newest_force_t = -1e300;
  std::atomic<int64_t> last_force_ns{0}, last_frames_ns{0};

  // The expert runs on its own thread, so that a request can stop waiting at its deadline; a late
  // chunk still becomes the last good one.
  struct Chunk {
    std::string status;  // "act" | "expert_error"
    std::vector<std::array<float, 3>> actions;
    double expert_ms = 0;
  };
  struct ExpertJob {
    torch::Tensor feat, window, state;
    std::promise<Chunk> done;
  };
  std::mutex ex_mu;
  std::condition_variable ex_cv;
  std::deque<std::shared_ptr<ExpertJob>> ex_jobs;
  bool ex_stopping = false;
  std::thread expert;
  std::mutex good_mu;
  std::vector<std::array<float, 3>> good;  // last good chunk (clipped) and when it was issued
  int64_t good_ns = 0;

  void expert_loop() {
    at::set_num_threads(1);
    c10::InferenceMode guard;
    for (;;) {
      std::shared_ptr<ExpertJob> job;
      std::deque<std::shared_ptr<ExpertJob>> superseded;
      {
        std::unique_lock<std::mutex> lock(ex_mu);
        ex_cv.wait(lock, [&] { return ex_stopping || !ex_jobs.empty(); });
        if (ex_jobs.empty()) return;
        // Newest wins: when requests queued up behind a slow call (a loaded machine, several
        // clients), only the newest runs; a FIFO would make every later request miss its
        // deadline too. The older ones are answered from the last good chunk.
        job = ex_jobs.back();
        ex_jobs.pop_back();
        superseded.swap(ex_jobs);
      }
      for (auto& old : superseded) {
        Chunk c;
        c.status = "fallback";
        c.actions = rest_of_good(now_ns());
        old->done.set_value(std::move(c));
      }
      try {
        job->done.set_value(run_expert(*job));
      } catch (...) {
        job->done.set_exception(std::current_exception());
      }
    }
  }

  Chunk run_expert(const ExpertJob& job) {
    const int H = policy->horizon();
    const int64_t t0 = now_ns();
    auto c = policy->act(job.feat, job.window, job.state).to(torch::kFloat).contiguous();
    Chunk out;
    out.expert_ms = (now_ns() - t0) * 1e-6;
    VLA_CHECK(c.numel() == H * 3, "serve: expert returned ", c.numel(), " values");
    const float* p = c.data_ptr<float>();
    out.actions.assign(static_cast<size_t>(H), {0.0f, 0.0f, 0.0f});
    for (int i = 0; i < H * 3; ++i)
      if (!std::isfinite(p[i])) {
        out.status = "expert_error";
        return out;
      }
    const float lim = static_cast<float>(opt.max_action_m);
    for (int i = 0; i < H; ++i)
      for (int k = 0; k < 3; ++k)
        out.actions[static_cast<size_t>(i)][k] = std::clamp(p[i * 3 + k], -lim, lim);
    out.status = "act";
    std::lock_guard<std::mutex> lock(good_mu);
    good = out.actions;
    good_ns = now_ns();
    return out;
  }

  // The rest of the last good chunk at `now` (its action i applies i/80 s after it was issued);
  // zeros (hold) past its end or when there is none.
  std::vector<std::array<float, 3>> rest_of_good(int64_t now) {
    std::vector<std::array<float, 3>> out(static_cast<size_t>(policy->horizon()),
                                          {0.0f, 0.0f, 0.0f});
    std::lock_guard<std::mutex> lock(good_mu);
    if (good.empty()) return out;
    const auto skip = static_cast<size_t>((now - good_ns) * 1e-9 * runtime::kActionStepHz);
    for (size_t i = 0; i + skip < good.size() && i < out.size(); ++i) out[i] = good[i + skip];
    return out;
  }

  // Telemetry.
  mutable std::mutex met_mu;
  std::map<std::string, int64_t> by_status;
  int64_t errors = 0, vlm_calls = 0, vlm_errors = 0, connections = 0;
  static constexpr double kBuckets[] = {0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0};
  std::array<int64_t, std::size(kBuckets) + 1> latency_counts{};
  double latency_sum = 0, last_age = -1;

  void vlm_loop() {
    at::set_num_threads(opt.vlm_threads);
    c10::InferenceMode guard;
    for (;;) {
      std::vector<Image> views;
      std::string prompt;
      int64_t t_ns = 0;
      {
        std::unique_lock<std::mutex> lock(job_mu);
        job_cv.wait(lock, [&] { return job_ready || stopping; });
        if (stopping) return;
        views = std::move(job_views);
        prompt = job_prompt;
        t_ns = job_t_ns;
        job_ready = false;
        if (job_reset) first_feat = torch::Tensor();
        job_reset = false;
      }
      try {
        auto f = policy->encode(views, prompt);
        runtime::check_features(f);
        // Scene memory: the first features since a reset or since the instruction changed.
        if (!first_feat.defined() || prompt != first_prompt) {
          first_feat = f;
          first_prompt = prompt;
        }
        f = policy->expert_features(first_feat, f);
        {
          std::lock_guard<std::mutex> lock(feat_mu);
          feat = f;
          ++version;
          feat_t_ns = t_ns;
        }
        std::lock_guard<std::mutex> lock(met_mu);
        ++vlm_calls;
      } catch (const std::exception& e) {
        log_warn("serve: VLM call failed (serving older features): ", e.what());
        std::lock_guard<std::mutex> lock(met_mu);
        ++vlm_errors;
      }
    }
  }

  // A request's frames -> the VLM thread (newest wins: a pending older job is replaced), its force
  // samples -> the ring (stamps must increase; others are refused and counted).
  void observe(const InferRequest& req, int64_t t_ns) {
    VLA_CHECK(req.state.empty() || req.state.size() == 3,
              "request: 'state' must be float32 [3] (needle tip x y z, m), got ", req.state.size(),
              " values");
    for (float v : req.state) VLA_CHECK(std::isfinite(v), "request: 'state' is not finite");
    auto views = views_of(req);
    if (req.reset) {
      {
        std::lock_guard<std::mutex> lock(job_mu);
        job_reset = true;
      }
      // The last episode's features describe another scene: hold until this one's are encoded
      // (versions keep counting up).
      std::lock_guard<std::mutex> lock(feat_mu);
      feat = torch::Tensor();
    }
    if (!views.empty()) {
      std::lock_guard<std::mutex> lock(job_mu);
      if (!req.prompt.empty()) last_prompt = req.prompt;
      VLA_CHECK(!last_prompt.empty(), "request: frames without a 'prompt' (the instruction)");
      job_views = std::move(views);
      job_prompt = last_prompt;
      job_t_ns = t_ns;
      job_ready = true;
      last_frames_ns = t_ns;
    }
    job_cv.notify_one();
    std::lock_guard<std::mutex> lock(force_mu);
    if (req.reset) {  // a new episode: the robot's force clock may start over
      ring.clear();
      newest_force_t = -1e300;
    }
    bool any = false;
    for (size_t i = 0; i < req.force.size(); ++i)
      if (ring.push({req.force_t[i], req.force[i]})) {
        any = true;
        newest_force_t = req.force_t[i];
      }
    if (any) last_force_ns = t_ns;
  }

  // Request images -> the policy's view list (unused views black), or empty when none came.
  std::vector<Image> views_of(const InferRequest& req) const {
    if (req.images.empty()) return {};
    const auto& names = sim::view_names();
    for (const auto& [name, im] : req.images) {
      (void)im;
      VLA_CHECK(std::find(names.begin(), names.end(), name) != names.end(),
                "request: unknown view '", name, "' (this policy reads ",
                metadata()["views"].dump(), ")");
    }
    const int w = policy->image_width(), h = policy->image_height();
    std::vector<Image> views(static_cast<size_t>(policy->num_views()), make_image(w, h, 3, 0));
    for (int i : used) {
      const std::string& name = names[static_cast<size_t>(i)];
      auto it = req.images.find(name);
      VLA_CHECK(it != req.images.end(), "request: view '", name, "' missing (this policy reads ",
                metadata()["views"].dump(), ")");
      VLA_CHECK(it->second.width == w && it->second.height == h, "request: view '", name, "' is ",
                it->second.width, "x", it->second.height, "; this policy was trained on ", w, "x",
                h, " (resize on the robot with the same filter as its training frames)");
      views[static_cast<size_t>(i)] = it->second;
    }
    return views;
  }

  nlohmann::json metadata() const {
    nlohmann::json views = nlohmann::json::array();
    for (int i : used) views.push_back(sim::view_names()[static_cast<size_t>(i)]);
    return {{"server", "dualrate"},
            {"policy", policy->info().value("dir", std::string("policy"))},
            {"views", views},
            {"image_width", policy->image_width()},
            {"image_height", policy->image_height()},
            {"horizon", policy->horizon()},
            {"action_dim", 3},
            {"action_units", "m: Cartesian target delta of the needle tip per 80 Hz step"},
            {"action_step_hz", runtime::kActionStepHz},
            {"action_clip_m", opt.max_action_m},
            {"state", "float32 [3]: needle tip x y z (m)"},
            {"force_hz", runtime::kSensorHz},
            {"force_window", policy->sensor_window()},
            {"force_columns", {"fx", "fy", "fz", "tx", "ty", "tz"}},
            {"max_staleness_s", opt.max_staleness_s},
            {"stale_input_s", opt.stale_input_s},
            {"force_stop_s", opt.force_stop_s}};
  }
};

ServingRuntime::ServingRuntime(std::shared_ptr<policy::Policy> policy, ServeOptions opt)
    : impl_(std::make_unique<Impl>()) {
  VLA_CHECK(policy, "serve: no policy");
  VLA_CHECK(opt.max_action_m > 0 && opt.max_staleness_s > 0 && opt.stale_input_s > 0 &&
                opt.force_stop_s >= opt.stale_input_s,
            "serve: limits must be > 0");
  impl_->policy = std::move(policy);
  impl_->opt = opt;
  impl_->used = impl_->policy->config().use_views;
  if (impl_->used.empty())
    for (int i = 0; i < impl_->policy->num_views(); ++i) impl_->used.push_back(i);
  for (int i : impl_->used)
    VLA_CHECK(i >= 0 && i < static_cast<int>(sim::view_names().size()), "serve: policy view ", i,
              " has no camera name");
  // The heap stays resident as in `vla run` (RuntimeConfig::keep_heap; no scheduling change here).
  for (const auto& n : runtime::apply_realtime(runtime::RuntimeConfig{}).notes)
    log_warn("serve: ", n);
  impl_->vlm = std::thread([this] { impl_->vlm_loop(); });
  impl_->expert = std::thread([this] { impl_->expert_loop(); });
}

ServingRuntime::~ServingRuntime() {
  {
    std::lock_guard<std::mutex> lock(impl_->job_mu);
    impl_->stopping = true;
  }
  impl_->job_cv.notify_all();
  impl_->vlm.join();
  {
    std::lock_guard<std::mutex> lock(impl_->ex_mu);
    impl_->ex_stopping = true;
  }
  impl_->ex_cv.notify_all();
  impl_->expert.join();
}

nlohmann::json ServingRuntime::metadata() const { return impl_->metadata(); }

void ServingRuntime::observe(const InferRequest& req) { impl_->observe(req, now_ns()); }

InferReply ServingRuntime::infer(const InferRequest& req) {
  Impl& m = *impl_;
  const int64_t t_start = now_ns();
  InferReply r;
  r.request_id = req.request_id;
  r.has_request_id = req.has_request_id;
  VLA_CHECK(req.state.size() == 3,
            "request: 'state' must be float32 [3] (needle tip x y z, m), got ", req.state.size(),
            " values");
  m.observe(req, t_start);
  torch::Tensor window = torch::zeros({m.policy->sensor_window(), 6});
  runtime::WindowStatus ws;
  {
    std::lock_guard<std::mutex> lock(m.force_mu);
    r.obs_time = m.newest_force_t > -1e300 ? m.newest_force_t : 0.0;
    ws = m.ring.window(m.newest_force_t, m.policy->sensor_window(), window.data_ptr<float>(), 1e9);
  }
  // Seconds since force samples / frames last arrived (server clock; infinite: never).
  auto idle_s = [t_start](int64_t last_ns) {
    return last_ns == 0 ? std::numeric_limits<double>::infinity() : (t_start - last_ns) * 1e-9;
  };
  const double force_idle_s = idle_s(m.last_force_ns);
  r.stale_force = force_idle_s > m.opt.stale_input_s;
  r.stale_frames = idle_s(m.last_frames_ns) > m.opt.stale_input_s;
  torch::Tensor feat;
  {
    std::lock_guard<std::mutex> lock(m.feat_mu);
    feat = m.feat;
    r.feature_version = m.version;
    r.feature_age_s = m.version >= 0 ? (t_start - m.feat_t_ns) * 1e-9 : -1.0;
  }
  const int H = m.policy->horizon();
  r.actions.assign(static_cast<size_t>(H), {0.0f, 0.0f, 0.0f});  // hold
  double expert_ms = 0;
  // The runtime's tick gate; no startup timeout here (a server waits for its first frames).
  runtime::TickInputs gin;
  gin.have_features = feat.defined();
  gin.feature_age_s = r.feature_age_s;
  gin.sensor = ws;
  gin.sensor_idle_s = force_idle_s;
  runtime::TickLimits lim;
  lim.max_staleness_s = m.opt.max_staleness_s;
  lim.sensor_stale_s = m.opt.stale_input_s;
  lim.sensor_stop_s = m.opt.force_stop_s;
  const runtime::TickGate gate = runtime::gate_tick(gin, lim);
  if (gate.status != runtime::TickStatus::kAct) {
    r.status = runtime::to_string(gate.status);
  } else {
    auto job = std::make_shared<Impl::ExpertJob>();
    job->feat = feat;
    job->window = window;
    job->state = torch::tensor(req.state);
    auto done = job->done.get_future();
    {
      std::lock_guard<std::mutex> lock(m.ex_mu);
      m.ex_jobs.push_back(job);
    }
    m.ex_cv.notify_one();
    const double deadline_ms = req.deadline_ms >= 0 ? req.deadline_ms : m.opt.deadline_ms;
    const int64_t left_ns = t_start + static_cast<int64_t>(deadline_ms * 1e6) - now_ns();
    if (deadline_ms > 0 && done.wait_for(std::chrono::nanoseconds(std::max<int64_t>(0, left_ns))) !=
                               std::future_status::ready) {
      r.status = "fallback";
      r.actions = m.rest_of_good(now_ns());
    } else {
      Impl::Chunk c = done.get();  // rethrows the expert's exception
      r.status = c.status;
      r.actions = std::move(c.actions);
      expert_ms = c.expert_ms;
    }
  }
  const double total_ms = (now_ns() - t_start) * 1e-6;
  r.timing_ms = {{"expert_ms", expert_ms}, {"infer_ms", total_ms}};
  {
    std::lock_guard<std::mutex> lock(m.met_mu);
    ++m.by_status[r.status];
    size_t b = 0;
    while (b < std::size(Impl::kBuckets) && total_ms * 1e-3 > Impl::kBuckets[b]) ++b;
    ++m.latency_counts[b];
    m.latency_sum += total_ms * 1e-3;
    m.last_age = r.feature_age_s;
  }
  return r;
}

void ServingRuntime::note_error() {
  std::lock_guard<std::mutex> lock(impl_->met_mu);
  ++impl_->errors;
}

void ServingRuntime::note_connection(int delta) {
  std::lock_guard<std::mutex> lock(impl_->met_mu);
  impl_->connections += delta;
}

std::string ServingRuntime::prometheus_metrics() const {
  // The text exposition format (prometheus.io/docs/instrumenting/exposition_formats) is a few
  // lines per metric; prometheus-cpp would bring its own HTTP server beside Beast.
  const Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.met_mu);
  const double up = (now_ns() - m.t0_ns) * 1e-9;
  std::string s;
  auto head = [&](const char* name, const char* type, const char* help) {
    s += str_cat("# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n");
  };
  head("dualrate_requests_total", "counter", "Inference requests answered, by status.");
  for (const auto& [status, n] : m.by_status) {
    s += str_cat("dualrate_requests_total{status=\"", status, "\"} ", n, "\n");
  }
  head("dualrate_request_errors_total", "counter", "Requests answered with an error.");
  s += str_cat("dualrate_request_errors_total ", m.errors, "\n");
  head("dualrate_request_latency_seconds", "histogram",
       "Server time per request, decoded request to reply (server clock).");
  int64_t cum = 0;
  for (size_t b = 0; b < std::size(Impl::kBuckets); ++b) {
    cum += m.latency_counts[b];
    s += str_cat("dualrate_request_latency_seconds_bucket{le=\"", Impl::kBuckets[b], "\"} ", cum,
                 "\n");
  }
  cum += m.latency_counts.back();
  s += str_cat("dualrate_request_latency_seconds_bucket{le=\"+Inf\"} ", cum, "\n");
  s += str_cat("dualrate_request_latency_seconds_sum ", fmt_double(m.latency_sum, 6), "\n");
  s += str_cat("dualrate_request_latency_seconds_count ", cum, "\n");
  head("dualrate_vlm_calls_total", "counter", "Completed VLM calls (frames -> VL features).");
  s += str_cat("dualrate_vlm_calls_total ", m.vlm_calls, "\n");
  head("dualrate_vlm_errors_total", "counter", "Failed VLM calls (exception or non-finite).");
  s += str_cat("dualrate_vlm_errors_total ", m.vlm_errors, "\n");
  head("dualrate_vlm_rate_hz", "gauge", "Completed VLM calls per second since start.");
  s += str_cat("dualrate_vlm_rate_hz ", fmt_double(up > 0 ? m.vlm_calls / up : 0.0, 3), "\n");
  head("dualrate_feature_age_seconds", "gauge", "Age of the VL features at the last request.");
  s += str_cat("dualrate_feature_age_seconds ", fmt_double(m.last_age, 4), "\n");
  head("dualrate_force_samples_rejected_total", "counter",
       "Force/torque samples refused (stamp repeated, backwards or not finite).");
  s += str_cat("dualrate_force_samples_rejected_total ", m.ring.rejected(), "\n");
  head("process_resident_memory_bytes", "gauge", "Resident memory of the server process.");
  s += str_cat("process_resident_memory_bytes ", resident_bytes(), "\n");
  head("dualrate_connections", "gauge", "Open websocket connections.");
  s += str_cat("dualrate_connections ", m.connections, "\n");
  return s;
}

}  // namespace vla::serve

// NeedleEnv: MJCF generation, reset randomisation, 650 Hz stepping, tissue model, outcomes.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "sim/env_impl.h"

namespace vla::sim {
namespace {

constexpr double kDt = 1.0 / kPhysicsHz;
constexpr double kNeedleLen = 0.05;    // needle base (sensor) to tip (m)
constexpr double kPortRadius = 0.006;  // m
constexpr std::array<double, 3> kLimLo = {-0.1, -0.08, 0.05};
constexpr std::array<double, 3> kLimHi = {0.1, 0.08, 0.2};
constexpr double kSurfaceLo = 0.035, kSurfaceHi = 0.045;

struct ColorDef {
  const char* en;
  const char* ko;
  std::array<uint8_t, 3> rgb;
};
const std::vector<ColorDef>& colors() {
  static const std::vector<ColorDef> c = {
      {"red", "빨간색", {220, 30, 30}},     {"green", "초록색", {30, 180, 50}},
      {"blue", "파란색", {30, 70, 230}},    {"yellow", "노란색", {235, 215, 30}},
      {"purple", "보라색", {150, 50, 210}}, {"orange", "주황색", {250, 125, 20}},
  };
  return c;
}

std::string vec3(double a, double b, double c) {
  char buf[128];
  std::snprintf(buf, sizeof(buf), "%.6g %.6g %.6g", a, b, c);
  return buf;
}

// xyaxes for a camera at `pos` looking at `at` with world z up.
std::string look_at(std::array<double, 3> pos, std::array<double, 3> at) {
  double z[3] = {pos[0] - at[0], pos[1] - at[1], pos[2] - at[2]};
  double n = std::sqrt(z[0] * z[0] + z[1] * z[1] + z[2] * z[2]);
  for (double& v : z) v /= n;
  double up[3] = {0, 0, 1};
  if (std::fabs(z[2]) > 0.999) {
    up[1] = 1;
    up[2] = 0;
  }
  double x[3] = {up[1] * z[2] - up[2] * z[1], up[2] * z[0] - up[0] * z[2],
                 up[0] * z[1] - up[1] * z[0]};
  n = std::sqrt(x[0] * x[0] + x[1] * x[1] + x[2] * x[2]);
  for (double& v : x) v /= n;
  double y[3] = {z[1] * x[2] - z[2] * x[1], z[2] * x[0] - z[0] * x[2], z[0] * x[1] - z[1] * x[0]};
  return vec3(x[0], x[1], x[2]) + " " + vec3(y[0], y[1], y[2]);
}

std::string make_xml(const EnvConfig& cfg) {
  std::string x;
  x += "<mujoco model=\"needle_insertion\">\n";
  x += "  <compiler angle=\"radian\" autolimits=\"true\"/>\n";
  x += "  <option timestep=\"" + std::to_string(kDt) +
       "\" gravity=\"0 0 -9.81\" integrator=\"Euler\" cone=\"pyramidal\"/>\n";
  x += "  <size nconmax=\"50\" njmax=\"200\"/>\n";
  x += "  <visual>\n    <global offwidth=\"" + std::to_string(cfg.width) + "\" offheight=\"" +
       std::to_string(cfg.height) + "\" fovy=\"45\"/>\n";
  x += "    <quality shadowsize=\"0\" offsamples=\"0\"/>\n";
  x += "    <headlight ambient=\"0.3 0.3 0.3\" diffuse=\"0.35 0.35 0.35\" specular=\"0 0 0\"/>\n";
  x += "    <map znear=\"0.005\" zfar=\"20\"/>\n  </visual>\n";
  x += "  <default>\n    <geom contype=\"0\" conaffinity=\"0\" friction=\"0.3 0.005 0.0001\"/>\n";
  x += "    <joint limited=\"true\"/>\n  </default>\n";
  x += "  <worldbody>\n";
  x += "    <light directional=\"true\" pos=\"0 0 1\" dir=\"0 0.3 -1\" diffuse=\"0.35 0.35 0.35\" "
       "specular=\"0 0 0\" castshadow=\"false\"/>\n";
  x += "    <geom name=\"floor\" type=\"plane\" size=\"0.4 0.4 0.01\" rgba=\"0.25 0.27 0.3 1\"/>\n";
  // Tissue block: a soft box whose top face is the surface (moved per episode).
  x += "    <geom name=\"tissue\" type=\"box\" size=\"0.09 0.065 0.03\" pos=\"0 0 0.01\" "
       "rgba=\"0.80 0.76 0.70 1\" contype=\"1\" conaffinity=\"1\" solref=\"0.008 1\" "
       "solimp=\"0.9 0.98 0.002\"/>\n";
  for (int i = 0; i < 6; ++i) {
    x += "    <geom name=\"port" + std::to_string(i) + "\" type=\"cylinder\" size=\"" +
         std::to_string(kPortRadius) + " 0.0004\" pos=\"0 0 -1\" rgba=\"1 0 0 1\"/>\n";
    x += "    <geom name=\"hole" + std::to_string(i) +
         "\" type=\"cylinder\" size=\"0.0018 0.0005\" pos=\"0 0 -1\" rgba=\"0.08 0.05 0.05 1\"/>\n";
  }
  const std::array<double, 3> at = {0, 0, 0.05};
  x += "    <camera name=\"top\" pos=\"0 0 0.36\" xyaxes=\"1 0 0 0 1 0\" fovy=\"45\"/>\n";
  x += "    <camera name=\"front\" pos=\"0 -0.28 0.24\" xyaxes=\"" + look_at({0, -0.28, 0.24}, at) +
       "\" fovy=\"45\"/>\n";
  x += "    <camera name=\"left\" pos=\"-0.28 0 0.24\" xyaxes=\"" + look_at({-0.28, 0, 0.24}, at) +
       "\" fovy=\"45\"/>\n";
  x += "    <camera name=\"right\" pos=\"0.28 0 0.24\" xyaxes=\"" + look_at({0.28, 0, 0.24}, at) +
       "\" fovy=\"45\"/>\n";
  // Cartesian stage: three position-controlled slide joints; the needle hangs below it.
  x += "    <body name=\"stage\" pos=\"0 0 0\">\n";
  x += "      <joint name=\"sx\" type=\"slide\" axis=\"1 0 0\" range=\"" +
       std::to_string(kLimLo[0]) + " " + std::to_string(kLimHi[0]) +
       "\" damping=\"60\" armature=\"0.05\"/>\n";
  x += "      <joint name=\"sy\" type=\"slide\" axis=\"0 1 0\" range=\"" +
       std::to_string(kLimLo[1]) + " " + std::to_string(kLimHi[1]) +
       "\" damping=\"60\" armature=\"0.05\"/>\n";
  x += "      <joint name=\"sz\" type=\"slide\" axis=\"0 0 1\" range=\"" +
       std::to_string(kLimLo[2]) + " " + std::to_string(kLimHi[2]) +
       "\" damping=\"60\" armature=\"0.05\"/>\n";
  x += "      <geom name=\"carriage\" type=\"box\" size=\"0.012 0.012 0.008\" pos=\"0 0 0.02\" "
       "mass=\"0.3\" rgba=\"0.55 0.55 0.6 1\"/>\n";
  x += "      <geom name=\"arm\" type=\"cylinder\" size=\"0.003 0.006\" pos=\"0 0 0.006\" "
       "mass=\"0.01\" rgba=\"0.4 0.4 0.45 1\"/>\n";
  x += "      <body name=\"needle\" pos=\"0 0 0\">\n";
  x += "        <site name=\"ft\" pos=\"0 0 0\" size=\"0.002\" group=\"5\"/>\n";
  x += "        <geom name=\"hub\" type=\"cylinder\" size=\"0.0035 0.004\" pos=\"0 0 -0.004\" "
       "mass=\"0.008\" rgba=\"0.2 0.6 0.9 1\"/>\n";
  x += "        <geom name=\"shaft\" type=\"capsule\" fromto=\"0 0 -0.008 0 0 " +
       std::to_string(-(kNeedleLen - 0.0006)) +
       "\" size=\"0.0006\" mass=\"0.002\" rgba=\"0.85 0.85 0.9 1\" contype=\"1\" "
       "conaffinity=\"1\"/>\n";
  x += "        <geom name=\"shaft_vis\" type=\"capsule\" fromto=\"0 0 -0.008 0 0 " +
       std::to_string(-(kNeedleLen - 0.0012)) +
       "\" size=\"0.0012\" mass=\"0.0005\" rgba=\"0.85 0.85 0.9 1\"/>\n";
  x += "        <camera name=\"needle\" pos=\"0 -0.035 0.0\" xyaxes=\"" +
       look_at({0, -0.035, 0.0}, {0, 0, -0.06}) + "\" fovy=\"60\"/>\n";
  x += "      </body>\n    </body>\n  </worldbody>\n";
  x += "  <actuator>\n";
  for (const char* j : {"sx", "sy", "sz"}) {
    x += std::string("    <position name=\"a") + j + "\" joint=\"" + j +
         "\" kp=\"3000\" forcelimited=\"true\" forcerange=\"-60 60\"/>\n";
  }
  x += "  </actuator>\n";
  x += "  <sensor>\n    <force name=\"ft_force\" site=\"ft\"/>\n"
       "    <torque name=\"ft_torque\" site=\"ft\"/>\n  </sensor>\n";
  x += "</mujoco>\n";
  return x;
}

int require_id(const mjModel* m, mjtObj type, const char* name) {
  int id = mj_name2id(m, type, name);
  VLA_CHECK(id >= 0, "sim: model has no object named '", name, "'");
  return id;
}

}  // namespace

const std::vector<std::string>& view_names() {
  static const std::vector<std::string> v = {"top", "front", "left", "right", "needle"};
  return v;
}

void NeedleEnv::Impl::build_model() {
  xml = make_xml(cfg);
  auto vfs = std::make_unique<mjVFS>();
  mj_defaultVFS(vfs.get());
  VLA_CHECK(mj_makeEmptyFileVFS(vfs.get(), "needle.xml", static_cast<int>(xml.size())) == 0,
            "sim: cannot create MuJoCo VFS file");
  int idx = mj_findFileVFS(vfs.get(), "needle.xml");
  std::memcpy(vfs->filedata[idx], xml.data(), xml.size());
  char err[1000] = {0};
  m = mj_loadXML("needle.xml", vfs.get(), err, sizeof(err));
  mj_deleteVFS(vfs.get());
  VLA_CHECK(m != nullptr, "sim: MuJoCo rejected the generated model: ", err);
  d = mj_makeData(m);
  stage_body = require_id(m, mjOBJ_BODY, "stage");
  needle_body = require_id(m, mjOBJ_BODY, "needle");
  shaft_geom = require_id(m, mjOBJ_GEOM, "shaft");
  tissue_geom = require_id(m, mjOBJ_GEOM, "tissue");
  for (int i = 0; i < 6; ++i) {
    port_geoms.push_back(require_id(m, mjOBJ_GEOM, ("port" + std::to_string(i)).c_str()));
    port_ring_geoms.push_back(require_id(m, mjOBJ_GEOM, ("hole" + std::to_string(i)).c_str()));
  }
  for (const auto& v : view_names()) cam_ids.push_back(require_id(m, mjOBJ_CAMERA, v.c_str()));
  force_adr = m->sensor_adr[require_id(m, mjOBJ_SENSOR, "ft_force")];
  torque_adr = m->sensor_adr[require_id(m, mjOBJ_SENSOR, "ft_torque")];
  needle_len = kNeedleLen;
}

std::array<double, 3> NeedleEnv::Impl::tip() const {
  return {d->qpos[0], d->qpos[1], d->qpos[2] - needle_len};
}

NeedleEnv::NeedleEnv(EnvConfig cfg) : impl_(std::make_unique<Impl>()) {
  VLA_CHECK(cfg.width >= 16 && cfg.height >= 16 && cfg.width <= 4096 && cfg.height <= 4096,
            "sim: resolution ", cfg.width, "x", cfg.height, " out of range (16..4096)");
  VLA_CHECK(cfg.num_views >= 1 && cfg.num_views <= kNumViews, "sim: num_views ", cfg.num_views,
            " must be 1..", kNumViews);
  VLA_CHECK(cfg.num_ports >= 3 && cfg.num_ports <= 6, "sim: num_ports ", cfg.num_ports,
            " must be 3..6");
  VLA_CHECK(cfg.force_noise_std >= 0, "sim: force_noise_std must be >= 0");
  VLA_CHECK(cfg.time_limit_s > 0, "sim: time_limit_s must be > 0");
  impl_->cfg = cfg;
  impl_->build_model();
  if (cfg.render) impl_->renderer = std::make_unique<Renderer>(impl_->m, cfg.width, cfg.height);
  reset(0);
}

NeedleEnv::~NeedleEnv() {
  impl_->renderer.reset();
  if (impl_->d) mj_deleteData(impl_->d);
  if (impl_->m) mj_deleteModel(impl_->m);
}

void NeedleEnv::reset(uint64_t seed) { reset(seed, -1); }

void NeedleEnv::reset(uint64_t seed, int target_port) {
  Impl& s = *impl_;
  const EnvConfig& cfg = s.cfg;
  VLA_CHECK(target_port < cfg.num_ports, "sim: target_port ", target_port, " >= num_ports ",
            cfg.num_ports);
  std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ULL + 12345);
  auto uni = [&](double lo, double hi) {
    return lo + (hi - lo) * std::uniform_real_distribution<double>(0.0, 1.0)(rng);
  };
  s.seed = seed;
  s.noise_rng.seed(seed ^ 0xA5A5A5A5DEADBEEFULL);
  s.normal.reset();

  // Tissue.
  TissueParams& t = s.tissue;
  t = TissueParams{};
  t.surface_z = uni(kSurfaceLo, kSurfaceHi);
  t.puncture_force = uni(0.6, 1.4);
  t.puncture_depth = uni(0.001, 0.002);
  t.friction_k = uni(20, 60);
  t.friction_f0 = uni(0.1, 0.3);

  // Ports: distinct colours, positions at least 3 cm apart.
  std::vector<int> order(colors().size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int>(i);
  std::shuffle(order.begin(), order.end(), rng);
  s.ports.clear();
  for (int i = 0; i < cfg.num_ports; ++i) {
    PortInfo p;
    const ColorDef& c = colors()[order[i]];
    p.color = c.en;
    p.color_ko = c.ko;
    p.rgb = c.rgb;
    p.radius = kPortRadius;
    for (int attempt = 0;; ++attempt) {
      p.pos = {uni(-0.065, 0.065), uni(-0.045, 0.045), t.surface_z};
      bool ok = true;
      for (const auto& q : s.ports) {
        if (std::hypot(p.pos[0] - q.pos[0], p.pos[1] - q.pos[1]) < 0.03) ok = false;
      }
      if (ok || attempt > 1000) break;
    }
    s.ports.push_back(p);
  }
  int tgt = static_cast<int>(std::uniform_int_distribution<int>(0, cfg.num_ports - 1)(rng));
  int phrasing = std::uniform_int_distribution<int>(0, num_phrasings() - 1)(rng);
  s.target = target_port >= 0 ? target_port : tgt;
  s.instruction = make_instruction(s.ports[s.target], phrasing);
  std::array<double, 3> start = {uni(-0.05, 0.05), uni(-0.04, 0.04), uni(0.12, 0.15)};

  // Push the layout into the model.
  mjModel* m = s.m;
  m->geom_pos[3 * s.tissue_geom + 2] = t.surface_z - m->geom_size[3 * s.tissue_geom + 2];
  for (int i = 0; i < 6; ++i) {
    int g = s.port_geoms[i], h = s.port_ring_geoms[i];
    if (i < cfg.num_ports) {
      const PortInfo& p = s.ports[i];
      m->geom_pos[3 * g + 0] = p.pos[0];
      m->geom_pos[3 * g + 1] = p.pos[1];
      m->geom_pos[3 * g + 2] = t.surface_z + 0.0004;
      m->geom_pos[3 * h + 0] = p.pos[0];
      m->geom_pos[3 * h + 1] = p.pos[1];
      m->geom_pos[3 * h + 2] = t.surface_z + 0.0005;
      for (int k = 0; k < 3; ++k) m->geom_rgba[4 * g + k] = p.rgb[k] / 255.0f;
      m->geom_rgba[4 * g + 3] = 1.0f;
      m->geom_rgba[4 * h + 3] = 1.0f;
    } else {
      m->geom_pos[3 * g + 2] = -1.0;  // hidden under the floor
      m->geom_pos[3 * h + 2] = -1.0;
      m->geom_rgba[4 * g + 3] = 0.0f;
      m->geom_rgba[4 * h + 3] = 0.0f;
    }
  }
  m->geom_contype[s.shaft_geom] = 1;
  m->geom_conaffinity[s.shaft_geom] = 1;

  mj_resetData(m, s.d);
  for (int k = 0; k < 3; ++k) {
    s.d->qpos[k] = start[k];
    s.d->ctrl[k] = start[k];
    s.cmd[k] = start[k];
    s.chunk_base[k] = start[k];
  }
  s.d->qfrc_applied[2] = m->body_subtreemass[s.stage_body] * 9.81;
  mj_forward(m, s.d);
  for (int k = 0; k < 3; ++k) {
    s.bias[k] = s.d->sensordata[s.force_adr + k];
    s.bias[3 + k] = s.d->sensordata[s.torque_adr + k];
  }
  s.chunk.clear();
  s.chunk_start_step = 0;
  s.last_recorded_action = -1;
  s.steps = 0;
  s.latched = -1;
  s.punctured = false;
  s.force_log.clear();
  s.force_log.reserve(static_cast<size_t>(std::min(cfg.time_limit_s, 60.0) * kPhysicsHz) + 16);
  s.action_log.clear();
  s.outcome = Outcome{};
}

const std::string& NeedleEnv::instruction() const { return impl_->instruction; }

void NeedleEnv::set_chunk(const Chunk& chunk) {
  Impl& s = *impl_;
  VLA_CHECK(chunk.size() <= static_cast<size_t>(kChunkSize), "sim: chunk has ", chunk.size(),
            " actions, at most ", kChunkSize, " allowed");
  s.chunk.clear();
  for (const Action& a : chunk) {
    Action c;
    for (int k = 0; k < kActionDim; ++k) {
      float v = std::isfinite(a[k]) ? a[k] : 0.0f;
      c[k] =
          std::clamp(v, static_cast<float>(-kMaxActionDelta), static_cast<float>(kMaxActionDelta));
    }
    s.chunk.push_back(c);
  }
  s.chunk_base = s.cmd;
  s.chunk_start_step = s.steps;
  s.last_recorded_action = -1;
}

// Commanded target for the step about to run: linear interpolation of the action deltas.
void NeedleEnv::Impl::update_target() {
  if (chunk.empty()) return;
  const int64_t rel = steps - chunk_start_step;  // 0 for the first step of the chunk
  const double a_start = static_cast<double>(rel) * kActionHz / kPhysicsHz;
  const int idx = static_cast<int>(std::floor(a_start + 1e-9));
  if (idx < static_cast<int>(chunk.size()) && idx > last_recorded_action) {
    for (int k = last_recorded_action + 1; k <= idx; ++k) {
      ActionRecord r;
      r.t = d->time;
      r.action = chunk[k];
      r.proprio = {static_cast<float>(d->qpos[0]), static_cast<float>(d->qpos[1]),
                   static_cast<float>(d->qpos[2])};
      action_log.push_back(r);
    }
    last_recorded_action = idx;
  }
  const double a_end = static_cast<double>(rel + 1) * kActionHz / kPhysicsHz;
  std::array<double, 3> tgt = chunk_base;
  const int n = static_cast<int>(chunk.size());
  for (int i = 0; i < n; ++i) {
    double w = std::clamp(a_end - i, 0.0, 1.0);
    for (int k = 0; k < 3; ++k) tgt[k] += w * chunk[i][k];
  }
  for (int k = 0; k < 3; ++k) cmd[k] = std::clamp(tgt[k], kLimLo[k], kLimHi[k]);
  if (a_end >= n) {
    // The chunk has been played out: hold its final (clipped) target.
    chunk.clear();
    chunk_base = cmd;
  }
}

// Port channel forces on the needle tip (membrane, friction, walls, floor) as xfrc_applied, and
// needle-tissue contact switched off while the tip is over or inside a port.
void NeedleEnv::Impl::apply_tissue_forces() {
  const auto p = tip();
  const double depth = tissue.surface_z - p[2];
  int over = -1;
  for (int i = 0; i < cfg.num_ports; ++i) {
    if (std::hypot(p[0] - ports[i].pos[0], p[1] - ports[i].pos[1]) < ports[i].radius) over = i;
  }
  if (depth <= 0.0) {
    latched = -1;
    punctured = false;
  } else if (latched < 0 && over >= 0 && depth < 0.003) {
    latched = over;  // entering a port opening
  }
  const bool contact = !(latched >= 0 || (depth <= 0.0 && over >= 0));
  m->geom_contype[shaft_geom] = contact ? 1 : 0;
  m->geom_conaffinity[shaft_geom] = contact ? 1 : 0;

  double* xf = d->xfrc_applied + 6 * needle_body;
  for (int k = 0; k < 6; ++k) xf[k] = 0.0;
  if (latched < 0) return;
  const double* v = d->qvel;  // needle translates with the stage
  const PortInfo& port = ports[latched];
  double f[3];
  f[0] = -tissue.lateral_k * (p[0] - port.pos[0]) - tissue.lateral_c * v[0];
  f[1] = -tissue.lateral_k * (p[1] - port.pos[1]) - tissue.lateral_c * v[1];
  double fz;
  if (!punctured) {
    fz = tissue.puncture_force * depth / tissue.puncture_depth;
    if (depth >= tissue.puncture_depth) punctured = true;
  } else {
    fz = tissue.friction_k * depth + tissue.friction_f0 * std::tanh(-v[2] / 0.002) -
         tissue.damping * v[2];
  }
  if (depth > tissue.port_depth) fz += tissue.floor_k * (depth - tissue.port_depth);
  f[2] = fz;
  // Force acts at the tip; xfrc_applied is at the body's centre of mass.
  const double* com = d->xipos + 3 * needle_body;
  double r[3] = {p[0] - com[0], p[1] - com[1], p[2] - com[2]};
  xf[0] = f[0];
  xf[1] = f[1];
  xf[2] = f[2];
  xf[3] = r[1] * f[2] - r[2] * f[1];
  xf[4] = r[2] * f[0] - r[0] * f[2];
  xf[5] = r[0] * f[1] - r[1] * f[0];
}

void NeedleEnv::Impl::update_outcome(double force_mag) {
  outcome.peak_force = std::max(outcome.peak_force, force_mag);
  outcome.time_s = d->time;
  const auto p = tip();
  const double depth = tissue.surface_z - p[2];
  auto finish = [&](bool ok, const char* reason) {
    outcome.done = true;
    outcome.success = ok;
    outcome.reason = reason;
  };
  if (outcome.peak_force > cfg.force_limit) {
    finish(false, "excess_force");
  } else if (latched >= 0 && depth >= cfg.success_depth) {
    if (latched == target) {
      finish(true, "success");
    } else {
      finish(false, "wrong_port");
    }
  } else if (d->time >= cfg.time_limit_s - 1e-9) {
    finish(false, "timeout");
  }
}

void NeedleEnv::step_physics() {
  Impl& s = *impl_;
  if (s.outcome.done) return;
  s.update_target();
  for (int k = 0; k < 3; ++k) s.d->ctrl[k] = s.cmd[k];
  s.apply_tissue_forces();
  s.d->qfrc_applied[2] = s.m->body_subtreemass[s.stage_body] * 9.81;  // gravity feed-forward
  mj_step(s.m, s.d);
  ++s.steps;
  ForceSample fs;
  fs.t = static_cast<double>(s.steps) / kPhysicsHz;
  double fmag2 = 0.0;
  for (int k = 0; k < 3; ++k) {
    // Sensor reads the force of the stage on the needle; report the reaction (tissue push > 0).
    double f = -(s.d->sensordata[s.force_adr + k] - s.bias[k]);
    double tq = -(s.d->sensordata[s.torque_adr + k] - s.bias[3 + k]);
    fmag2 += f * f;
    fs.f[k] = static_cast<float>(f + s.cfg.force_noise_std * s.normal(s.noise_rng));
    fs.f[3 + k] = static_cast<float>(tq + 0.05 * s.cfg.force_noise_std * s.normal(s.noise_rng));
  }
  s.force_log.push_back(fs);
  s.update_outcome(std::sqrt(fmag2));
}

void NeedleEnv::step_chunk(const Chunk& chunk) {
  set_chunk(chunk);
  for (int i = 0; i < kStepsPerChunk && !impl_->outcome.done; ++i) step_physics();
}

std::vector<Image> NeedleEnv::render() {
  Impl& s = *impl_;
  VLA_CHECK(s.renderer, "sim: render() called on an env made with render=false");
  std::vector<Image> out;
  out.reserve(s.cfg.num_views);
  for (int v = 0; v < s.cfg.num_views; ++v)
    out.push_back(s.renderer->render(s.m, s.d, s.cam_ids[v]));
  return out;
}

const std::vector<ForceSample>& NeedleEnv::force_log() const { return impl_->force_log; }
const std::vector<ActionRecord>& NeedleEnv::action_log() const { return impl_->action_log; }
std::array<float, 3> NeedleEnv::proprio() const {
  const double* q = impl_->d->qpos;
  return {static_cast<float>(q[0]), static_cast<float>(q[1]), static_cast<float>(q[2])};
}
std::array<float, 3> NeedleEnv::target() const {
  const auto& c = impl_->cmd;
  return {static_cast<float>(c[0]), static_cast<float>(c[1]), static_cast<float>(c[2])};
}
double NeedleEnv::time() const { return static_cast<double>(impl_->steps) / kPhysicsHz; }
int64_t NeedleEnv::steps() const { return impl_->steps; }
const Outcome& NeedleEnv::outcome() const { return impl_->outcome; }
const EnvConfig& NeedleEnv::config() const { return impl_->cfg; }
uint64_t NeedleEnv::seed() const { return impl_->seed; }
const std::string& NeedleEnv::model_xml() const { return impl_->xml; }

SceneInfo NeedleEnv::scene() const {
  const Impl& s = *impl_;
  SceneInfo info;
  info.ports = s.ports;
  info.target = s.target;
  info.needle_tip = s.tip();
  info.surface_z = s.tissue.surface_z;
  info.insertion_depth = s.latched >= 0 ? s.tissue.surface_z - info.needle_tip[2] : 0.0;
  info.inserted_port = s.latched;
  return info;
}

NeedleEnv::CameraPose NeedleEnv::camera_pose(int view) const {
  const Impl& s = *impl_;
  VLA_CHECK(view >= 0 && view < kNumViews, "sim: view ", view, " out of range");
  int id = s.cam_ids[view];
  CameraPose c;
  for (int k = 0; k < 3; ++k) c.pos[k] = s.d->cam_xpos[3 * id + k];
  for (int k = 0; k < 9; ++k) c.mat[k] = s.d->cam_xmat[9 * id + k];
  c.fovy_deg = s.m->cam_fovy[id];
  return c;
}

bool NeedleEnv::project(int view, const std::array<double, 3>& w, double* u, double* v) const {
  CameraPose c = camera_pose(view);
  double rel[3] = {w[0] - c.pos[0], w[1] - c.pos[1], w[2] - c.pos[2]};
  double cam[3];
  for (int j = 0; j < 3; ++j) {  // R^T * rel; columns of mat are the camera axes
    cam[j] = c.mat[0 + j] * rel[0] + c.mat[3 + j] * rel[1] + c.mat[6 + j] * rel[2];
  }
  if (cam[2] >= 0) return false;
  const int W = impl_->cfg.width, H = impl_->cfg.height;
  const double f = 0.5 * H / std::tan(0.5 * c.fovy_deg * M_PI / 180.0);
  *u = 0.5 * W + f * cam[0] / -cam[2];
  *v = 0.5 * H - f * cam[1] / -cam[2];
  return true;
}

}  // namespace vla::sim

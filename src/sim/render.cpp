// Headless rendering: an OSMesa (llvmpipe) GL context per env, MuJoCo's offscreen framebuffer,
// no shadows/reflections/skybox. Rows come bottom-up from GL and are flipped.
#include <GL/osmesa.h>

#include "sim/env_impl.h"

namespace vla::sim {

struct Renderer::State {
  OSMesaContext ctx = nullptr;
  std::vector<unsigned char> buffer;  // OSMesa's own colour buffer (unused by the FBO path)
  int width = 0, height = 0;
  mjvScene scn;
  mjrContext con;
  mjvOption opt;
  mjvCamera cam;
  std::vector<unsigned char> rgb;
  void make_current() {
    VLA_CHECK(OSMesaMakeCurrent(ctx, buffer.data(), GL_UNSIGNED_BYTE, width, height),
              "sim: OSMesaMakeCurrent failed");
  }
};

Renderer::Renderer(const mjModel* m, int width, int height) : s_(std::make_unique<State>()) {
  s_->width = width;
  s_->height = height;
  s_->ctx = OSMesaCreateContextExt(OSMESA_RGBA, 24, 8, 0, nullptr);
  VLA_CHECK(s_->ctx, "sim: OSMesaCreateContextExt failed (is libosmesa6 installed?)");
  s_->buffer.resize(static_cast<size_t>(width) * height * 4);
  s_->make_current();
  mjv_defaultScene(&s_->scn);
  mjr_defaultContext(&s_->con);
  mjv_defaultOption(&s_->opt);
  mjv_defaultCamera(&s_->cam);
  mjv_makeScene(m, &s_->scn, 200);
  mjr_makeContext(m, &s_->con, mjFONTSCALE_100);
  mjr_setBuffer(mjFB_OFFSCREEN, &s_->con);
  VLA_CHECK(s_->con.currentBuffer == mjFB_OFFSCREEN, "sim: offscreen rendering not supported");
  VLA_CHECK(s_->con.offWidth >= width && s_->con.offHeight >= height, "sim: offscreen buffer ",
            s_->con.offWidth, "x", s_->con.offHeight, " smaller than ", width, "x", height);
  s_->scn.flags[mjRND_SHADOW] = 0;
  s_->scn.flags[mjRND_REFLECTION] = 0;
  s_->scn.flags[mjRND_SKYBOX] = 0;
  s_->scn.flags[mjRND_FOG] = 0;
  s_->rgb.resize(static_cast<size_t>(width) * height * 3);
}

Renderer::~Renderer() {
  if (!s_ || !s_->ctx) return;
  OSMesaMakeCurrent(s_->ctx, s_->buffer.data(), GL_UNSIGNED_BYTE, s_->width, s_->height);
  mjr_freeContext(&s_->con);
  mjv_freeScene(&s_->scn);
  OSMesaDestroyContext(s_->ctx);
}

Image Renderer::render(const mjModel* m, mjData* d, int camera_id) {
  State& s = *s_;
  s.make_current();
  mjr_setBuffer(mjFB_OFFSCREEN, &s.con);
  s.cam.type = mjCAMERA_FIXED;
  s.cam.fixedcamid = camera_id;
  mjv_updateScene(m, d, &s.opt, nullptr, &s.cam, mjCAT_ALL, &s.scn);
  mjrRect viewport = {0, 0, s.width, s.height};
  mjr_render(viewport, &s.scn, &s.con);
  mjr_readPixels(s.rgb.data(), nullptr, viewport, &s.con);
  Image img = make_image(s.width, s.height, 3);
  const size_t row = static_cast<size_t>(s.width) * 3;
  for (int y = 0; y < s.height; ++y) {
    std::memcpy(img.row(y), s.rgb.data() + static_cast<size_t>(s.height - 1 - y) * row, row);
  }
  return img;
}

}  // namespace vla::sim

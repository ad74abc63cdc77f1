// Request decoding and reply encoding: msgpack (msgpack-cxx) with openpi's msgpack-numpy array
// convention (openpi_client/msgpack_numpy.py: {"__ndarray__": True, "data", "dtype", "shape"}).
#include <cmath>
#include <cstring>
#include <msgpack.hpp>

#include "serve/serve.h"
#include "text/text.h"

namespace vla::serve {
namespace {

using Obj = msgpack::object;

// Keys arrive as str (msgpack-python default for str) or bin (openpi packs b"__ndarray__" etc).
bool key_is(const Obj& k, const char* name) {
  const size_t n = std::strlen(name);
  if (k.type == msgpack::type::STR)
    return k.via.str.size == n && !std::memcmp(k.via.str.ptr, name, n);
  if (k.type == msgpack::type::BIN)
    return k.via.bin.size == n && !std::memcmp(k.via.bin.ptr, name, n);
  return false;
}

std::string as_text(const Obj& o, const std::string& field) {
  if (o.type == msgpack::type::STR) return std::string(o.via.str.ptr, o.via.str.size);
  if (o.type == msgpack::type::BIN) return std::string(o.via.bin.ptr, o.via.bin.size);
  throw Error(str_cat("request: '", field, "' must be a string"));
}

const Obj* find(const Obj& map, const char* name) {
  for (uint32_t i = 0; i < map.via.map.size; ++i)
    if (key_is(map.via.map.ptr[i].key, name)) return &map.via.map.ptr[i].val;
  return nullptr;
}

int64_t as_int(const Obj& o, const std::string& field) {
  if (o.type == msgpack::type::POSITIVE_INTEGER) {
    VLA_CHECK(o.via.u64 <= static_cast<uint64_t>(INT64_MAX), "request: '", field, "' too large");
    return static_cast<int64_t>(o.via.u64);
  }
  if (o.type == msgpack::type::NEGATIVE_INTEGER) return o.via.i64;
  throw Error(str_cat("request: '", field, "' must be an integer"));
}

// A decoded msgpack-numpy array: raw bytes of `dtype` in C order.
struct Array {
  std::string dtype;
  std::vector<int64_t> shape;
  const char* data = nullptr;
  size_t bytes = 0;
  int64_t numel() const {
    int64_t n = 1;
    for (auto d : shape) n *= d;
    return n;
  }
};

Array as_array(const Obj& o, const std::string& field, const ServeOptions& lim) {
  VLA_CHECK(o.type == msgpack::type::MAP && find(o, "__ndarray__"), "request: '", field,
            "' must be a msgpack-numpy array (a map with __ndarray__, data, dtype, shape)");
  const Obj* data = find(o, "data");
  const Obj* dtype = find(o, "dtype");
  const Obj* shape = find(o, "shape");
  VLA_CHECK(data && dtype && shape, "request: '", field, "' lacks data, dtype or shape");
  VLA_CHECK(data->type == msgpack::type::BIN, "request: '", field, "'.data must be bytes");
  VLA_CHECK(shape->type == msgpack::type::ARRAY && shape->via.array.size <= 8, "request: '", field,
            "'.shape must be a list of at most 8 sizes");
  Array a;
  a.dtype = as_text(*dtype, field + ".dtype");
  a.data = data->via.bin.ptr;
  a.bytes = data->via.bin.size;
  int64_t n = 1;
  for (uint32_t i = 0; i < shape->via.array.size; ++i) {
    const int64_t d = as_int(shape->via.array.ptr[i], field + ".shape");
    VLA_CHECK(d >= 0 && d <= lim.max_array_elements, "request: '", field, "'.shape has size ", d);
    n *= d;
    VLA_CHECK(n <= lim.max_array_elements, "request: '", field, "' has more than ",
              lim.max_array_elements, " elements");
    a.shape.push_back(d);
  }
  size_t item = 0;
  if (a.dtype == "|u1" || a.dtype == "<u1" || a.dtype == "u1") item = 1;
  if (a.dtype == "<f4") item = 4;
  if (a.dtype == "<f8") item = 8;
  VLA_CHECK(item > 0, "request: '", field, "' has dtype '", a.dtype,
            "'; expected |u1 (images), <f4 or <f8 (little-endian)");
  VLA_CHECK(a.bytes == static_cast<size_t>(n) * item, "request: '", field, "' has ", a.bytes,
            " data bytes for shape of ", n, " elements of ", item, " bytes");
  return a;
}

std::vector<double> as_floats(const Array& a) {
  std::vector<double> out(static_cast<size_t>(a.numel()));
  for (size_t i = 0; i < out.size(); ++i) {
    if (a.dtype == "<f4") {
      float f;
      std::memcpy(&f, a.data + 4 * i, 4);
      out[i] = f;
    } else if (a.dtype == "<f8") {
      std::memcpy(&out[i], a.data + 8 * i, 8);
    } else {
      out[i] = static_cast<uint8_t>(a.data[i]);
    }
  }
  return out;
}

template <typename Packer>
void pack_str(Packer& pk, const std::string& s) {
  pk.pack_str(static_cast<uint32_t>(s.size()));
  pk.pack_str_body(s.data(), static_cast<uint32_t>(s.size()));
}

// A msgpack-numpy array (keys as str, as msgpack-numpy's unpacker accepts either).
template <typename Packer>
void pack_ndarray(Packer& pk, const void* data, size_t bytes, const char* dtype,
                  const std::vector<int64_t>& shape) {
  pk.pack_map(4);
  pack_str(pk, "__ndarray__");
  pk.pack_true();
  pack_str(pk, "data");
  pk.pack_bin(static_cast<uint32_t>(bytes));
  pk.pack_bin_body(static_cast<const char*>(data), static_cast<uint32_t>(bytes));
  pack_str(pk, "dtype");
  pack_str(pk, dtype);
  pack_str(pk, "shape");
  pk.pack_array(static_cast<uint32_t>(shape.size()));
  for (int64_t d : shape) pk.pack_int64(d);
}

double as_number(const Obj& o, const std::string& field) {
  if (o.type == msgpack::type::FLOAT32 || o.type == msgpack::type::FLOAT64) return o.via.f64;
  return static_cast<double>(as_int(o, field));
}

}  // namespace

InferRequest decode_request(const void* data, size_t size, const ServeOptions& lim) {
  VLA_CHECK(size > 0 && size <= lim.max_message_bytes, "request: ", size, " bytes (limit ",
            lim.max_message_bytes, ")");
  msgpack::object_handle oh;
  try {
    // Limits on containers: no request needs more than a few hundred entries.
    msgpack::unpack_limit limit(/*array=*/1024, /*map=*/256, /*str=*/1u << 20,
                                /*bin=*/static_cast<uint32_t>(lim.max_message_bytes),
                                /*ext=*/0, /*depth=*/8);
    oh = msgpack::unpack(static_cast<const char*>(data), size, nullptr, nullptr, limit);
  } catch (const std::exception& e) {
    throw Error(str_cat("request: not valid msgpack (", e.what(), ")"));
  }
  const Obj& root = oh.get();
  VLA_CHECK(root.type == msgpack::type::MAP, "request: expected a msgpack map at the top level");
  InferRequest r;
  if (const Obj* id = find(root, "request_id")) {
    r.request_id = as_int(*id, "request_id");
    r.has_request_id = true;
  }
  if (const Obj* d = find(root, "deadline_ms")) {
    if (d->type == msgpack::type::FLOAT32 || d->type == msgpack::type::FLOAT64)
      r.deadline_ms = d->via.f64;
    else
      r.deadline_ms = static_cast<double>(as_int(*d, "deadline_ms"));
    VLA_CHECK(std::isfinite(r.deadline_ms) && r.deadline_ms >= 0 && r.deadline_ms < 1e7,
              "request: 'deadline_ms' must be a number of milliseconds >= 0");
  }
  if (const Obj* x = find(root, "reset")) {
    VLA_CHECK(x->type == msgpack::type::BOOLEAN, "request: 'reset' must be a boolean");
    r.reset = x->via.boolean;
  }
  if (const Obj* x = find(root, "stream")) {
    VLA_CHECK(x->type == msgpack::type::BOOLEAN, "request: 'stream' must be a boolean");
    r.stream = x->via.boolean ? 1 : 0;
  }
  if (const Obj* x = find(root, "stream_hz")) {
    r.stream_hz = x->type == msgpack::type::FLOAT32 || x->type == msgpack::type::FLOAT64
                      ? x->via.f64
                      : static_cast<double>(as_int(*x, "stream_hz"));
    VLA_CHECK(std::isfinite(r.stream_hz) && r.stream_hz >= 1 && r.stream_hz <= 200,
              "request: 'stream_hz' must be 1..200 Hz");
  }
  if (const Obj* p = find(root, "prompt")) {
    r.prompt = as_text(*p, "prompt");
    VLA_CHECK(unicode::utf8_lossy(r.prompt) == r.prompt, "request: 'prompt' is not valid UTF-8");
  }
  if (const Obj* imgs = find(root, "images")) {
    VLA_CHECK(imgs->type == msgpack::type::MAP, "request: 'images' must be a map name -> array");
    for (uint32_t i = 0; i < imgs->via.map.size; ++i) {
      const std::string name = as_text(imgs->via.map.ptr[i].key, "images key");
      VLA_CHECK(unicode::utf8_lossy(name) == name && name.size() < 64, "request: bad view name");
      const Array a = as_array(imgs->via.map.ptr[i].val, "images." + name, lim);
      VLA_CHECK(a.dtype.back() == '1' && a.shape.size() == 3 && a.shape[2] == 3 && a.shape[0] > 0 &&
                    a.shape[1] > 0,
                "request: 'images.", name, "' must be uint8 H x W x 3 (got dtype ", a.dtype, ", ",
                a.shape.size(), " dims)");
      Image im = make_image(static_cast<int>(a.shape[1]), static_cast<int>(a.shape[0]), 3);
      std::memcpy(im.pixels.data(), a.data, a.bytes);
      r.images.emplace(name, std::move(im));
    }
  }
  if (const Obj* s = find(root, "state")) {
    const Array a = as_array(*s, "state", lim);
    for (double v : as_floats(a)) r.state.push_back(static_cast<float>(v));
  }
  const Obj* f = find(root, "force");
  const Obj* ft = find(root, "force_t");
  VLA_CHECK(!f == !ft, "request: 'force' and 'force_t' come together");
  if (f) {
    const Array a = as_array(*f, "force", lim), t = as_array(*ft, "force_t", lim);
    VLA_CHECK(a.shape.size() == 2 && a.shape[1] == 6, "request: 'force' must be [N, 6]");
    VLA_CHECK(t.shape.size() == 1 && t.shape[0] == a.shape[0],
              "request: 'force_t' must be [N] with", " N = ", a.shape[0], " (rows of 'force')");
    const auto fv = as_floats(a), tv = as_floats(t);
    r.force.resize(static_cast<size_t>(a.shape[0]));
    for (size_t i = 0; i < r.force.size(); ++i)
      for (int k = 0; k < 6; ++k) r.force[i][k] = static_cast<float>(fv[i * 6 + k]);
    r.force_t = tv;
  }
  return r;
}

std::string encode_request(const InferRequest& r) {
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> pk(&buf);
  const bool force = !r.force.empty();
  VLA_CHECK(r.force.size() == r.force_t.size(), "encode_request: ", r.force.size(),
            " force rows but ", r.force_t.size(), " stamps");
  pk.pack_map(static_cast<uint32_t>(!r.images.empty() + !r.prompt.empty() + !r.state.empty() +
                                    2 * force + r.has_request_id + (r.deadline_ms >= 0) + r.reset +
                                    (r.stream >= 0) + (r.stream_hz > 0)));
  if (!r.images.empty()) {
    pack_str(pk, "images");
    pk.pack_map(static_cast<uint32_t>(r.images.size()));
    for (const auto& [name, im] : r.images) {
      VLA_CHECK(im.channels == 3, "encode_request: view '", name, "' must be RGB");
      pack_str(pk, name);
      pack_ndarray(pk, im.pixels.data(), im.pixels.size(), "|u1", {im.height, im.width, 3});
    }
  }
  if (!r.prompt.empty()) {
    pack_str(pk, "prompt");
    pack_str(pk, r.prompt);
  }
  if (!r.state.empty()) {
    pack_str(pk, "state");
    pack_ndarray(pk, r.state.data(), r.state.size() * 4, "<f4",
                 {static_cast<int64_t>(r.state.size())});
  }
  if (force) {
    pack_str(pk, "force");
    pack_ndarray(pk, r.force.data(), r.force.size() * 6 * 4, "<f4",
                 {static_cast<int64_t>(r.force.size()), 6});
    pack_str(pk, "force_t");
    pack_ndarray(pk, r.force_t.data(), r.force_t.size() * 8, "<f8",
                 {static_cast<int64_t>(r.force_t.size())});
  }
  if (r.has_request_id) {
    pack_str(pk, "request_id");
    pk.pack_int64(r.request_id);
  }
  if (r.deadline_ms >= 0) {
    pack_str(pk, "deadline_ms");
    pk.pack_double(r.deadline_ms);
  }
  if (r.reset) {
    pack_str(pk, "reset");
    pk.pack_true();
  }
  if (r.stream >= 0) {
    pack_str(pk, "stream");
    pk.pack(r.stream == 1);
  }
  if (r.stream_hz > 0) {
    pack_str(pk, "stream_hz");
    pk.pack_double(r.stream_hz);
  }
  return std::string(buf.data(), buf.size());
}

InferReply decode_reply(const void* data, size_t size) {
  msgpack::object_handle oh;
  try {
    oh = msgpack::unpack(static_cast<const char*>(data), size);
  } catch (const std::exception& e) {
    throw Error(str_cat("reply: not valid msgpack (", e.what(), ")"));
  }
  const Obj& root = oh.get();
  VLA_CHECK(root.type == msgpack::type::MAP, "reply: expected a msgpack map");
  if (const Obj* e = find(root, "error")) throw Error(str_cat("server: ", as_text(*e, "error")));
  InferReply r;
  const Obj* acts = find(root, "actions");
  VLA_CHECK(acts, "reply: no 'actions'");
  ServeOptions lim;
  const Array a = as_array(*acts, "actions", lim);
  VLA_CHECK(a.dtype == "<f4" && a.shape.size() == 2 && a.shape[1] == 3,
            "reply: 'actions' must be float32 [H, 3]");
  r.actions.resize(static_cast<size_t>(a.shape[0]));
  std::memcpy(r.actions.data(), a.data, a.bytes);
  if (const Obj* id = find(root, "request_id"); id && id->type != msgpack::type::NIL) {
    r.request_id = as_int(*id, "request_id");
    r.has_request_id = true;
  }
  if (const Obj* x = find(root, "obs_time")) r.obs_time = as_number(*x, "obs_time");
  if (const Obj* x = find(root, "status")) r.status = as_text(*x, "status");
  if (const Obj* x = find(root, "feature_version")) r.feature_version = as_int(*x, "version");
  if (const Obj* x = find(root, "feature_age_s")) r.feature_age_s = as_number(*x, "age");
  if (const Obj* x = find(root, "stale_frames"); x && x->type == msgpack::type::BOOLEAN)
    r.stale_frames = x->via.boolean;
  if (const Obj* x = find(root, "stale_force"); x && x->type == msgpack::type::BOOLEAN)
    r.stale_force = x->via.boolean;
  if (const Obj* x = find(root, "stream_seq")) r.stream_seq = as_int(*x, "stream_seq");
  if (const Obj* t = find(root, "server_timing"); t && t->type == msgpack::type::MAP)
    for (uint32_t i = 0; i < t->via.map.size; ++i)
      r.timing_ms[as_text(t->via.map.ptr[i].key, "server_timing")] =
          as_number(t->via.map.ptr[i].val, "server_timing");
  return r;
}

std::string encode_reply(const InferReply& r) {
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> pk(&buf);
  pk.pack_map(r.stream_seq >= 0 ? 12 : 11);
  pack_str(pk, "actions");
  {  // msgpack-numpy array, as openpi's client unpacks it
    pk.pack_map(4);
    pack_str(pk, "__ndarray__");
    pk.pack_true();
    pack_str(pk, "data");
    const uint32_t n = static_cast<uint32_t>(r.actions.size() * 3 * sizeof(float));
    pk.pack_bin(n);
    pk.pack_bin_body(reinterpret_cast<const char*>(r.actions.data()), n);
    pack_str(pk, "dtype");
    pack_str(pk, "<f4");
    pack_str(pk, "shape");
    pk.pack_array(2);
    pk.pack_uint64(r.actions.size());
    pk.pack_uint64(3);
  }
  pack_str(pk, "request_id");
  if (r.has_request_id)
    pk.pack_int64(r.request_id);
  else
    pk.pack_nil();
  pack_str(pk, "obs_time");
  pk.pack_double(r.obs_time);
  pack_str(pk, "status");
  pack_str(pk, r.status);
  pack_str(pk, "feature_version");
  pk.pack_int64(r.feature_version);
  pack_str(pk, "feature_age_s");
  pk.pack_double(r.feature_age_s);
  pack_str(pk, "stale_frames");
  pk.pack(r.stale_frames);
  pack_str(pk, "stale_force");
  pk.pack(r.stale_force);
  pack_str(pk, "server_timing");
  pk.pack_map(static_cast<uint32_t>(r.timing_ms.size()));
  for (const auto& [k, v] : r.timing_ms) {
    pack_str(pk, k);
    pk.pack_double(v);
  }
  pack_str(pk, "action_dim");
  pk.pack_int(3);
  pack_str(pk, "horizon");
  pk.pack_uint64(r.actions.size());
  if (r.stream_seq >= 0) {
    pack_str(pk, "stream_seq");
    pk.pack_int64(r.stream_seq);
  }
  return std::string(buf.data(), buf.size());
}

std::string encode_error(const std::string& message) {
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> pk(&buf);
  pk.pack_map(1);
  pack_str(pk, "error");
  pack_str(pk, unicode::utf8_lossy(message));
  return std::string(buf.data(), buf.size());
}

}  // namespace vla::serve

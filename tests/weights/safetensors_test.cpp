#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "core/core.h"
#include "weights/weights.h"

namespace vla {
namespace {

std::string temp_dir() {
  char tmpl[] = "/tmp/vla_weights_test_XXXXXX";
  char* d = mkdtemp(tmpl);
  return d ? std::string(d) : std::string("/tmp");
}

// Builds a raw safetensors file from a header string and data bytes.
std::string raw_file(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + data;
}

std::string write_raw(const std::string& dir, const std::string& name, const std::string& bytes) {
  const std::string p = dir + "/" + name;
  write_file_atomic(p, bytes);
  return p;
}

// Expects open() to throw vla::Error whose message contains every fragment.
void expect_open_error(const std::string& path, std::vector<std::string> fragments) {
  try {
    SafetensorsFile::open(path);
    FAIL() << "no error for " << path;
  } catch (const Error& e) {
    std::string msg = e.what();
    for (const auto& f : fragments) EXPECT_NE(msg.find(f), std::string::npos) << msg;
  }
}

std::map<std::string, torch::Tensor> sample_tensors() {
  torch::manual_seed(0);
  std::map<std::string, torch::Tensor> m;
  m["a.f32"] = torch::randn({3, 5});
  m["b.f16"] = torch::randn({7}).to(torch::kFloat16);  // odd byte count: tests alignment
  m["c.bf16"] = torch::randn({2, 3, 4}).to(torch::kBFloat16);
  m["d.i64"] = torch::arange(0, 6, torch::kInt64).reshape({2, 3});
  m["e.i32"] = torch::tensor({-1, 2, 3}, torch::kInt32);
  m["f.u8"] = torch::tensor({0, 255, 7}, torch::kUInt8);
  m["g.bool"] = torch::tensor({true, false, true});
  m["h.f64"] = torch::randn({2}, torch::kFloat64);
  m["i.empty"] = torch::zeros({0, 4});
  m["j.scalar"] = torch::tensor(3.5f);
  return m;
}

TEST(Safetensors, RoundTripAllDtypesAndMetadata) {
  const std::string dir = temp_dir();
  auto tensors = sample_tensors();
  save_safetensors(dir + "/m.safetensors", tensors, {{"format", "pt"}, {"who", "vla"}});
  auto f = SafetensorsFile::open(dir + "/m.safetensors");
  EXPECT_EQ(f->size(), tensors.size());
  EXPECT_EQ(f->metadata().at("format"), "pt");
  EXPECT_EQ(f->metadata().at("who"), "vla");
  for (const auto& kv : tensors) {
    ASSERT_TRUE(f->has(kv.first));
    auto t = f->load(kv.first);
    EXPECT_EQ(t.scalar_type(), kv.second.scalar_type()) << kv.first;
    EXPECT_EQ(t.sizes(), kv.second.sizes()) << kv.first;
    EXPECT_TRUE(torch::equal(t, kv.second)) << kv.first;
    // Every tensor is aligned to its element size (HF ordering by element size).
    const auto& info = f->info(kv.first);
    EXPECT_EQ(info.begin % st_dtype_size(info.dtype), 0u) << kv.first;
  }
  auto names = f->names();
  EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
}

TEST(Safetensors, HeaderIsPaddedToEightBytesAndLooksLikeHf) {
  const std::string dir = temp_dir();
  save_safetensors(dir + "/m.safetensors", {{"w", torch::ones({3})}}, {{"format", "pt"}});
  std::string bytes = read_file(dir + "/m.safetensors");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(bytes[i]);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(bytes.size(), 8 + n + 12);
  std::string header = bytes.substr(8, n);
  EXPECT_EQ(header.front(), '{');
  EXPECT_EQ(header.rfind("{\"__metadata__\":{\"format\":\"pt\"},\"w\":{\"dtype\":\"F32\"", 0), 0u)
      << header;
  auto j = nlohmann::json::parse(header);
  EXPECT_EQ(j["w"]["data_offsets"][1], 12);
}

TEST(Safetensors, LoadConvertsDtypeAndViewIsZeroCopyCopyOnWrite) {
  const std::string dir = temp_dir();
  auto w = torch::randn({4, 4}).to(torch::kBFloat16);
  save_safetensors(dir + "/m.safetensors", {{"w", w}});
  auto f = SafetensorsFile::open(dir + "/m.safetensors");
  auto as_f32 = f->load("w", torch::kFloat32);
  EXPECT_EQ(as_f32.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::equal(as_f32, w.to(torch::kFloat32)));
  auto v1 = f->view("w");
  auto v2 = f->view("w");
  EXPECT_EQ(v1.data_ptr(), v2.data_ptr());  // both over the mapping
  v1.fill_(0);                              // private mapping: the file stays intact
  auto f2 = SafetensorsFile::open(dir + "/m.safetensors");
  EXPECT_TRUE(torch::equal(f2->load("w"), w));
  // The view outlives the file object.
  torch::Tensor kept;
  {
    auto f3 = SafetensorsFile::open(dir + "/m.safetensors");
    kept = f3->view("w");
  }
  EXPECT_TRUE(torch::equal(kept, w));
}

TEST(Safetensors, TruncatedFilesAreRejected) {
  const std::string dir = temp_dir();
  save_safetensors(dir + "/ok.safetensors", {{"w", torch::ones({16})}});
  std::string bytes = read_file(dir + "/ok.safetensors");
  expect_open_error(write_raw(dir, "t1.safetensors", bytes.substr(0, 5)),
                    {"t1.safetensors", "truncated"});
  expect_open_error(write_raw(dir, "t2.safetensors", bytes.substr(0, 20)),
                    {"t2.safetensors", "truncated", "header length"});
  expect_open_error(write_raw(dir, "t3.safetensors", bytes.substr(0, bytes.size() - 4)),
                    {"t3.safetensors", "tensor w", "beyond the data section"});
}

TEST(Safetensors, BadHeadersAreRejected) {
  const std::string dir = temp_dir();
  std::string huge(8, '\xff');
  expect_open_error(write_raw(dir, "h1.safetensors", huge + "xxxxxxxx"), {"bad header", "limit"});
  expect_open_error(write_raw(dir, "h2.safetensors", raw_file("{not json}", "")),
                    {"h2.safetensors", "invalid JSON"});
  expect_open_error(write_raw(dir, "h3.safetensors", raw_file("[1,2]", "")), {"not an object"});
  expect_open_error(
      write_raw(dir, "h4.safetensors",
                raw_file(R"({"x":{"dtype":"Q7","shape":[1],"data_offsets":[0,4]}})", "abcd")),
      {"tensor x", "unsupported safetensors dtype 'Q7'"});
  expect_open_error(
      write_raw(dir, "h5.safetensors",
                raw_file(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", "abcd")),
      {"tensor x", "[2]", "needs 8 bytes", "span 4"});
  expect_open_error(
      write_raw(dir, "h6.safetensors", raw_file(R"({"x":{"dtype":"F32","shape":[1]}})", "abcd")),
      {"tensor x", "data_offsets"});
  expect_open_error(
      write_raw(dir, "h7.safetensors",
                raw_file(R"({"x":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", "abcd")),
      {"tensor x", "non-negative"});
  expect_open_error(write_raw(dir, "h8.safetensors",
                              raw_file(R"({"__metadata__":{"a":1},"x":{"dtype":"U8","shape":[1],)"
                                       R"("data_offsets":[0,1]}})",
                                       "a")),
                    {"__metadata__"});
}

TEST(Safetensors, OverlapsGapsAndTrailingBytesAreRejected) {
  const std::string dir = temp_dir();
  expect_open_error(write_raw(dir, "o.safetensors",
                              raw_file(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                                       R"("b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}})",
                                       "abcdef")),
                    {"tensor b", "overlap"});
  expect_open_error(write_raw(dir, "g.safetensors",
                              raw_file(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},)"
                                       R"("b":{"dtype":"U8","shape":[2],"data_offsets":[4,6]}})",
                                       "abcdef")),
                    {"tensor b", "gap"});
  expect_open_error(
      write_raw(dir, "tr.safetensors",
                raw_file(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})", "abcdef")),
      {"cover 2 bytes", "6 bytes"});
  // A valid hand-made file with a header padded by spaces opens.
  auto p = write_raw(dir, "ok.safetensors",
                     raw_file(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}   )", "xy"));
  auto f = SafetensorsFile::open(p);
  EXPECT_EQ(f->load("a")[1].item<uint8_t>(), 'y');
}

TEST(WeightStore, MissingAndMisShapedTensorsNameBothShapes) {
  const std::string dir = temp_dir();
  save_safetensors(dir + "/model.safetensors",
                   {{"model.layers.0.self_attn.q_proj.weight", torch::zeros({64, 32})},
                    {"model.norm.weight", torch::ones({64})}});
  auto ws = WeightStore::open(dir);
  EXPECT_TRUE(ws.has("model.norm.weight"));
  EXPECT_FALSE(ws.has("lm_head.weight"));
  try {
    ws.get("model.layers.0.self_attn.q_proj.weight", {64, 64});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tensor model.layers.0.self_attn.q_proj.weight: "
                                         "checkpoint has [64, 32], model expects [64, 64]"),
              std::string::npos)
        << e.what();
  }
  try {
    ws.get("model.layers.0.self_attn.k_proj.weight");
    FAIL();
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("tensor model.layers.0.self_attn.k_proj.weight not found"), std::string::npos);
    EXPECT_NE(m.find("q_proj"), std::string::npos) << m;  // closest name suggested
  }
  auto n = ws.get("model.norm.weight", {64}, torch::kFloat16);
  EXPECT_EQ(n.scalar_type(), torch::kFloat16);
  auto unused = ws.unused_names();
  ASSERT_EQ(unused.size(), 1u);
  EXPECT_EQ(unused[0], "model.layers.0.self_attn.q_proj.weight");
  EXPECT_THROW(WeightStore::open(dir + "/nothing_here"), Error);
  const std::string empty = temp_dir();
  EXPECT_THROW(WeightStore::open(empty), Error);
}

TEST(WeightStore, ShardedIndexRoundTrip) {
  const std::string dir = temp_dir() + "/ckpt";
  std::map<std::string, torch::Tensor> m;
  for (int i = 0; i < 5; ++i) m["model.layers." + std::to_string(i) + ".w"] = torch::randn({32, 8});
  save_safetensors_sharded(dir, m, 2 * 32 * 8 * 4);  // two tensors a shard -> 3 shards
  ASSERT_TRUE(file_exists(dir + "/model.safetensors.index.json"));
  ASSERT_TRUE(file_exists(dir + "/model-00003-of-00003.safetensors"));
  auto ws = WeightStore::open(dir);
  EXPECT_EQ(ws.size(), 5u);
  EXPECT_EQ(ws.total_bytes(), 5u * 32 * 8 * 4);
  for (const auto& kv : m) EXPECT_TRUE(torch::equal(ws.get(kv.first, {32, 8}), kv.second));
  auto idx = SafetensorsIndex::open(dir + "/model.safetensors.index.json");
  EXPECT_EQ(idx.shards().size(), 3u);
  EXPECT_EQ(idx.metadata()["total_size"], 5 * 32 * 8 * 4);

  // An index that maps a tensor to a shard lacking it, or to a missing shard, is refused.
  auto j = read_json(dir + "/model.safetensors.index.json");
  j["weight_map"]["model.layers.9.w"] = "model-00001-of-00003.safetensors";
  write_json_atomic(dir + "/bad.index.json", j);
  try {
    SafetensorsIndex::open(dir + "/bad.index.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.9.w"), std::string::npos);
  }
  j = read_json(dir + "/model.safetensors.index.json");
  j["weight_map"]["model.layers.0.w"] = "model-00009-of-00009.safetensors";
  write_json_atomic(dir + "/bad2.index.json", j);
  EXPECT_THROW(SafetensorsIndex::open(dir + "/bad2.index.json"), Error);
}

// Deterministic tensors written by our writer; tests/weights/fixtures/vla_written.safetensors
// holds this file as committed and make_safetensors_fixture.py checked it with HF safe_open.
std::map<std::string, torch::Tensor> interop_tensors() {
  std::map<std::string, torch::Tensor> m;
  m["lm_head.weight"] = torch::arange(0, 12, torch::kFloat32).reshape({3, 4}) / 8.0;
  m["half"] = (torch::arange(0, 5, torch::kFloat32) - 2.5).to(torch::kFloat16);
  m["bf"] = (torch::arange(0, 6, torch::kFloat32) * 0.25).reshape({2, 3}).to(torch::kBFloat16);
  m["ids"] = torch::arange(-2, 3, torch::kInt64);
  m["i32"] = torch::tensor({5, -6}, torch::kInt32);
  m["u8"] = torch::tensor({1, 2, 250}, torch::kUInt8);
  m["mask"] = torch::tensor({false, true});
  return m;
}

std::string fixture(const std::string& name) {
  return std::string(VLA_SOURCE_DIR) + "/tests/weights/fixtures/" + name;
}

TEST(Safetensors, WriterOutputIsStableAndReadByHf) {
  const std::string dir = temp_dir();
  save_safetensors(dir + "/v.safetensors", interop_tensors(), {{"format", "pt"}});
  if (const char* w = std::getenv("VLA_WRITE_FIXTURES"))
    save_safetensors(std::string(w) + "/vla_written.safetensors", interop_tensors(),
                     {{"format", "pt"}});
  ASSERT_TRUE(file_exists(fixture("vla_written.safetensors")));
  EXPECT_EQ(read_file(dir + "/v.safetensors"), read_file(fixture("vla_written.safetensors")))
      << "writer output changed: re-run make_safetensors_fixture.py";
  if (!file_exists(fixture("vla_written.hf_check.json"))) GTEST_SKIP() << "no HF check yet";
  auto check = read_json(fixture("vla_written.hf_check.json"));
  ASSERT_TRUE(check["ok"].get<bool>()) << check.dump();
  EXPECT_EQ(check["metadata"]["format"], "pt");
  auto tensors = interop_tensors();
  ASSERT_EQ(check["tensors"].size(), tensors.size());
  for (const auto& kv : tensors) {
    const auto& e = check["tensors"][kv.first];
    EXPECT_EQ(e["shape"].get<std::vector<int64_t>>(), kv.second.sizes().vec()) << kv.first;
    auto vals = e["values"].get<std::vector<double>>();
    auto mine = kv.second.to(torch::kFloat64).flatten();
    ASSERT_EQ(static_cast<int64_t>(vals.size()), mine.numel());
    for (size_t i = 0; i < vals.size(); ++i)
      EXPECT_EQ(vals[i], mine[static_cast<int64_t>(i)].item<double>()) << kv.first;
  }
}

TEST(Safetensors, ReadsFileWrittenByHf) {
  if (!file_exists(fixture("hf_written.safetensors"))) GTEST_SKIP() << "fixture missing";
  auto f = SafetensorsFile::open(fixture("hf_written.safetensors"));
  auto ref = read_json(fixture("hf_written.json"));
  EXPECT_EQ(f->metadata().at("k"), "v");
  ASSERT_EQ(f->size(), ref.size());
  for (auto it = ref.begin(); it != ref.end(); ++it) {
    auto t = f->load(it.key(), torch::kFloat64).flatten();
    EXPECT_EQ(f->info(it.key()).shape, it.value()["shape"].get<std::vector<int64_t>>());
    auto vals = it.value()["values"].get<std::vector<double>>();
    ASSERT_EQ(static_cast<int64_t>(vals.size()), t.numel()) << it.key();
    for (size_t i = 0; i < vals.size(); ++i)
      EXPECT_EQ(vals[i], t[static_cast<int64_t>(i)].item<double>()) << it.key();
  }
  EXPECT_EQ(f->info("visual.blocks.0.attn.qkv.weight").dtype, StDType::BF16);
  EXPECT_EQ(f->info("mask").dtype, StDType::BOOL);
}

}  // namespace
}  // namespace vla

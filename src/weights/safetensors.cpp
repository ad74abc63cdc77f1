// safetensors reader (mmap) / writer, sharded index, WeightStore.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <set>

#include "core/core.h"
#include "weights/weights.h"

namespace vla {

namespace {
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;  // HF's limit is 100 MB as well

std::string dirname_of(const std::string& path) {
  auto p = path.find_last_of('/');
  if (p == std::string::npos) return ".";
  if (p == 0) return "/";
  return path.substr(0, p);
}

bool is_dir(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Up to 3 names sharing the longest common prefix with `name`: helps spot typos/renames.
std::string similar_names(const std::vector<std::string>& names, const std::string& name) {
  std::vector<std::pair<size_t, std::string>> scored;
  for (const auto& n : names) {
    size_t k = 0;
    while (k < n.size() && k < name.size() && n[k] == name[k]) ++k;
    scored.emplace_back(k, n);
  }
  std::stable_sort(scored.begin(), scored.end(),
                   [](const auto& a, const auto& b) { return a.first > b.first; });
  std::string out;
  for (size_t i = 0; i < scored.size() && i < 3; ++i) out += (i ? ", " : "") + scored[i].second;
  return out;
}
}  // namespace

// ---------------------------------------------------------------- dtypes
std::string st_dtype_name(StDType dt) {
  switch (dt) {
    case StDType::F64:
      return "F64";
    case StDType::F32:
      return "F32";
    case StDType::F16:
      return "F16";
    case StDType::BF16:
      return "BF16";
    case StDType::I64:
      return "I64";
    case StDType::I32:
      return "I32";
    case StDType::I16:
      return "I16";
    case StDType::I8:
      return "I8";
    case StDType::U8:
      return "U8";
    case StDType::BOOL:
      return "BOOL";
  }
  return "?";
}

StDType parse_st_dtype(const std::string& name) {
  static const std::map<std::string, StDType> m = {
      {"F64", StDType::F64}, {"F32", StDType::F32},  {"F16", StDType::F16}, {"BF16", StDType::BF16},
      {"I64", StDType::I64}, {"I32", StDType::I32},  {"I16", StDType::I16}, {"I8", StDType::I8},
      {"U8", StDType::U8},   {"BOOL", StDType::BOOL}};
  auto it = m.find(name);
  VLA_CHECK(it != m.end(), "unsupported safetensors dtype '", name,
            "' (supported: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL)");
  return it->second;
}

size_t st_dtype_size(StDType dt) {
  switch (dt) {
    case StDType::F64:
    case StDType::I64:
      return 8;
    case StDType::F32:
    case StDType::I32:
      return 4;
    case StDType::F16:
    case StDType::BF16:
    case StDType::I16:
      return 2;
    case StDType::I8:
    case StDType::U8:
    case StDType::BOOL:
      return 1;
  }
  return 1;
}

torch::ScalarType st_to_torch(StDType dt) {
  switch (dt) {
    case StDType::F64:
      return torch::kFloat64;
    case StDType::F32:
      return torch::kFloat32;
    case StDType::F16:
      return torch::kFloat16;
    case StDType::BF16:
      return torch::kBFloat16;
    case StDType::I64:
      return torch::kInt64;
    case StDType::I32:
      return torch::kInt32;
    case StDType::I16:
      return torch::kInt16;
    case StDType::I8:
      return torch::kInt8;
    case StDType::U8:
      return torch::kUInt8;
    case StDType::BOOL:
      return torch::kBool;
  }
  return torch::kFloat32;
}

StDType st_from_torch(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat64:
      return StDType::F64;
    case torch::kFloat32:
      return StDType::F32;
    case torch::kFloat16:
      return StDType::F16;
    case torch::kBFloat16:
      return StDType::BF16;
    case torch::kInt64:
      return StDType::I64;
    case torch::kInt32:
      return StDType::I32;
    case torch::kInt16:
      return StDType::I16;
    case torch::kInt8:
      return StDType::I8;
    case torch::kUInt8:
      return StDType::U8;
    case torch::kBool:
      return StDType::BOOL;
    default:
      break;
  }
  throw Error(str_cat("torch dtype ", c10::toString(t), " cannot be stored in safetensors"));
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}
std::string shape_str(torch::IntArrayRef shape) { return shape_str(shape.vec()); }

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

// ---------------------------------------------------------------- SafetensorsFile
struct SafetensorsFile::Mapping {
  void* addr = nullptr;
  size_t size = 0;
  ~Mapping() {
    if (addr && addr != MAP_FAILED) ::munmap(addr, size);
  }
};

SafetensorsFile::~SafetensorsFile() = default;

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  std::shared_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  VLA_CHECK(fd >= 0, "safetensors ", path, ": cannot open: ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    throw Error(str_cat("safetensors ", path, ": cannot stat: ", std::strerror(e)));
  }
  f->size_ = static_cast<uint64_t>(st.st_size);
  if (f->size_ < 8) {
    ::close(fd);
    throw Error(str_cat("safetensors ", path, ": truncated file (", f->size_,
                        " bytes, shorter than the 8-byte header length)"));
  }
  auto map = std::make_shared<Mapping>();
  map->size = f->size_;
  // Private + writable = copy-on-write: tensors viewing the file may be modified in place.
  map->addr = ::mmap(nullptr, map->size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  int e = errno;
  ::close(fd);
  VLA_CHECK(map->addr != MAP_FAILED, "safetensors ", path, ": mmap failed: ", std::strerror(e));
  f->map_ = map;
  const auto* base = static_cast<const uint8_t*>(map->addr);

  uint64_t hlen = 0;
  for (int i = 7; i >= 0; --i) hlen = (hlen << 8) | base[i];  // little endian
  VLA_CHECK(hlen <= kMaxHeaderBytes, "safetensors ", path, ": bad header: header length ", hlen,
            " is larger than the 100 MB limit (not a safetensors file?)");
  VLA_CHECK(hlen <= f->size_ - 8, "safetensors ", path, ": truncated file: header length ", hlen,
            " exceeds the file size ", f->size_);
  VLA_CHECK(hlen >= 2, "safetensors ", path, ": bad header: header length ", hlen, " too small");
  f->data_ = base + 8 + hlen;
  const uint64_t data_size = f->size_ - 8 - hlen;

  nlohmann::json header;
  try {
    header = nlohmann::json::parse(reinterpret_cast<const char*>(base + 8),
                                   reinterpret_cast<const char*>(base + 8 + hlen));
  } catch (const std::exception& ex) {
    throw Error(str_cat("safetensors ", path, ": bad header: invalid JSON: ", ex.what()));
  }
  VLA_CHECK(header.is_object(), "safetensors ", path, ": bad header: JSON is not an object");

  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const auto& v = it.value();
    if (name == "__metadata__") {
      VLA_CHECK(v.is_object(), "safetensors ", path, ": bad header: __metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        VLA_CHECK(m.value().is_string(), "safetensors ", path, ": bad header: __metadata__ value '",
                  m.key(), "' is not a string");
        f->metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = str_cat("safetensors ", path, ": tensor ", name, ": ");
    VLA_CHECK(v.is_object(), where, "entry is not an object");
    VLA_CHECK(v.contains("dtype") && v["dtype"].is_string(), where, "missing string 'dtype'");
    VLA_CHECK(v.contains("shape") && v["shape"].is_array(), where, "missing array 'shape'");
    VLA_CHECK(
        v.contains("data_offsets") && v["data_offsets"].is_array() && v["data_offsets"].size() == 2,
        where, "missing 'data_offsets' [begin, end]");
    TensorInfo t;
    t.name = name;
    try {
      t.dtype = parse_st_dtype(v["dtype"].get<std::string>());
    } catch (const Error& ex) {
      throw Error(where + ex.what());
    }
    for (const auto& d : v["shape"]) {
      VLA_CHECK(d.is_number_integer() && d.get<int64_t>() >= 0, where,
                "shape entries must be non-negative integers, got ", v["shape"].dump());
      t.shape.push_back(d.get<int64_t>());
    }
    for (const auto& o : v["data_offsets"])
      VLA_CHECK(o.is_number_unsigned() || (o.is_number_integer() && o.get<int64_t>() >= 0), where,
                "data_offsets must be non-negative integers, got ", v["data_offsets"].dump());
    t.begin = v["data_offsets"][0].get<uint64_t>();
    t.end = v["data_offsets"][1].get<uint64_t>();
    VLA_CHECK(t.begin <= t.end, where, "data_offsets begin ", t.begin, " > end ", t.end);
    VLA_CHECK(t.end <= data_size, where, "data_offsets end ", t.end,
              " lies beyond the data section (", data_size, " bytes): truncated file?");
    // Overflow-safe size check.
    uint64_t expect = st_dtype_size(t.dtype);
    for (auto d : t.shape) {
      uint64_t next = 0;
      VLA_CHECK(!__builtin_mul_overflow(expect, static_cast<uint64_t>(d), &next), where, "shape ",
                shape_str(t.shape), " overflows 64-bit byte counts");
      expect = next;
    }
    VLA_CHECK(expect == t.nbytes(), where, "shape ", shape_str(t.shape), " x ",
              st_dtype_name(t.dtype), " needs ", expect, " bytes but data_offsets span ",
              t.nbytes());
    f->tensors_.push_back(std::move(t));
  }
  // Contiguous, non-overlapping, covering the data section exactly.
  std::vector<const TensorInfo*> order;
  for (const auto& t : f->tensors_) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](const TensorInfo* a, const TensorInfo* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t pos = 0;
  for (const auto* t : order) {
    VLA_CHECK(t->begin >= pos, "safetensors ", path, ": tensor ", t->name, ": data_offsets [",
              t->begin, ", ", t->end, "] overlap the previous tensor (ends at ", pos, ")");
    VLA_CHECK(t->begin == pos, "safetensors ", path, ": tensor ", t->name, ": gap in the data (",
              "previous tensor ends at ", pos, ", this one begins at ", t->begin, ")");
    pos = t->end;
  }
  VLA_CHECK(pos == data_size, "safetensors ", path, ": the tensors cover ", pos,
            " bytes but the data section has ", data_size, " bytes (trailing garbage?)");
  for (size_t i = 0; i < f->tensors_.size(); ++i) f->index_[f->tensors_[i].name] = i;
  return f;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  for (const auto& kv : index_) out.push_back(kv.first);
  return out;
}

const TensorInfo& SafetensorsFile::info(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end())
    throw Error(str_cat("tensor ", name, " not found in ", path_, " (", tensors_.size(),
                        " tensors; closest: ", similar_names(names(), name), ")"));
  return tensors_[it->second];
}

torch::Tensor SafetensorsFile::view(const std::string& name) const {
  const TensorInfo& t = info(name);
  auto opts = torch::TensorOptions().dtype(st_to_torch(t.dtype)).device(torch::kCPU);
  uint8_t* ptr = const_cast<uint8_t*>(data_ + t.begin);
  if (t.nbytes() == 0) return torch::empty(t.shape, opts);
  if (reinterpret_cast<uintptr_t>(ptr) % st_dtype_size(t.dtype) != 0) {
    auto out = torch::empty(t.shape, opts);
    std::memcpy(out.data_ptr(), ptr, t.nbytes());
    return out;
  }
  auto keep = map_;
  return torch::from_blob(
      ptr, t.shape, [keep](void*) mutable { keep.reset(); }, opts);
}

torch::Tensor SafetensorsFile::load(const std::string& name,
                                    std::optional<torch::ScalarType> dtype) const {
  auto v = view(name);
  if (dtype && *dtype != v.scalar_type()) return v.to(*dtype);
  return v.clone();
}

// ---------------------------------------------------------------- writer
namespace {
struct Prepared {
  std::string name;
  torch::Tensor t;  // contiguous CPU
  StDType dtype;
};

std::string build_blob(const std::map<std::string, torch::Tensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<Prepared> items;
  for (const auto& kv : tensors) {
    VLA_CHECK(!kv.first.empty(), "save_safetensors: empty tensor name");
    VLA_CHECK(kv.first != "__metadata__", "save_safetensors: '__metadata__' is reserved");
    VLA_CHECK(kv.second.defined(), "save_safetensors: tensor ", kv.first, " is undefined");
    Prepared p;
    p.name = kv.first;
    p.dtype = st_from_torch(kv.second.scalar_type());
    p.t = kv.second.detach().to(torch::kCPU).contiguous();
    items.push_back(std::move(p));
  }
  // As HF: larger element size first, then name, so each tensor starts aligned.
  std::stable_sort(items.begin(), items.end(), [](const Prepared& a, const Prepared& b) {
    size_t sa = st_dtype_size(a.dtype), sb = st_dtype_size(b.dtype);
    return sa != sb ? sa > sb : a.name < b.name;
  });
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json m = nlohmann::ordered_json::object();
    for (const auto& kv : metadata) m[kv.first] = kv.second;
    header["__metadata__"] = m;
  }
  uint64_t off = 0;
  for (const auto& p : items) {
    uint64_t n = static_cast<uint64_t>(p.t.numel()) * st_dtype_size(p.dtype);
    nlohmann::ordered_json e;
    e["dtype"] = st_dtype_name(p.dtype);
    e["shape"] = p.t.sizes().vec();
    e["data_offsets"] = {off, off + n};
    header[p.name] = e;
    off += n;
  }
  std::string h = dump_json(header);
  while (h.size() % 8 != 0) h.push_back(' ');
  std::string blob;
  blob.resize(8 + h.size() + off);
  uint64_t hl = h.size();
  for (int i = 0; i < 8; ++i) blob[i] = static_cast<char>((hl >> (8 * i)) & 0xff);
  std::memcpy(&blob[8], h.data(), h.size());
  char* dst = &blob[8 + h.size()];
  for (const auto& p : items) {
    size_t n = static_cast<size_t>(p.t.numel()) * st_dtype_size(p.dtype);
    if (n) std::memcpy(dst, p.t.data_ptr(), n);
    dst += n;
  }
  return blob;
}
}  // namespace

void save_safetensors(const std::string& path, const std::map<std::string, torch::Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  std::string blob = build_blob(tensors, metadata);
  write_file_atomic(path, blob);
}

void save_safetensors_sharded(const std::string& dir,
                              const std::map<std::string, torch::Tensor>& tensors,
                              uint64_t max_shard_bytes,
                              const std::map<std::string, std::string>& metadata) {
  make_dirs(dir);
  std::vector<std::map<std::string, torch::Tensor>> shards(1);
  uint64_t cur = 0, total = 0;
  for (const auto& kv : tensors) {
    uint64_t n = static_cast<uint64_t>(kv.second.numel()) * kv.second.element_size();
    if (!shards.back().empty() && cur + n > max_shard_bytes) {
      shards.emplace_back();
      cur = 0;
    }
    shards.back()[kv.first] = kv.second;
    cur += n;
    total += n;
  }
  if (shards.size() == 1) {
    save_safetensors(dir + "/model.safetensors", tensors, metadata);
    return;
  }
  nlohmann::json weight_map = nlohmann::json::object();
  char buf[64];
  for (size_t i = 0; i < shards.size(); ++i) {
    std::snprintf(buf, sizeof(buf), "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
    save_safetensors(dir + "/" + buf, shards[i], metadata);
    for (const auto& kv : shards[i]) weight_map[kv.first] = buf;
  }
  nlohmann::json index;
  index["metadata"] = {{"total_size", total}};
  index["weight_map"] = weight_map;
  write_json_atomic(dir + "/model.safetensors.index.json", index);
}

// ---------------------------------------------------------------- SafetensorsIndex
SafetensorsIndex SafetensorsIndex::open(const std::string& index_json_path) {
  SafetensorsIndex idx;
  idx.path_ = index_json_path;
  VLA_CHECK(file_exists(index_json_path), "safetensors index ", index_json_path, " not found");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(index_json_path));
  } catch (const nlohmann::json::exception& ex) {
    throw Error(str_cat("safetensors index ", index_json_path, ": invalid JSON: ", ex.what()));
  }
  VLA_CHECK(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(),
            "safetensors index ", index_json_path, ": missing object 'weight_map'");
  if (j.contains("metadata")) idx.metadata_ = j["metadata"];
  const std::string dir = dirname_of(index_json_path);
  std::map<std::string, size_t> shard_of_file;
  for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
    VLA_CHECK(it.value().is_string(), "safetensors index ", index_json_path, ": weight_map[",
              it.key(), "] is not a file name");
    const std::string file = it.value().get<std::string>();
    VLA_CHECK(file.find('/') == std::string::npos && file != ".." && !file.empty(),
              "safetensors index ", index_json_path, ": weight_map[", it.key(), "] names '", file,
              "', which is not a file in the checkpoint folder");
    auto s = shard_of_file.find(file);
    if (s == shard_of_file.end()) {
      const std::string shard_path = dir + "/" + file;
      VLA_CHECK(file_exists(shard_path), "safetensors index ", index_json_path, ": shard ",
                shard_path, " (holding tensor ", it.key(), ") does not exist");
      idx.shards_.push_back(SafetensorsFile::open(shard_path));
      s = shard_of_file.emplace(file, idx.shards_.size() - 1).first;
    }
    VLA_CHECK(idx.shards_[s->second]->has(it.key()), "safetensors index ", index_json_path,
              ": tensor ", it.key(), " is mapped to ", file, " but that shard does not hold it");
    idx.where_[it.key()] = s->second;
  }
  return idx;
}

std::vector<std::string> SafetensorsIndex::names() const {
  std::vector<std::string> out;
  for (const auto& kv : where_) out.push_back(kv.first);
  return out;
}

const SafetensorsFile& SafetensorsIndex::file_of(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end())
    throw Error(str_cat("tensor ", name, " not found in ", path_, " (", where_.size(),
                        " tensors; closest: ", similar_names(names(), name), ")"));
  return *shards_[it->second];
}

const TensorInfo& SafetensorsIndex::info(const std::string& name) const {
  return file_of(name).info(name);
}

// ---------------------------------------------------------------- WeightStore
WeightStore WeightStore::open(const std::string& path) {
  WeightStore ws;
  ws.path_ = path;
  ws.used_ = std::make_shared<std::map<std::string, bool>>();
  if (is_dir(path)) {
    const std::string idx = path + "/model.safetensors.index.json";
    const std::string single = path + "/model.safetensors";
    if (file_exists(idx)) {
      ws.index_ = std::make_shared<SafetensorsIndex>(SafetensorsIndex::open(idx));
    } else if (file_exists(single)) {
      ws.single_ = SafetensorsFile::open(single);
    } else {
      throw Error(str_cat("checkpoint folder ", path,
                          " holds neither model.safetensors nor model.safetensors.index.json"));
    }
  } else {
    VLA_CHECK(file_exists(path), "checkpoint ", path, " does not exist");
    if (ends_with(path, ".json"))
      ws.index_ = std::make_shared<SafetensorsIndex>(SafetensorsIndex::open(path));
    else
      ws.single_ = SafetensorsFile::open(path);
  }
  for (const auto& n : ws.names()) (*ws.used_)[n] = false;
  return ws;
}

bool WeightStore::has(const std::string& name) const {
  return single_ ? single_->has(name) : index_->has(name);
}

std::vector<std::string> WeightStore::names() const {
  return single_ ? single_->names() : index_->names();
}

size_t WeightStore::size() const { return single_ ? single_->size() : index_->names().size(); }

uint64_t WeightStore::total_bytes() const {
  uint64_t n = 0;
  for (const auto& name : names()) n += info(name).nbytes();
  return n;
}

const SafetensorsFile& WeightStore::file_of(const std::string& name) const {
  if (single_) {
    single_->info(name);  // throws a clear error when missing
    return *single_;
  }
  return index_->file_of(name);
}

const TensorInfo& WeightStore::info(const std::string& name) const {
  return file_of(name).info(name);
}

namespace {
std::mutex g_used_mu;
}

torch::Tensor WeightStore::get(const std::string& name, const std::vector<int64_t>& expected_shape,
                               std::optional<torch::ScalarType> dtype) const {
  const SafetensorsFile& f = file_of(name);
  const TensorInfo& t = f.info(name);
  if (!expected_shape.empty())
    VLA_CHECK(t.shape == expected_shape, "tensor ", name, ": checkpoint has ", shape_str(t.shape),
              ", model expects ", shape_str(expected_shape), " (", f.path(), ")");
  {
    std::lock_guard<std::mutex> lock(g_used_mu);
    (*used_)[name] = true;
  }
  return f.load(name, dtype);
}

torch::Tensor WeightStore::view(const std::string& name) const {
  const SafetensorsFile& f = file_of(name);
  {
    std::lock_guard<std::mutex> lock(g_used_mu);
    (*used_)[name] = true;
  }
  return f.view(name);
}

std::vector<std::string> WeightStore::unused_names() const {
  std::lock_guard<std::mutex> lock(g_used_mu);
  std::vector<std::string> out;
  for (const auto& kv : *used_)
    if (!kv.second) out.push_back(kv.first);
  return out;
}

}  // namespace vla

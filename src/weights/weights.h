// vla weights: Hugging Face checkpoint I/O.
//  - safetensors reader (mmap, strict validation, sharded index) and crash-safe writer;
//  - WeightStore: one object over a checkpoint folder (single file or sharded index);
//  - Qwen2.5-VL config.json / preprocessor config parsing (transformers 4.x and 5.x layouts).
//
// Tensor memory: SafetensorsFile::view() returns a zero-copy CPU tensor over the file mapping
// (the mapping is private copy-on-write, so writing into the tensor never touches the file, and
// the tensor keeps the mapping alive). load()/WeightStore::get() return a tensor that owns its
// memory (a copy, converted to the requested dtype).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace vla {

// ---------------------------------------------------------------- dtypes
// The safetensors dtype names this engine reads and writes.
enum class StDType { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL };
std::string st_dtype_name(StDType dt);            // "F32", "BF16", ...
StDType parse_st_dtype(const std::string& name);  // throws vla::Error on an unknown name
size_t st_dtype_size(StDType dt);                 // bytes per element
torch::ScalarType st_to_torch(StDType dt);
StDType st_from_torch(torch::ScalarType t);  // throws for dtypes safetensors cannot hold here

// "[64, 32]"
std::string shape_str(const std::vector<int64_t>& shape);
std::string shape_str(torch::IntArrayRef shape);

// ---------------------------------------------------------------- safetensors
struct TensorInfo {
  std::string name;
  StDType dtype = StDType::F32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets relative to the start of the data section
  uint64_t end = 0;
  int64_t numel() const;
  uint64_t nbytes() const { return end - begin; }
};

class SafetensorsFile {
 public:
  // Maps the file and validates the header: header length within the file, valid JSON object,
  // known dtypes, shape x dtype size == byte span, offsets inside the data section, tensors
  // contiguous and non-overlapping and covering the data section exactly. Throws vla::Error
  // naming the file and the problem (truncated file, bad header, bad tensor entry).
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  uint64_t file_size() const { return size_; }
  bool has(const std::string& name) const { return index_.count(name) > 0; }
  std::vector<std::string> names() const;  // sorted
  size_t size() const { return tensors_.size(); }
  const TensorInfo& info(const std::string& name) const;  // throws when missing
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // Zero-copy CPU tensor over the mapping, in the stored dtype (copy-on-write private mapping;
  // keeps the mapping alive). Falls back to a copy when the data is not aligned to its element.
  torch::Tensor view(const std::string& name) const;
  // Owning copy, converted to `dtype` when given.
  torch::Tensor load(const std::string& name,
                     std::optional<torch::ScalarType> dtype = std::nullopt) const;

 private:
  SafetensorsFile() = default;
  struct Mapping;
  std::string path_;
  uint64_t size_ = 0;
  std::shared_ptr<Mapping> map_;
  const uint8_t* data_ = nullptr;  // start of the data section
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// Writes a safetensors file as Hugging Face does: JSON header (with "__metadata__" when
// metadata is non-empty) padded with spaces to a multiple of 8 bytes, tensors laid out by
// descending element size then name (so every tensor is aligned), crash-safe (temp + rename).
// Tensors may live on any device / be non-contiguous; they are copied to contiguous CPU.
void save_safetensors(const std::string& path, const std::map<std::string, torch::Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// Sharded checkpoint: model.safetensors.index.json {"metadata": {...}, "weight_map": {name:
// file}}. All shards are opened (mmap) and every mapped name is checked to exist in its shard.
class SafetensorsIndex {
 public:
  static SafetensorsIndex open(const std::string& index_json_path);
  bool has(const std::string& name) const { return where_.count(name) > 0; }
  std::vector<std::string> names() const;  // sorted
  const TensorInfo& info(const std::string& name) const;
  const SafetensorsFile& file_of(const std::string& name) const;
  const std::vector<std::shared_ptr<SafetensorsFile>>& shards() const { return shards_; }
  const nlohmann::json& metadata() const { return metadata_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::vector<std::shared_ptr<SafetensorsFile>> shards_;
  std::map<std::string, size_t> where_;  // tensor -> shard index
  nlohmann::json metadata_;
};

// Writes `tensors` as shards of at most max_shard_bytes each (model-00001-of-0000N.safetensors)
// plus model.safetensors.index.json in `dir`, as transformers' save_pretrained does. With one
// shard it writes model.safetensors and no index.
void save_safetensors_sharded(const std::string& dir,
                              const std::map<std::string, torch::Tensor>& tensors,
                              uint64_t max_shard_bytes,
                              const std::map<std::string, std::string>& metadata = {});

// The weights of a checkpoint: a folder holding model.safetensors or
// model.safetensors.index.json, a single .safetensors file, or an index .json file.
class WeightStore {
 public:
  static WeightStore open(const std::string& path);
  bool has(const std::string& name) const;
  std::vector<std::string> names() const;  // sorted
  const TensorInfo& info(const std::string& name) const;
  // Owning copy converted to dtype (default: stored dtype). When expected_shape is non-empty
  // the stored shape must equal it, else vla::Error "tensor NAME: checkpoint has [..], model
  // expects [..]". A missing tensor names the checkpoint and similar names.
  torch::Tensor get(const std::string& name, const std::vector<int64_t>& expected_shape = {},
                    std::optional<torch::ScalarType> dtype = std::nullopt) const;
  // Zero-copy view (stored dtype), see SafetensorsFile::view.
  torch::Tensor view(const std::string& name) const;
  // Names never fetched with get()/view(): useful to report unused checkpoint tensors.
  std::vector<std::string> unused_names() const;
  const std::string& path() const { return path_; }
  size_t size() const;
  uint64_t total_bytes() const;

 private:
  const SafetensorsFile& file_of(const std::string& name) const;
  std::string path_;
  std::shared_ptr<SafetensorsFile> single_;
  std::shared_ptr<SafetensorsIndex> index_;
  std::shared_ptr<std::map<std::string, bool>> used_;
};

}  // namespace vla

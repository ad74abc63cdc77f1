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

// ---------------------------------------------------------------- Qwen2.5-VL config
// Language model section (flat top-level fields in transformers 4.x config.json, "text_config"
// in transformers 5.x).
struct Qwen25VLTextConfig {
  int64_t vocab_size = 0;  // required
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;  // defaults to num_attention_heads (as transformers)
  int64_t max_position_embeddings = 32768;
  double rms_norm_eps = 1e-5;  // transformers' Qwen2_5_VLTextConfig default; 3B file says 1e-6
  double rope_theta = 1000000.0;
  std::vector<int64_t> mrope_section;  // required, e.g. [16, 24, 24]; sum * 2 == head_dim
  bool tie_word_embeddings = false;
  std::string hidden_act = "silu";
  bool use_sliding_window = false;  // parsed for completeness; Qwen2.5-VL ships it off
  int64_t head_dim() const { return num_attention_heads ? hidden_size / num_attention_heads : 0; }
};

// Vision tower section ("vision_config"). Defaults are transformers' Qwen2_5_VLVisionConfig
// defaults; values present in the file always win (the published 3B config writes only a few).
struct Qwen25VLVisionConfig {
  int64_t depth = 32;
  int64_t hidden_size = 3584;
  int64_t intermediate_size = 3420;
  int64_t num_heads = 16;
  int64_t in_channels = 3;  // "in_chans" in 4.x files
  int64_t patch_size = 14;  // "spatial_patch_size" also accepted
  int64_t temporal_patch_size = 2;
  int64_t spatial_merge_size = 2;
  int64_t window_size = 112;
  int64_t out_hidden_size = 3584;  // must equal the text hidden_size
  std::vector<int64_t> fullatt_block_indexes = {7, 15, 23, 31};
  double tokens_per_second = 4;  // transformers default; the published 3B file says 2
  double rope_theta = 10000.0;
  std::string hidden_act = "silu";
  int64_t head_dim() const { return num_heads ? hidden_size / num_heads : 0; }
};

struct Qwen25VLConfig {
  Qwen25VLTextConfig text;
  Qwen25VLVisionConfig vision;
  // Special token ids, from config.json (never hard-coded); bos/eos/pad from
  // generation_config.json when present (it wins), else config.json. -1 = absent.
  int64_t image_token_id = -1;  // required
  int64_t video_token_id = -1;
  int64_t vision_start_token_id = -1;  // required
  int64_t vision_end_token_id = -1;    // required
  int64_t bos_token_id = -1;
  int64_t pad_token_id = -1;
  std::vector<int64_t> eos_token_ids;
  std::string torch_dtype;  // "float32" / "bfloat16" / "" when absent ("dtype" in 5.x)
  std::string layout;       // "transformers-4" (flat) or "transformers-5" (text_config)

  // Parses a config.json object of either layout and validates it. `source` names the file in
  // errors, e.g. "ckpt/config.json: text_config.hidden_size must be an integer".
  static Qwen25VLConfig from_json(const nlohmann::json& j, const std::string& source = "config");
  // Reads DIR/config.json (or the given .json file) and, when present beside it,
  // generation_config.json (bos/eos/pad ids).
  static Qwen25VLConfig load(const std::string& dir_or_file);
  // Throws vla::Error on inconsistent values (hidden_size % heads, heads % kv_heads,
  // sum(mrope_section) * 2 == head_dim, out_hidden_size == text hidden_size, token ids in vocab,
  // full-attention block indexes < depth, window_size multiple of patch * merge, ...).
  void validate(const std::string& source = "config") const;
  // A transformers-5-style config.json (nested text_config with rope_parameters, vision_config).
  nlohmann::json to_json() const;
  nlohmann::json generation_config_json() const;
  // Writes DIR/config.json and DIR/generation_config.json (crash-safe).
  void save(const std::string& dir) const;
};

}  // namespace vla

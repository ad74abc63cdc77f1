// vla gpu: the GPU fast path for Qwen2.5-VL VL features.
//
// An inference engine specialised for fixed shapes (a robot's views x resolution x prompt do not
// change): host uint8 HxWx3 frames -> pinned upload -> GPU preprocessing (PIL-exact bicubic resize,
// rescale, normalise, patchify straight into the vision tower's window order) -> vision tower (its
// window blocks: rotary + attention over all windows of all views in one kernel; its full-attention
// blocks: flash / cuDNN attention) with fused RMSNorm / rotary / SwiGLU kernels -> patch merger
// scattered straight into the token embeddings -> Qwen2.5 decoder (GQA, M-RoPE) -> last hidden
// states. The fixed-shape path is captured into CUDA graphs. Weights are the Hugging Face tensors
// (same names as the reference model in src/models), converted once to bf16 with fused QKV /
// gate-up matrices.
//
// The same code runs on the CPU in float32 with reference (pure ATen) versions of the fused ops, so
// the layout logic (window permutation, position ids, fused weights) is tested in CI without a
// GPU; the CUDA kernels are compared against those references on the GPU machine.
#pragma once

#include <torch/torch.h>

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "models/models.h"
#include "vision/vision.h"
#include "weights/weights.h"

namespace vla::gpu {

// True when this build has the CUDA kernels (torch with CUDA) and a CUDA device is visible.
bool cuda_available();
// True when this build compiled the CUDA kernels at all.
bool kernels_compiled();
// Whether EngineOptions::fp8 can be used on `device` (torch >= 2.1; CUDA: compute capability
// >= 8.9 and aten::_scaled_mm; CPU: emulated).
bool fp8_available(const at::Device& device);
// "NVIDIA H100 80GB HBM3" or "cpu".
std::string device_name(const at::Device& device);

// ------------------------------------------------------------------ engine
// Returns the tensor of a Hugging Face name (the shape the model expects is given for sources
// that make tensors, e.g. random weights), or an undefined tensor when absent.
using WeightFn =
    std::function<at::Tensor(const std::string& name, const std::vector<int64_t>& shape)>;
// A WeightFn over a checkpoint's tensors.
WeightFn checkpoint_weights(const WeightStore& store);

struct EngineOptions {
  // cuda:0 when available, else cpu.
  at::Device device = at::Device(at::kCPU);
  // bf16 on CUDA, f32 on CPU unless set.
  at::ScalarType dtype = at::kFloat;
  // Capture prepared plans into CUDA graphs (CUDA only).
  bool cuda_graphs = true;
  // Use the CUDA kernels for fused ops (else the ATen references; for checking).
  bool fused_kernels = true;
  // FP8 (e4m3) matrix products for the qkv, gate|up and down projections of the vision blocks
  // and decoder layers: weights quantised once at load with one scale per output channel,
  // activations per token by the fused add+RMSNorm / SwiGLU kernels, aten::_scaled_mm with bf16
  // output (or, after Engine::calibrate_fp8, one static scale per activation and per weight, and
  // the attention output projections in FP8 too, their input quantised in the attention kernels'
  // store). Patch embedding, attention, merger, embeddings and the LM head stay bf16.
  // Needs torch >= 2.1 and, on CUDA, compute capability >= 8.9 (on the CPU it is emulated by
  // dequantising, for checking). Off by default: it moves the last hidden states by several percent
  // (docs/gpu.md).
  bool fp8 = false;
  // _scaled_mm's use_fast_accum (Hopper FP8 accumulation without periodic fp32 promotion): faster,
  // no measurable change of the error here (docs/gpu.md).
  bool fp8_fast_accum = true;
  // After Engine::calibrate_fp8: which attention output projections (the vision tower's proj, the
  // decoder's o_proj, or both) run in FP8 too, their input quantised in the attention kernels'
  // store with a calibrated scale. Chosen by task success (the shipped policy, 200 episodes, FP8
  // static on an H200; docs/gpu.md): none 196, vision 194, decoder 184, all 181 successes, so the
  // default is the vision tower's (0.5 ms faster at 5 views of 640x360 with the 3B model) and the
  // decoder's stay bf16. Per-token FP8 (no calibration) keeps both in bf16.
  enum class Fp8OutputProjections { kNone, kVision, kDecoder, kAll };
  Fp8OutputProjections fp8_output_projections = Fp8OutputProjections::kVision;
  // The residual adds of each block's output projections (attention proj / o_proj, MLP down) in
  // the GEMM's epilogue (cuBLASLt with the residual stream as C = D, beta = 1; ops.h
  // linear_accumulate_), so the next norm reads one tensor instead of adding two. Off: the
  // product is written and the fused add + RMSNorm kernel adds it (for comparison; CUDA only).
  bool residual_in_gemm = true;
  // The MLP's SwiGLU in the gate|up GEMM's epilogue (ops.h linear_swiglu / linear_swiglu_fp8: a
  // Triton kernel, CUDA builds with Triton) where it is faster at a plan's rows than the GEMM +
  // the SwiGLU kernel (timed at prepare; bf16, or FP8 with static scales). Off: always the two
  // kernels (for comparison).
  bool swiglu_in_gemm = true;
  // Attention of the decoder's prefill: kTuned (CUDA) times flash-varlen, sdpa, cudnn, the causal
  // kernel (kernels/causal_attention.cu) and each compiled variant of its Triton twin
  // (kernels/causal_attention.py, head dim 128) on each plan's shapes and keeps the fastest that
  // matches flash (Engine::attention_backend() says which); the others force one (sdpa / cudnn need
  // sequences of equal length, else flash; without CUDA every choice runs the math reference).
  enum class DecoderAttention { kTuned, kFlashVarlen, kSdpa, kCudnn, kCausalKernel };
  DecoderAttention decoder_attention = DecoderAttention::kTuned;
  // A stage (vision tower / decoder) uses fp8 only when it has at least this many rows (tokens):
  // below that the fp8 GEMMs are not faster than bf16.
  int64_t fp8_min_rows = 0;
  // Decode step of generate_greedy: which one-row products (qkv, o_proj, gate|up with SwiGLU,
  // down, LM head) run through the GEMV kernel (kernels/gemv.cu) instead of cuBLAS. kMeasure
  // (CUDA) times both for each weight matrix once per engine and keeps the faster
  // (Engine::decode_report() says which); kOff / kOn force one (the CPU always uses ATen).
  enum class DecodeGemv { kMeasure, kOff, kOn };
  DecodeGemv decode_gemv = DecodeGemv::kMeasure;
  // Default options for this machine: cuda:0 + bf16 when available, else cpu + f32.
  static EngineOptions best_available();
};

// The names of EngineOptions::Fp8OutputProjections, in the enum's order: none, vision, decoder,
// all (what --fp8-out-proj and policy::VlmOptions::fp8_output_projections take).
const std::vector<std::string>& fp8_output_projection_names();
std::string to_string(EngineOptions::Fp8OutputProjections which);
// The choice named `name`; throws vla::Error naming the choices for any other name.
EngineOptions::Fp8OutputProjections parse_fp8_output_projections(const std::string& name);

enum class ViewLayout {
  kOneSequence,  // all views in one prompt: <vision_start><image_pad>*n<vision_end> per view
  kBatch,        // one sequence per view (same prompt), run as a packed batch
};

// A fixed-shape job: `views` frames of height x width (uint8 HWC3) and a prompt given as token ids
// where each image is one `image_token_id` placeholder (the engine expands it to the grid's
// token count). With kBatch the prompt must hold exactly one placeholder and is used per view.
struct PlanSpec {
  int views = 5;
  int height = 360;
  int width = 640;
  std::vector<int64_t> prompt_ids;
  ViewLayout layout = ViewLayout::kOneSequence;
  // Decoder layers run (0 = all): the features of the first K layers with the final norm applied,
  // as the reference model's ForwardOptions::num_layers (GR00T N1's middle-layer features). The
  // prefill stops after layer K.
  int text_layers = 0;
};

// One matrix product of a plan, as the engine runs it: [m, k] x [k, n] (weights [n, k]), `count`
// times per run, as an e4m3 GEMM when `fp8`. What bench_gpu times to get the plan's GEMM floor.
struct PlanGemm {
  int64_t m = 0, k = 0, n = 0;
  int64_t count = 0;
  bool fp8 = false;
  std::string what;         // e.g. "vision qkv"
  bool tensorwise = false;  // fp8 with static scales (Engine::calibrate_fp8): tensor-wise GEMM
};

// Per-stage device times of the last run (ms, CUDA events; 0 on CPU).
struct StageTimes {
  double upload_ms = 0, preprocess_ms = 0, vision_ms = 0, llm_ms = 0, total_ms = 0;
};

struct EngineImpl;

// One Qwen2.5-VL on one device. It keeps state between calls (the prepared plan, the decode
// state), so it serves one caller at a time: callers on several threads hold a lock (as
// src/policy/vlm_fast.cpp does).
class Engine {
 public:
  // Loads and converts the weights of the model `config` describes through `weights` (HF names;
  // also accepts the transformers 5 prefixes model.language_model.* / model.visual.*). Images
  // are preprocessed as `image_config` says. Throws vla::Error naming a missing or mis-shaped
  // tensor.
  Engine(const Qwen25VLConfig& config, const ImagePreprocessConfig& image_config,
         const WeightFn& weights, EngineOptions options = {});
  // A checkpoint folder: config.json, processor config, model.safetensors (or a sharded index).
  static std::unique_ptr<Engine> from_pretrained(const std::string& dir, EngineOptions options);
  // Random weights (normal, std 0.02, rounded to bf16; norms 1 + normal * 0.05), generated on
  // the device: for benchmarks of an architecture without a checkpoint.
  static std::unique_ptr<Engine> random(const Qwen25VLConfig& config,
                                        const ImagePreprocessConfig& image_config,
                                        EngineOptions options, uint64_t seed = 0);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  const Qwen25VLConfig& config() const;
  const ImagePreprocessConfig& image_config() const;
  const EngineOptions& options() const;
  // Whether later prepare() calls capture CUDA graphs.
  void set_cuda_graphs(bool on);
  // EngineOptions::residual_in_gemm for later prepare() / forward calls.
  void set_residual_in_gemm(bool on);
  // EngineOptions::swiglu_in_gemm for later prepare() calls.
  void set_swiglu_in_gemm(bool on);
  // FP8 settings for later prepare() / forward calls (fp8 engines only).
  void set_fp8_fast_accum(bool on);
  // EngineOptions::fp8_output_projections; takes effect at the next calibrate_fp8.
  void set_fp8_output_projections(EngineOptions::Fp8OutputProjections which);
  void set_fp8_min_rows(int64_t rows);

  // ---- fixed-shape fast path
  // Builds buffers, tables and (on CUDA) graphs for `spec`. Re-preparing replaces the plan.
  void prepare(const PlanSpec& spec);
  bool prepared() const;
  const PlanSpec& plan() const;
  // Pinned host buffer of view v (height*width*3 bytes) that run() uploads from.
  uint8_t* frame_buffer(int view);
  // Copies frames into the pinned buffers, then run(). Each frame is height*width*3 bytes.
  at::Tensor encode(const std::vector<const uint8_t*>& frames);
  // Uploads the frame buffers and computes the features: [tokens, hidden] for kOneSequence,
  // [views, tokens, hidden] for kBatch. The tensor is the plan's static output: copy it before
  // the next run if it must be kept.
  at::Tensor run();
  // Device times of the last run() (synchronises).
  StageTimes last_times();
  // Tokens of the prepared sequence (expanded ids), per sequence.
  const std::vector<int64_t>& plan_token_ids() const;
  int64_t plan_vision_patches() const;
  // Model FLOPs of one run of the plan (2 * MACs of matrix products + attention).
  double plan_flops() const;
  const std::vector<PlanGemm>& plan_gemms() const;
  double plan_vision_flops() const;
  // Whether the plan runs as captured CUDA graphs.
  bool plan_uses_graphs() const;
  // ---- FP8 static scales (fp8 engines)
  // Calibrates one static scale per quantised activation (the inputs of the qkv, gate|up and down
  // products of every vision block and decoder layer) on `frames` (one per view of the prepared
  // plan, as encode() takes them):
  // one eager pass with per-token scales records each activation's amax (a later call keeps the
  // larger of both), then every such activation is quantised with scale = amax / 448 (larger
  // values saturate at +-448) and the weights with one scale per matrix, so that every FP8 GEMM
  // runs with tensor-wise scales (cuBLASLt's faster kernels; no amax reduction in the norm /
  // SwiGLU kernels). Applies to every later call (plans, forward, generate_greedy). Re-prepares
  // the plan (its frame buffers are cleared). Throws vla::Error when the engine is not fp8, no
  // plan is prepared, the frames do not fit it (as encode), or an amax is not finite. Follows the
  // static ("per-tensor, calibrated") FP8 recipe of TensorRT-LLM / vLLM; docs/gpu.md has the
  // measured speed and error.
  void calibrate_fp8(const std::vector<const uint8_t*>& frames);
  // Back to per-token activation scales and per-channel weight scales (re-prepares the plan).
  void clear_fp8_calibration();
  bool fp8_calibrated() const;
  // Runs only the vision stage of the plan (preprocessing done by the last run()); for timing.
  void run_vision_only();
  // One eager pass of the plan with CUDA events between ops: device ms per op kind (CUDA only).
  std::vector<std::pair<std::string, double>> profile_run();
  // Attention implementation in use ("flash-varlen" or "math"), then the last plan's choices: each
  // timed candidate and the pick, or the decoder backend EngineOptions::decoder_attention forced.
  std::string attention_backend() const;

  // ---- reference-shaped entry points (any shapes, eager; used by the parity tests)
  // GPU preprocessing of uint8 frames to pixel_values in Hugging Face patch order
  // [sum(grid_h*grid_w), 3*2*14*14] (float32 on the engine device) and grid_thw [n, 3].
  std::pair<at::Tensor, at::Tensor> preprocess(const std::vector<const uint8_t*>& frames,
                                               int height, int width);
  // Vision tower + merger: pixel_values [N, patch_dim] (HF order), grid_thw int [n, 3]
  // -> [N/4, out_hidden] in HF order.
  at::Tensor vision_forward(const at::Tensor& pixel_values, const at::Tensor& grid_thw);
  // Full forward: input_ids [S] with expanded image placeholders -> last hidden states [S, hidden]
  // (after the final norm). pixel_values/grid_thw may be undefined for text-only prompts.
  // text_layers: run only the first K decoder layers (0 = all; PlanSpec::text_layers).
  at::Tensor forward(const std::vector<int64_t>& input_ids, const at::Tensor& pixel_values,
                     const at::Tensor& grid_thw, int text_layers = 0);
  // Logits of hidden states [S, hidden] -> [S, vocab] (float32).
  at::Tensor logits(const at::Tensor& hidden);
  // Greedy decoding: prefill the ids (with images) then `max_new_tokens` tokens (stops at any id
  // in stop_ids). On CUDA the decode step is a captured graph over a static KV cache, both kept
  // by the engine: later calls replay it (a call that needs more cache rows re-makes them).
  // decode_ms: wall time of the decode steps after the first token (the first call's includes
  // the capture).
  std::vector<int64_t> generate_greedy(const std::vector<int64_t>& input_ids,
                                       const at::Tensor& pixel_values, const at::Tensor& grid_thw,
                                       int max_new_tokens,
                                       const std::vector<int64_t>& stop_ids = {},
                                       double* decode_ms = nullptr);
  // Which decode products use the GEMV kernel and the timings behind the choice
  // (EngineOptions::decode_gemv); measures on first use.
  std::string decode_report();

 private:
  Engine(const Qwen25VLConfig& config, const ImagePreprocessConfig& image_config,
         EngineOptions options);
  void load_frames(const std::vector<const uint8_t*>& frames, const char* what);
  std::unique_ptr<EngineImpl> impl_;
};

// A chat prompt with images for the reference-shaped entry points (forward, generate_greedy):
// every image (any size; grey / RGBA converted as the processor does) preprocessed on the
// engine's device, and the prompt ids from the checkpoint's tokenizer + chat template with each
// image's <|image_pad|> expanded to its token count. What `vla features`, `vla caption` and the
// policy's fast encoder share.
struct ChatInputs {
  std::vector<int64_t> input_ids;
  at::Tensor pixel_values, grid_thw;  // undefined for a text-only prompt
};
ChatInputs chat_inputs(Engine& engine, const PromptCodec& codec, const std::vector<Image>& images,
                       const std::string& text, bool text_first = false);

}  // namespace vla::gpu

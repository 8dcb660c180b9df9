// What `ftune plan` says about a run before anything heavy loads: the GPU it plans for (detected,
// or named from a table of common training GPUs), the model FLOPs of a step and an estimated step
// time, and the memory plan (plan/memory_plan.h) laid out per category.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/llama_config.h"
#include "plan/memory_plan.h"
#include "recipe/run_plan.h"

namespace ftune {

struct GpuSpec {
  std::string name;
  int sm = 0;                // compute capability, e.g. 90
  size_t memory = 0;         // bytes, as the driver reports the card's total
  double dense_tflops = 0;   // peak dense tensor-core TFLOP/s with fp32 accumulation: bf16, or fp16 below sm_80
};

// The known GPUs (vendor datasheet figures), and one by name: case-insensitive, ignoring spaces and
// dashes, e.g. "t4", "A100-80GB", "h100" (fails listing the names when none matches).
const std::vector<GpuSpec>& known_gpus();
const GpuSpec& find_gpu(const std::string& name);

// Model FLOPs of one trained token, as the benchmarks count them: full fine-tuning 6 N (forward,
// input and weight gradients of every matrix: projections and lm_head), LoRA/QLoRA 4 N of the
// frozen matrices plus 6 N_lora, and 6 L q T for causal attention; recomputation under gradient
// checkpointing not counted.
double train_flops_per_token(const LlamaConfig& c, Method method, int64_t n_lora, int64_t seq);
// Adapter parameters of a LoRA spec on this model.
int64_t lora_parameter_count(const LlamaConfig& c, const LoraSpec& spec);

// The fraction of a GPU's dense peak that ftune's step reaches, for the time estimate: its measured
// model-FLOPs utilisation on an H200 (2026-12-01) was 39-48% (full fine-tuning and LoRA).
inline constexpr double kAssumedUtilisation = 0.45;

// A pipeline stage's layers [first, end) (end -1: to the last) and its micro-batches in flight.
struct StageLayers {
  int64_t first = 0, end = -1, slots = 1;
};

struct RunEstimate {
  GpuSpec gpu;
  bool gpu_detected = false;
  MemoryPlan memory;
  std::string fit_advice;      // empty when the plan fits the GPU (and the host, when checked)
  size_t host_available = 0;   // the host memory it was checked against (0: not checked)
  int64_t tokens_per_micro_batch = 0, tokens_per_step = 0;
  double flops_per_step = 0;   // model FLOPs (with checkpointing's recompute: +2 N per token)
  double step_seconds = 0;     // estimate: compute at kAssumedUtilisation, plus optimizer offload transfers
  double offload_seconds = 0;  // of which the offloaded optimizer update
  // dist.pipeline: each stage's layers [first, end) and device memory (`memory` is the largest
  // stage's, which every rank must fit), and the 1F1B bubble.
  struct Stage {
    int64_t first = 0, end = 0;
    size_t device_bytes = 0;
  };
  std::vector<Stage> stages;
  double bubble = 0;
};

// The plan of a run on `gpu` (CUDA builds; the others fail naming the missing CUDA backend).
RunEstimate estimate_run(const LlamaConfig& cfg, const LoraSpec* spec, const RunPlan& plan, int64_t max_seq,
                         const GpuSpec& gpu);
// Where the run's host memory (pinned and other) exceeds `available` bytes (0: not checked) and it
// otherwise fits, fit_advice says so: offloaded layer inputs grow with the tokens of a micro-batch
// and can outgrow the host before the GPU.
void check_host_memory(RunEstimate& e, size_t available);
// The longest rows (max_seq_len) whose plan still fits `gpu` (and train.max_memory, and the host's
// `host_available` bytes unless 0): a binary search over the plan, which grows with the length; 0
// when not even one token fits, and `cap` when `cap` tokens fit.
int64_t longest_fitting_seq(const LlamaConfig& cfg, const LoraSpec* spec, const RunPlan& plan, const GpuSpec& gpu,
                            size_t host_available = 0, int64_t cap = int64_t{1} << 23);
// The detected GPU, when this build has CUDA and a device is visible.
bool detect_gpu(GpuSpec& out);

// The printed plan (text), and the same as one JSON object.
std::string format_estimate(const RunEstimate& e, const LlamaConfig& cfg, const RunPlan& plan, const std::string& model);
std::string estimate_json(const RunEstimate& e);

}  // namespace ftune

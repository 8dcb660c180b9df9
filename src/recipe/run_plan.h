// How a run trains, decided once from the recipe: the method, precision, optimizer, device and
// memory settings as enums, and every rule that joins several recipe keys (a key the method does
// not use, a combination that is not available). Everything below train/ takes a RunPlan and never
// reads a recipe key.
#pragma once
#include <cstdint>
#include <string>

#include "model/lora.h"
#include "optim/adamw.h"
#include "recipe/train_config.h"

namespace ftune {

enum class Method { Lora, Qlora, Full };            // train.method
enum class Precision { Auto, Bf16, Fp16, Fp32 };    // train.precision (GPU storage; the CPU is fp32)
enum class OptimizerKind { AdamW, AdamW8bit, PagedAdamW8bit };  // train.optimizer
enum class Device { Cpu, Cuda, Auto };              // train.device

struct RunPlan {
  Method method = Method::Lora;
  Precision precision = Precision::Auto;
  OptimizerKind optimizer = OptimizerKind::AdamW;
  Device device = Device::Cpu;
  bool checkpointing = false;        // train.gradient_checkpointing
  bool offload_activations = false;  // train.offload_activations (needs checkpointing)
  bool deterministic = false;        // train.deterministic
  bool optimizer_offload = false;    // train.optimizer_offload (full fine-tuning on the GPU)
  AdamWSettings adamw;               // betas, eps, weight decay
  double max_grad_norm = 1.0;        // <= 0: no clipping
  int64_t micro_batch = 1, grad_accum = 1;
  int zero = 0;  // dist.zero: 0 data parallel, 1-3 ZeRO stages (with several ranks)
  int pipeline = 1;  // dist.pipeline: stages the layers are split over (1: no pipeline)
  int64_t max_memory = 0;  // train.max_memory in bytes (0: no cap but the GPU's)
  int world = 1;           // ranks of the run, for planning (ftune plan --ranks; training reads its topology)
};

// "15GiB", "16000MB", "1.5GB", "123456" (bytes) as bytes; fails naming `key` otherwise.
int64_t parse_memory_size(const std::string& text, const std::string& key);

// The plan of a recipe. Fails with one line naming `label` and the keys when keys contradict
// each other or ask for something not available.
RunPlan make_run_plan(const TrainConfig& cfg, const std::string& label);

// The adapter the lora.* keys describe (r, alpha, dropout, rsLoRA, target modules).
LoraSpec lora_spec(const LoraSettings& s);

}  // namespace ftune

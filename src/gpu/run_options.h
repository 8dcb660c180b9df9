// The GPU model's options from a run plan on a GPU of compute capability `sm`: the storage type
// (precision auto: bf16 where the GPU has it), NF4 for QLoRA, the optimizer, checkpointing and
// offload. Fails with the recipe keys when the GPU cannot run the plan (bf16 or QLoRA below sm_80).
#pragma once
#include <cstdint>
#include <string>

#include "gpu/llama_gpu.h"
#include "recipe/run_plan.h"

namespace ftune {

GpuModelOptions gpu_model_options(const RunPlan& p, int64_t max_batch, int64_t max_seq, int sm,
                                  const std::string& gpu_name);

// GpuModelOptions::mlp_chunk for micro-batches of `tokens`: under checkpointing, beyond 16384
// tokens the MLP's gate, up and SwiGLU buffers (3 x intermediate_size values a token, the largest
// per-token buffers) hold 8192 tokens at a time; otherwise 0 (all at once).
int64_t mlp_chunk_for(bool checkpointing, int64_t tokens);

}  // namespace ftune

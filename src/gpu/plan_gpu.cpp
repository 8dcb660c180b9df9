// The GPU side of `ftune plan`: the model's allocation counted for a GPU (no device needed), and
// the detected GPU.
#include <algorithm>

#include "core/error.h"
#include "gpu/llama_gpu.h"
#include "gpu/run_options.h"
#include "ops/cuda/context.h"
#include "plan/run_estimate.h"

namespace ftune {

// The CUDA context, cuBLAS workspace and allocator slack that are not the model's: what a run
// leaves free of the card's total for the model, as the constructor's check sees it.
constexpr size_t kContextBytes = size_t{512} << 20;

MemoryPlan plan_gpu_memory(const LlamaConfig& cfg, const LoraSpec* spec, const RunPlan& plan, int64_t max_seq,
                           const GpuSpec& gpu, std::string& fit_advice, const StageLayers& stage) {
  GpuModelOptions o = gpu_model_options(plan, plan.micro_batch, max_seq, gpu.sm, gpu.name);
  o.first_layer = stage.first, o.end_layer = stage.end, o.slots = stage.slots;
  if (plan.zero == 3 && plan.world > 1) o.zero3_world = plan.world;  // (full, or the frozen base of LoRA/QLoRA)
  const LoraSpec* s = plan.method == Method::Full ? nullptr : spec;
  if (plan.max_memory && static_cast<size_t>(plan.max_memory) > gpu.memory)
    fail("train.max_memory: {:.2f} GiB is more than the {:.2f} GiB a {} has", plan.max_memory / 1073741824.0,
         gpu.memory / 1073741824.0, gpu.name);
  size_t limit = gpu.memory;
  if (plan.max_memory) limit = std::min(limit, static_cast<size_t>(plan.max_memory));  // train.max_memory
  const size_t free = limit > kContextBytes ? limit - kContextBytes : 0;
  fit_advice = LlamaGpu::fit_advice(cfg, s, o, gpu.sm, free, gpu.memory, gpu.name);
  return LlamaGpu::plan(cfg, s, o, gpu.sm);
}

bool detect_gpu(GpuSpec& out) {
  if (cuda::device_count() == 0) return false;
  cuda::Context ctx;
  size_t free = 0, total = 0;
  cuda::memory_info(free, total);
  out.name = ctx.name();
  out.sm = ctx.sm_version();
  out.memory = total;
  // The dense peak of the closest known GPU by name (an unknown one: by its generation's).
  out.dense_tflops = out.sm >= 90 ? 989 : out.sm >= 80 ? 312 : out.sm >= 75 ? 65 : 0;
  std::string best;
  for (const GpuSpec& g : known_gpus()) {
    std::string n = g.name.substr(0, g.name.find('-'));
    if (out.name.find(n) != std::string::npos && n.size() > best.size()) best = n, out.dense_tflops = g.dense_tflops;
  }
  return true;
}

}  // namespace ftune

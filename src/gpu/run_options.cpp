// RunPlan -> GpuModelOptions.
#include "gpu/run_options.h"

#include "core/error.h"

namespace ftune {

namespace {
constexpr int64_t kMlpChunkAbove = 16384, kMlpChunk = 8192;  // tokens
}  // namespace

GpuModelOptions gpu_model_options(const RunPlan& p, int64_t max_batch, int64_t max_seq, int sm,
                                  const std::string& gpu_name) {
  const bool has_bf16 = sm >= 80;
  if (p.precision == Precision::Bf16 && !has_bf16)
    fail("train.precision=bf16 needs a GPU of compute capability 8.0 or newer; this {} is sm_{} (use fp32 or auto)",
         gpu_name, sm);
  // bf16 and auto: bf16 where the GPU has it (an explicit bf16 without it failed above); auto
  // elsewhere (the T4, sm_75) is fp16 with dynamic loss scaling, as the seed's torch_dtype=float16.
  const cuda::Storage storage = p.precision == Precision::Fp16 ? cuda::Storage::F16
                                : p.precision == Precision::Fp32 ? cuda::Storage::F32
                                : has_bf16                       ? cuda::Storage::BF16
                                                                 : cuda::Storage::F16;
  const bool qlora = p.method == Method::Qlora;
  if (qlora && storage == cuda::Storage::F32)
    fail("train.method=qlora dequantizes its NF4 base into bf16 or fp16 on the GPU: set train.precision to bf16, fp16 "
         "or auto (or train.device=cpu)");
  FT_ASSERT(!p.offload_activations || p.checkpointing);  // the run plan's rule
  const GpuOptimizer o = p.optimizer == OptimizerKind::AdamW8bit        ? GpuOptimizer::AdamW8bit
                         : p.optimizer == OptimizerKind::PagedAdamW8bit ? GpuOptimizer::PagedAdamW8bit
                                                                        : GpuOptimizer::AdamW;
  GpuModelOptions g{max_batch, max_seq, storage, p.checkpointing, qlora, o, p.offload_activations};
  g.mlp_chunk = mlp_chunk_for(p.checkpointing, max_batch * max_seq);
  g.deterministic = p.deterministic;
  g.full = p.method == Method::Full;
  g.optimizer_offload = g.full && p.optimizer_offload;
  return g;
}

int64_t mlp_chunk_for(bool checkpointing, int64_t tokens) {
  return checkpointing && tokens > kMlpChunkAbove ? kMlpChunk : 0;
}

}  // namespace ftune

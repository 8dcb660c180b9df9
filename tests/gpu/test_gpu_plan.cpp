// The memory plan `ftune plan` prints is the model's own allocation: LlamaGpu::plan (no device)
// equals what a model built with the same options plans and allocates, and the device memory the
// model takes is within 10% of it; skipped without a GPU. The plan counts cuDNN's attention workspace
// when the options ask for cuDNN: the cases ask for it exactly when libcudnn.so.9 loads here.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include "gpu/llama_gpu.h"
#include "model/presets.h"
#include "ops/cuda/context.h"
#include "ops/cuda/cudnn_attention.h"

namespace ftune {
namespace {

struct PlanCase {
  const char* name;
  bool full, nf4, checkpointing, offload, optimizer_offload;
  GpuOptimizer optimizer;
};

TEST(GpuPlan, PlanIsTheAllocationAndTheMeasuredMemory) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  cuda::Context ctx;
  if (ctx.sm_version() < 80) GTEST_SKIP() << "the cases compute in bf16";
  LlamaConfig cfg = preset_config("tinyllama");
  cfg.num_hidden_layers = 6;  // about 0.4 B parameters: allocator rounding is far below 10%
  LoraSpec spec;
  spec.r = 16, spec.alpha = 32;
  spec.targets.fill(true);
  const PlanCase cases[] = {
      {"lora", false, false, false, false, false, GpuOptimizer::AdamW},
      {"lora ckpt offload paged", false, false, true, true, false, GpuOptimizer::PagedAdamW8bit},
      {"qlora ckpt", false, true, true, false, false, GpuOptimizer::AdamW},
      {"full", true, false, false, false, false, GpuOptimizer::AdamW},
      {"full ckpt 8-bit", true, false, true, false, false, GpuOptimizer::AdamW8bit},
      {"full ckpt optimizer offload", true, false, true, false, true, GpuOptimizer::AdamW},
  };
  const bool cudnn = cuda::CudnnAttention(ctx).loaded();
  for (const PlanCase& c : cases) {
    GpuModelOptions o{2, 1024, cuda::Storage::BF16, c.checkpointing, c.nf4, c.optimizer, c.offload};
    o.cudnn_attention = cudnn;
    o.full = c.full, o.optimizer_offload = c.optimizer_offload;
    const MemoryPlan plan = LlamaGpu::plan(cfg, c.full ? nullptr : &spec, o, ctx.sm_version());
    ctx.synchronize();
    const size_t before = cuda::memory_in_use();
    LlamaGpu model(ctx, cfg, nullptr, c.full ? nullptr : &spec, o, 1);
    ctx.synchronize();
    const size_t measured = cuda::memory_in_use() - before;
    EXPECT_EQ(plan.device_total(), model.planned_bytes()) << c.name;
    for (int k = 0; k < kMemCategories; ++k) EXPECT_EQ(plan.device[k], model.memory_plan().device[k]) << c.name << k;
    const double rel = std::abs(static_cast<double>(measured) - static_cast<double>(plan.device_total())) /
                       static_cast<double>(plan.device_total());
    EXPECT_LT(rel, 0.10) << c.name << ": planned " << plan.device_total() << ", measured " << measured;
    if (c.offload || c.optimizer == GpuOptimizer::PagedAdamW8bit || c.optimizer_offload) EXPECT_GT(plan.host_pinned, 0u) << c.name;
    if (c.optimizer_offload) EXPECT_EQ(plan[MemCategory::Optimizer], 0u) << c.name;
    std::printf("[ measured ] plan %s: planned %.3f GiB, measured %.3f GiB on the device (%.1f%%); host pinned %.3f GiB\n",
                c.name, plan.device_total() / 1073741824.0, measured / 1073741824.0, 100 * rel,
                plan.host_pinned / 1073741824.0);
  }
}

}  // namespace
}  // namespace ftune

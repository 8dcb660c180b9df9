// The model's attention on cuDNN's fused engines (GpuModelOptions::cudnn_attention) against the same
// model on ftune's flash kernels: the loss and the adapter's gradients of LoRA and QLoRA, with and
// without checkpointing, agree within bf16 rounding; the model says which kernels ran; packed
// documents and train.deterministic keep ftune's kernels; the plan counts cuDNN's workspace (no GPU
// needed). The rest is skipped without a GPU, without libcudnn.so.9 or before sm_80.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include "../test_util.h"
#include "core/rng.h"
#include "gpu/llama_gpu.h"
#include "model/presets.h"
#include "ops/cuda/context.h"
#include "ops/cuda/cudnn_attention.h"
#include "gpu_fixtures.h"

namespace ftune {
namespace {

using testing::rel_err;

// Grouped-query heads of the size cuDNN's engines take (head_dim 64, 8 query heads on 2 KV heads).
LlamaConfig gqa_config() {
  LlamaConfig c;
  c.vocab_size = 160, c.hidden_size = 512, c.intermediate_size = 640, c.num_hidden_layers = 2;
  c.num_attention_heads = 8, c.num_key_value_heads = 2, c.head_dim = 64;
  return c;
}


// Skips unless cuDNN's fused attention can run here.
#define FTUNE_SKIP_WITHOUT_CUDNN()                                                       \
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";                       \
  {                                                                                      \
    cuda::Context ctx_;                                                                  \
    if (ctx_.sm_version() < 80) GTEST_SKIP() << "cuDNN's fused attention needs sm_80";   \
    cuda::CudnnAttention dnn_(ctx_);                                                     \
    if (!dnn_.loaded()) GTEST_SKIP() << "cuDNN not in use: " << dnn_.status();           \
  }

Batch random_batch(const LlamaConfig& c, int64_t rows_n, int64_t len, uint64_t seed) {
  Rng r(seed);
  std::vector<std::vector<int32_t>> rows(static_cast<size_t>(rows_n), std::vector<int32_t>(static_cast<size_t>(len)));
  for (auto& row : rows)
    for (auto& x : row) x = static_cast<int32_t>(r.below(static_cast<uint64_t>(c.vocab_size)));
  std::vector<const std::vector<int32_t>*> p;
  for (auto& row : rows) p.push_back(&row);
  return make_batch(p, p, 0);
}

TEST(CudnnAttentionGpu, GivesTheFlashKernelsLossAndGradients) {
  FTUNE_SKIP_WITHOUT_CUDNN();
  const LlamaConfig c = gqa_config();
  const LlamaWeights w = random_llama_weights(c, 31);
  LoraSpec s;
  s.r = 4, s.alpha = 8;
  s.targets.fill(true);
  for (int64_t len : {128, 200}) {  // 200: not a multiple of cuDNN's 64-row tiles
    const Batch b = random_batch(c, 2, len, 32 + len);
    for (bool nf4 : {false, true})
      for (bool ckpt : {false, true}) {
        const std::string name = fmt::format("T{} {}{}", len, nf4 ? "QLoRA" : "LoRA", ckpt ? " checkpointing" : "");
        GpuModelOptions o{b.batch, b.seq, cuda::Storage::BF16, ckpt, nf4};
        o.cudnn_attention = false;
        const LoraStep flash = lora_step(c, w, s, o, b);
        o.cudnn_attention = true;
        const LoraStep dnn = lora_step(c, w, s, o, b);
        EXPECT_EQ(flash.kernels, "ftune flash") << name;
        EXPECT_EQ(dnn.kernels.rfind("cuDNN ", 0), 0u) << name << ": " << dnn.kernels;
        // Both sides round P and dS to bf16 for their mmas in different orders: the bf16 bounds of
        // the GPU model against the CPU's (loss 2e-3 relative, gradients 3e-2).
        EXPECT_NEAR(dnn.loss, flash.loss, 2e-3 * flash.loss) << name;
        ASSERT_EQ(dnn.grads.size(), flash.grads.size()) << name;
        const double e = rel_err(dnn.grads, flash.grads);
        EXPECT_LT(e, 3e-2) << name;
        double g2 = 0;
        for (float g : flash.grads) g2 += static_cast<double>(g) * g;
        EXPECT_GT(g2, 0.0) << name;
        fmt::print("{} [{}]: loss {:.6f} vs {:.6f}, gradients rel {:.2e}\n", name, dnn.kernels, dnn.loss, flash.loss, e);
      }
  }
}

TEST(CudnnAttentionGpu, PackedDocumentsAndDeterministicKeepFtuneKernels) {
  FTUNE_SKIP_WITHOUT_CUDNN();
  const LlamaConfig c = gqa_config();
  const LlamaWeights w = random_llama_weights(c, 5);
  LoraSpec s;
  s.r = 4, s.alpha = 8;
  s.targets.fill(true);
  Rng r(9);
  std::vector<std::vector<int32_t>> docs(4);
  for (auto& d : docs)
    for (int64_t i = 0, n = 20 + r.below(40); i < n; ++i) d.push_back(static_cast<int32_t>(r.below(c.vocab_size)));
  std::vector<std::vector<std::pair<const std::vector<int32_t>*, const std::vector<int32_t>*>>> rows(2);
  for (size_t i = 0; i < docs.size(); ++i) rows[i < 2 ? 0 : 1].emplace_back(&docs[i], &docs[i]);
  const Batch packed = make_packed_batch(rows, 0, 64);
  GpuModelOptions o{packed.batch, packed.seq, cuda::Storage::BF16, false, false};
  EXPECT_EQ(lora_step(c, w, s, o, packed).kernels, "ftune flash (packed documents)");
  const Batch plain = random_batch(c, 2, 128, 7);
  GpuModelOptions d{plain.batch, plain.seq, cuda::Storage::BF16, false, false};
  d.deterministic = true;
  EXPECT_EQ(lora_step(c, w, s, d, plain).kernels, "ftune flash");
}

// The plan (no GPU) counts cuDNN's workspace where the options ask for cuDNN: for the Llama-3.1-8B
// shape's grouped-query heads at 131,072 tokens, a fp32 [1, 32, 131072, 128] buffer and 256 bytes,
// as cuDNN 9.19 asked on the H200; none with train.deterministic, which keeps ftune's kernels.
TEST(CudnnAttentionGpu, PlanCountsTheWorkspace) {
  const LlamaConfig c = preset_config("llama3-8b");
  LoraSpec s;
  s.r = 32, s.alpha = 64;
  s.targets.fill(true);
  GpuModelOptions o{1, 131072, cuda::Storage::BF16, true, true, GpuOptimizer::PagedAdamW8bit, true};
  o.mlp_chunk = 8192;
  const MemoryPlan with = LlamaGpu::plan(c, &s, o, 90);
  o.cudnn_attention = false;
  const MemoryPlan without = LlamaGpu::plan(c, &s, o, 90);
  o.cudnn_attention = true, o.deterministic = true;
  const MemoryPlan deterministic = LlamaGpu::plan(c, &s, o, 90);
  EXPECT_EQ(with[MemCategory::Scratch] - without[MemCategory::Scratch], size_t{131072} * 32 * 128 * 4 + 256);
  EXPECT_EQ(with.device_total() - without.device_total(), size_t{131072} * 32 * 128 * 4 + 256);
  // deterministic: no cuDNN workspace, only the flash backward's ordering counters on top
  const cuda::AttnShape a{1, 131072, 32, 8, 128, 1.0f};
  cuda::FlashOptions det;
  det.deterministic = true;
  const size_t counters =
      static_cast<size_t>(cuda::flash_attention_scratch_floats(a, det) - cuda::flash_attention_scratch_floats(a)) * 4;
  EXPECT_GT(counters, 0u);
  EXPECT_EQ(deterministic[MemCategory::Scratch] - without[MemCategory::Scratch], counters);
}

}  // namespace
}  // namespace ftune

// The adapter's A projections that share an input as one GEMM (GpuModelOptions::fuse_lora: q/k/v
// and gate/up) against one GEMM each: the loss and every adapter gradient of LoRA and QLoRA in bf16,
// with and without checkpointing (and the MLP in chunks, whose fused x A^T is kept chunk by chunk).
// Bounds 2e-3 (loss) and 3e-2 (gradients), the GPU model's against the CPU's: the fused GEMMs sum
// the same products in another order and round x A^T and s dy B to bf16 as the separate ones do.
// Where nothing fuses (fp32 storage, LoRA dropout, which draws a mask per projection) the two runs
// must be bit-identical. Skipped without a GPU.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include "../test_util.h"
#include "core/rng.h"
#include "gpu/llama_gpu.h"
#include "ops/cuda/context.h"
#include "gpu_fixtures.h"

namespace ftune {
namespace {

using testing::rel_err;

LlamaConfig config() {
  LlamaConfig c;
  c.vocab_size = 150, c.hidden_size = 192, c.intermediate_size = 320, c.num_hidden_layers = 2;
  c.num_attention_heads = 6, c.num_key_value_heads = 2, c.head_dim = 32;
  return c;
}


TEST(FusedLoraGpu, OneGemmPerGroupGivesTheSeparateGradients) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  bool bf16 = false;
  {
    cuda::Context ctx;
    bf16 = ctx.sm_version() >= 80;
  }
  const LlamaConfig c = config();
  const LlamaWeights w = random_llama_weights(c, 21);
  Rng r(22);
  std::vector<std::vector<int32_t>> rows(2, std::vector<int32_t>(45));
  for (auto& row : rows)
    for (auto& x : row) x = static_cast<int32_t>(r.below(static_cast<uint64_t>(c.vocab_size)));
  const Batch b = make_batch({&rows[0], &rows[1]}, {&rows[0], &rows[1]}, 0);
  for (bool some : {false, true})  // every projection, or q, v, up and down only (groups of one and two)
    for (double dropout : {0.0, 0.1}) {
      LoraSpec s;
      s.r = 8, s.alpha = 16, s.dropout = dropout;
      s.targets.fill(!some);
      if (some) s.targets[static_cast<int>(Proj::Q)] = s.targets[static_cast<int>(Proj::V)] = true,
                s.targets[static_cast<int>(Proj::Up)] = s.targets[static_cast<int>(Proj::Down)] = true;
      for (cuda::Storage st : {cuda::Storage::F32, cuda::Storage::BF16})
        for (bool nf4 : {false, true})
          for (bool ckpt : {false, true}) {
            if (st == cuda::Storage::BF16 && !bf16) continue;
            if (nf4 && st == cuda::Storage::F32) continue;
            const bool fuses = st != cuda::Storage::F32 && dropout == 0;
            const std::string name =
                fmt::format("{} dropout {} {}{}{}", some ? "q,v,up,down" : "all", dropout,
                            st == cuda::Storage::F32 ? "fp32" : "bf16", nf4 ? " QLoRA" : "", ckpt ? " checkpointing" : "");
            GpuModelOptions o{b.batch, b.seq, st, ckpt, nf4};
            if (ckpt) o.mlp_chunk = 32;  // of the 90 tokens: chunks of 32, 32 and 26
            o.fuse_lora = false;
            const LoraStep one = lora_step(c, w, s, o, b, 99);
            o.fuse_lora = true;
            const LoraStep fused = lora_step(c, w, s, o, b, 99);
            ASSERT_EQ(fused.grads.size(), one.grads.size()) << name;
            double g2 = 0;
            for (float g : one.grads) g2 += static_cast<double>(g) * g;
            EXPECT_GT(g2, 0.0) << name;
            if (!fuses) {  // the same launches, the same bits
              EXPECT_EQ(fused.loss, one.loss) << name;
              EXPECT_EQ(fused.grads, one.grads) << name;
              continue;
            }
            EXPECT_NEAR(fused.loss, one.loss, 2e-3 * one.loss) << name;
            EXPECT_LT(rel_err(fused.grads, one.grads), 3e-2) << name;
            fmt::print("{}: loss rel {:.2e}, gradients rel {:.2e}\n", name, std::abs(fused.loss - one.loss) / one.loss,
                       rel_err(fused.grads, one.grads));
          }
    }
}

}  // namespace
}  // namespace ftune

// The MLP in chunks of rows under checkpointing (GpuModelOptions::mlp_chunk): the MLP works token by
// token, so chunks of 24 rows of an 80-row micro-batch give the loss and the adapter (or full)
// gradients of the whole-batch MLP within rounding of the reordered sums - with LoRA dropout (the
// masks follow each row's place), with an NF4 base, and for full fine-tuning - and the plan's
// activations shrink by the MLP's rows. Skipped without a GPU, except the plan.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include "../test_util.h"
#include "core/rng.h"
#include "gpu/llama_gpu.h"
#include "model/presets.h"
#include "ops/cuda/context.h"

namespace ftune {
namespace {

using testing::rel_err;

LlamaConfig small_config() {
  LlamaConfig c;
  c.vocab_size = 200, c.hidden_size = 256, c.intermediate_size = 384, c.num_hidden_layers = 2;
  c.num_attention_heads = 4, c.num_key_value_heads = 2, c.head_dim = 64;
  return c;
}

struct Out {
  double loss = 0;
  std::vector<float> grads;
};

Out run(const LlamaConfig& c, const LlamaWeights& w, const LoraSpec* s, GpuModelOptions o, const Batch& b,
        uint64_t dropout_key) {
  cuda::Context ctx;
  const auto src = memory_source(w);
  LlamaGpu m(ctx, c, src.get(), s, o, 3);
  LoraParams lora;
  if (s) {
    lora = LoraParams::init(c, *s, 4);
    uint64_t k = 40;
    lora.for_each([&](const std::string& key, Tensor& t) {
      if (key.find("lora_B") != std::string::npos) testing::fill_normal(t, ++k, 0.05f);
    });
    m.set_lora(lora);
  }
  Out out;
  out.loss = m.forward_backward(b, 1.0f / static_cast<float>(b.count_targets()), dropout_key).first;
  if (s) {
    LoraParams g = lora.zeros_like();
    m.add_grads_to(g);
    g.for_each([&](const std::string&, const Tensor& t) { out.grads.insert(out.grads.end(), t.data.begin(), t.data.end()); });
  } else {
    out.grads = m.full_grads();
  }
  return out;
}

TEST(MlpChunkGpu, ChunksOfRowsGiveTheWholeBatchGradients) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  {
    cuda::Context ctx;
    if (ctx.sm_version() < 80) GTEST_SKIP() << "bf16 needs sm_80";
  }
  const LlamaConfig c = small_config();
  const LlamaWeights w = random_llama_weights(c, 31);
  Rng r(32);
  std::vector<std::vector<int32_t>> rows(2, std::vector<int32_t>(40));
  for (auto& row : rows)
    for (auto& x : row) x = static_cast<int32_t>(r.below(static_cast<uint64_t>(c.vocab_size)));
  const Batch b = make_batch({&rows[0], &rows[1]}, {&rows[0], &rows[1]}, 0);
  LoraSpec s;
  s.r = 4, s.alpha = 8, s.dropout = 0.1;
  s.targets.fill(true);
  struct Case {
    const char* name;
    cuda::Storage st;
    bool nf4, full;
    uint64_t key;
  };
  for (const Case& k : {Case{"LoRA fp32", cuda::Storage::F32, false, false, 0},
                        Case{"LoRA fp32, dropout", cuda::Storage::F32, false, false, 77},
                        Case{"LoRA bf16, dropout", cuda::Storage::BF16, false, false, 77},
                        Case{"QLoRA bf16", cuda::Storage::BF16, true, false, 0},
                        Case{"full fp32", cuda::Storage::F32, false, true, 0}}) {
    GpuModelOptions o{b.batch, b.seq, k.st, true, k.nf4};
    o.full = k.full;
    const LoraSpec* sp = k.full ? nullptr : &s;
    const Out whole = run(c, w, sp, o, b, k.key);
    o.mlp_chunk = 24;  // chunks of 24, 24, 24 and 8 rows
    const Out chunked = run(c, w, sp, o, b, k.key);
    const bool fp32 = k.st == cuda::Storage::F32;
    // The forward's values per row are the same products; only the GEMMs' row counts differ
    // (cuBLAS may pick another kernel: fp32 rounding, or bf16's on the MLP's outputs) and the
    // adapter's gradient sums run over four chunks: fp32 within 1e-6 (loss) and 1e-5 (gradients);
    // bf16 within its rounding (2e-3 and 3e-2, as the bf16 comparisons with the CPU model).
    EXPECT_NEAR(chunked.loss, whole.loss, (fp32 ? 1e-6 : 2e-3) * whole.loss) << k.name;
    ASSERT_EQ(chunked.grads.size(), whole.grads.size()) << k.name;
    EXPECT_LT(rel_err(chunked.grads, whole.grads), fp32 ? 1e-5 : 3e-2) << k.name;
    double g2 = 0;
    for (float g : whole.grads) g2 += static_cast<double>(g) * g;
    EXPECT_GT(g2, 0.0) << k.name;
    fmt::print("{}: loss rel {:.2e}, gradients rel {:.2e}\n", k.name, std::abs(chunked.loss - whole.loss) / whole.loss,
               rel_err(chunked.grads, whole.grads));
  }
}

// Llama-3.1-8B shape, QLoRA, 128K tokens: the chunked MLP's activations are the whole batch's less
// two of the three [N, intermediate] buffers' rows beyond the chunk; no GPU needed.
TEST(MlpChunkGpu, PlanHoldsTheMlpForAChunkOfRows) {
  LlamaConfig c = preset_config("llama3-8b");
  LoraSpec s;
  s.r = 32, s.alpha = 64;
  s.targets.fill(true);
  GpuModelOptions o{1, 131072, cuda::Storage::BF16, true, true, GpuOptimizer::PagedAdamW8bit, true};
  const MemoryPlan whole = LlamaGpu::plan(c, &s, o, 90);
  o.mlp_chunk = 8192;
  const MemoryPlan chunked = LlamaGpu::plan(c, &s, o, 90);
  const size_t saved = 3 * static_cast<size_t>(131072 - 8192) * static_cast<size_t>(c.intermediate_size) * 2;
  EXPECT_EQ(whole[MemCategory::Activations] - chunked[MemCategory::Activations], saved);
  fmt::print("128K tokens: activations {:.2f} GiB whole, {:.2f} GiB with the MLP in chunks of 8192\n",
             whole[MemCategory::Activations] / 1073741824.0, chunked[MemCategory::Activations] / 1073741824.0);
}

}  // namespace
}  // namespace ftune

// FSDP-QLoRA's sharded base on the GPU (dist.zero 3 with an adapter): W ranks, threads sharing the
// GPU and gathering through host-staged Gloo, each holding 1/W of the frozen base, compute on one
// micro-batch exactly the loss and adapter gradients of the unsharded model (the gathered units are
// its very bytes: NF4 codes, scales, nested map and offset, or bf16), from a checkpoint (each rank
// quantizing only the projections its pieces hold, or taking stored NF4 as stored) and from random
// weights (the same draws). The
// plan divides the base by the ranks, and a stored NF4 layout the shards cannot hold is refused by
// name. Skipped without a GPU, except the plan, which needs none.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <latch>
#include <thread>

#include "../test_util.h"
#include "core/rng.h"
#include "dist/communicator.h"
#include "dist/store.h"
#include "gpu/llama_gpu.h"
#include "gpu/zero3_comm.h"
#include "model/presets.h"
#include "ops/cuda/context.h"
#include "gpu_fixtures.h"
#include "quant/nf4.h"

namespace ftune {
namespace {

using std::chrono::milliseconds;

LlamaConfig small_config(bool tied) {
  LlamaConfig c;
  c.vocab_size = 200, c.hidden_size = 256, c.intermediate_size = 384, c.num_hidden_layers = 3;
  c.num_attention_heads = 4, c.num_key_value_heads = 2, c.head_dim = 64, c.tie_word_embeddings = tied;
  return c;
}

LoraSpec spec_all() {
  LoraSpec s;
  s.r = 4, s.alpha = 8;
  s.targets.fill(true);
  return s;
}

Batch batch(const LlamaConfig& c, uint64_t seed) {
  Rng r(seed);
  std::vector<std::vector<int32_t>> rows(2, std::vector<int32_t>(40));
  for (auto& row : rows)
    for (auto& x : row) x = static_cast<int32_t>(r.below(static_cast<uint64_t>(c.vocab_size)));
  return make_batch({&rows[0], &rows[1]}, {&rows[0], &rows[1]}, 0);
}

struct Result {
  double loss = 0;
  std::vector<float> grads, after_step;  // the adapter's gradients, then the adapter after one AdamW step
};

Result flat_of(LlamaGpu& m, const LoraParams& lora, double loss) {
  Result out;
  out.loss = loss;
  LoraParams g = lora.zeros_like();
  m.add_grads_to(g);
  g.for_each([&](const std::string&, const Tensor& t) { out.grads.insert(out.grads.end(), t.data.begin(), t.data.end()); });
  m.optimizer_step({1e-3f, 0.9f, 0.999f, 1e-8f, 0.0f, 1}, 1.0f);
  LoraParams p = lora.zeros_like();
  m.get_lora(p);
  p.for_each([&](const std::string&, const Tensor& t) {
    out.after_step.insert(out.after_step.end(), t.data.begin(), t.data.end());
  });
  return out;
}

// One forward and backward of `b` and one step, unsharded (world 0) or on `world` ranks, each of which
// computes the same micro-batch; returns every rank's result.
std::vector<Result> run(const LlamaConfig& c, const WeightSource* w, GpuModelOptions o, const Batch& b, int world) {
  const LoraSpec s = spec_all();
  const LoraParams lora = nonzero_lora(c, s, 5);
  const float scale = 1.0f / static_cast<float>(b.count_targets());
  if (world == 0) {
    cuda::Context ctx;
    LlamaGpu m(ctx, c, w, &s, o, 9);
    m.set_lora(lora);
    const double loss = m.forward_backward(b, scale).first;
    return {flat_of(m, lora, loss)};
  }
  const milliseconds timeout(60000);
  auto store = dist::make_memory_store(timeout);
  std::vector<Result> out(static_cast<size_t>(world));
  std::vector<std::string> errors(static_cast<size_t>(world));
  std::latch done(world);
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r)
    threads.emplace_back([&, r] {
      try {
        cuda::Context ctx;
        auto comm = dist::make_gloo_communicator(*store, r, world, timeout);
        GpuModelOptions mine = o;
        mine.zero3_world = world, mine.zero3_rank = r;
        LlamaGpu m(ctx, c, w, &s, mine, 9);
        EXPECT_TRUE(m.base_sharded());
        m.set_lora(lora);
        const auto [pieces, bytes] = m.sharded_base_pieces();
        // Threads of one process cannot map each other's memory through CUDA IPC: host-staged.
        auto zc = make_frozen_gather_comm(ctx, *comm, nullptr, pieces, bytes, m.sharded_base_unit_bytes(), false);
        EXPECT_STREQ(zc->transport(), "host-staged");
        m.set_zero3_comm(zc.get());
        const double loss = m.forward_backward(b, scale).first;
        out[static_cast<size_t>(r)] = flat_of(m, lora, loss);
        comm->barrier();
      } catch (const std::exception& e) {
        errors[static_cast<size_t>(r)] = e.what();
      }
      done.arrive_and_wait();
    });
  for (auto& t : threads) t.join();
  for (int r = 0; r < world; ++r) EXPECT_EQ(errors[static_cast<size_t>(r)], "") << "rank " << r;
  return out;
}

TEST(ShardedBaseGpu, RanksComputeTheUnshardedModelBitForBit) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  {
    cuda::Context ctx;
    if (ctx.sm_version() < 80) GTEST_SKIP() << "bf16 needs sm_80";
  }
  for (const bool tied : {false, true}) {
    const LlamaConfig c = small_config(tied);
    const LlamaWeights w = random_llama_weights(c, 21);
    const auto src = memory_source(w);
    const Nf4Source stored(w, 64, true);  // NF4 as bitsandbytes stores it: taken as stored
    const Batch b = batch(c, 23);
    for (const bool nf4 : {true, false})
      for (const int from : {0, 1, 2})  // weights quantized as read, stored in NF4, random
        for (const bool ckpt : {false, true}) {
          if (from == 1 && !nf4) continue;
          GpuModelOptions o{b.batch, b.seq, cuda::Storage::BF16, ckpt, nf4};
          const WeightSource* ws = from == 0 ? src.get() : from == 1 ? static_cast<const WeightSource*>(&stored) : nullptr;
          const Result whole = run(c, ws, o, b, 0)[0];
          for (const int world : {2, 3}) {
            const std::string what = fmt::format("{} base, {} embeddings, {}, checkpointing {}, {} ranks",
                                                 nf4 ? "NF4" : "bf16", tied ? "tied" : "untied",
                                                 from == 0 ? "from weights" : from == 1 ? "stored NF4" : "random", ckpt,
                                                 world);
            const std::vector<Result> ranks = run(c, ws, o, b, world);
            for (size_t r = 0; r < ranks.size(); ++r) {
              EXPECT_EQ(ranks[r].loss, whole.loss) << what << ", rank " << r;
              EXPECT_EQ(ranks[r].grads, whole.grads) << what << ", rank " << r;
              EXPECT_EQ(ranks[r].after_step, whole.after_step) << what << ", rank " << r;
            }
          }
          // The gradients are not trivially equal: they are non-zero and the step moved the adapter.
          double g2 = 0;
          for (float g : whole.grads) g2 += static_cast<double>(g) * g;
          EXPECT_GT(g2, 0.0);
        }
  }
}

// A weight bitsandbytes stored in blocks of 128 (or without nested scales) cannot be cut into the
// shards' layout: refused, naming the layer and projection.
TEST(ShardedBaseGpu, StoredNf4InAnotherLayoutIsRefused) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  cuda::Context ctx;
  if (ctx.sm_version() < 80) GTEST_SKIP() << "bf16 needs sm_80";
  const LlamaConfig c = small_config(false);
  const LlamaWeights w = random_llama_weights(c, 21);
  const LoraSpec s = spec_all();
  for (auto [bs, nested] : {std::pair<int64_t, bool>{128, true}, {64, false}}) {
    const Nf4Source src(w, bs, nested);
    GpuModelOptions o{1, 16, cuda::Storage::BF16, false, true};
    o.zero3_world = 2, o.zero3_rank = 0;
    try {
      LlamaGpu m(ctx, c, &src, &s, o);
      ADD_FAILURE() << "accepted NF4 in blocks of " << bs;
    } catch (const std::exception& e) {
      EXPECT_NE(std::string(e.what()).find("layer 0 q_proj: stored in NF4 with blocks of"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("dist.pipeline"), std::string::npos) << e.what();
    }
  }
}

// The plan of the seed's 70B QLoRA job on 8 ranks: the base is the pieces (1/8 of the NF4 bytes and
// of the bf16 embedding and lm_head) plus one gathered unit, and a rank fits a T4's 15 GiB; no GPU needed.
TEST(ShardedBaseGpu, PlanDividesTheBaseByTheRanks) {
  const LlamaConfig cfg = preset_config("llama2-70b");
  const LoraSpec s = spec_all();
  GpuModelOptions o{1, 2048, cuda::Storage::F16, true, true, GpuOptimizer::PagedAdamW8bit};
  const MemoryPlan whole = LlamaGpu::plan(cfg, &s, o, 75);
  o.zero3_world = 8, o.zero3_rank = 5;
  const MemoryPlan eighth = LlamaGpu::plan(cfg, &s, o, 75);
  const double H = static_cast<double>(cfg.hidden_size), V = static_cast<double>(cfg.vocab_size);
  const double base = static_cast<double>(cfg.num_parameters()) - 2 * V * H;  // the projections (and norms)
  // NF4: half a byte a weight, plus a byte per block of 64 and the nested scales.
  const double nf4_bytes = base * (0.5 + 1.0 / 64), matrices = 2 * V * H * 2;
  const double pieces = (nf4_bytes + matrices) / 8;
  const double widest = 28672.0 * 8192.0;  // the dequantized projection, fp16
  const double unit = std::max(V * H * 2, nf4_bytes / static_cast<double>(cfg.num_hidden_layers));
  const double expect = pieces + unit + widest * 2;
  EXPECT_NEAR(static_cast<double>(eighth[MemCategory::Weights]), expect, 0.01 * expect);
  EXPECT_LT(eighth[MemCategory::Weights], whole[MemCategory::Weights] / 5);
  for (MemCategory cat : {MemCategory::Trainable, MemCategory::Gradients, MemCategory::Optimizer, MemCategory::Activations})
    EXPECT_EQ(eighth[cat], whole[cat]) << mem_category_name(cat);  // the adapter and the rows: data parallel
  EXPECT_LT(eighth.device_total(), size_t{14} << 30);
  fmt::print("70B QLoRA zero 3 on 8 ranks, per rank: weights {:.2f} GiB, total {:.2f} (one rank: weights {:.2f}, total {:.2f})\n",
             eighth[MemCategory::Weights] / 1073741824.0, eighth.device_total() / 1073741824.0,
             whole[MemCategory::Weights] / 1073741824.0, whole.device_total() / 1073741824.0);
}

}  // namespace
}  // namespace ftune

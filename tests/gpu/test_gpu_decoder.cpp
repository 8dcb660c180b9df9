// Generation on the GPU: in fp32 the greedy tokens are transformers' and peft's on the fixture
// models and the logits the CPU decoder's; in bf16, fp16 and NF4 the logits stay within those
// formats' rounding of the CPU's (on the same NF4-rounded weights for NF4); the flash prefill and
// the cached decode attention agree; rows of several adapters in one batch get what each gets
// alone; a bad batch changes no cache.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

#include "../greedy_goldens.h"
#include "../test_util.h"
#include "core/error.h"
#include "core/dtype.h"
#include "gpu/gpu_decoder.h"
#include "infer/cpu_decoder.h"
#include "infer/generate.h"
#include "io/checkpoint.h"
#include "io/peft_adapter.h"
#include "ops/cuda/context.h"
#include "ops/cuda/device_buffer.h"
#include "ops/cuda/gemv.h"
#include "quant/nf4.h"

namespace ftune {
namespace {

namespace fs = std::filesystem;
using cuda::Storage;
const fs::path kFixtures = fs::path(FTUNE_SOURCE_DIR) / "tests/fixtures/hf";

LlamaConfig gqa_config(int64_t head_dim) {
  LlamaConfig c;
  c.vocab_size = 512;
  c.hidden_size = 256;
  c.intermediate_size = 384;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = head_dim;
  c.max_position_embeddings = 1024;
  return c;
}

// Random weights scaled so that the logits spread (N(0, 0.02) matrices give nearly flat ones).
LlamaWeights spread_weights(const LlamaConfig& c, uint64_t seed) {
  LlamaWeights w = random_llama_weights(c, seed);
  for (float& x : w.embed.data) x *= 20.0f;
  return w;
}

LoraParams nonzero_lora(const LlamaConfig& c, int64_t r, uint64_t seed) {
  LoraSpec s;
  s.r = r, s.alpha = 2.0 * static_cast<double>(r);
  s.targets.fill(true);
  LoraParams lora = LoraParams::init(c, s, seed);
  uint64_t k = seed * 1000;
  lora.for_each([&](const std::string& key, Tensor& t) {
    if (key.find("lora_B") != std::string::npos) testing::fill_normal(t, ++k, 0.05f);
  });
  return lora;
}

std::vector<int32_t> random_ids(Rng& rng, int64_t n, int64_t vocab) {
  std::vector<int32_t> v(static_cast<size_t>(n));
  for (auto& t : v) t = static_cast<int32_t>(rng.below(static_cast<uint64_t>(vocab)));
  return v;
}

// Logits of every position of `ids`, fed in one batch (fresh cache), through `dec`.
std::vector<float> all_logits(Decoder& dec, const std::vector<int32_t>& ids, const LoraParams* a = nullptr) {
  auto c = dec.new_cache(static_cast<int64_t>(ids.size()) + 1);
  std::vector<DecodeRow> rows;
  for (int32_t t : ids) rows.push_back({c.get(), t, a, true});
  return dec.forward(rows);
}

// The same, one token per forward (the cached decode attention at every step).
std::vector<float> stepped_logits(Decoder& dec, const std::vector<int32_t>& ids, const LoraParams* a = nullptr) {
  auto c = dec.new_cache(static_cast<int64_t>(ids.size()) + 1);
  std::vector<float> out;
  for (int32_t t : ids) {
    const auto& l = dec.forward({{c.get(), t, a, true}});
    out.insert(out.end(), l.begin(), l.end());
  }
  return out;
}

TEST(GpuDecoder, Fp32GreedyTokensAreTransformersAndPefts) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  cuda::Context ctx;
  int cases = 0, compared = 0;
  for (const auto& e : fs::directory_iterator(kFixtures)) {
    const fs::path gf = e.path() / "golden_generate.json";
    if (!fs::exists(gf)) continue;
    std::ifstream f(gf);
    const nlohmann::json g = nlohmann::json::parse(f);
    const std::string dir = (e.path() / "model").string();
    const LlamaConfig cfg = load_llama_config(dir);
    const CheckpointReader ckpt(dir);
    GpuDecoderOptions o;
    o.storage = Storage::F32;
    GpuDecoder dec(ctx, cfg, checkpoint_source(cfg, ckpt).get(), o);
    const LoraParams lora = load_peft_adapter((e.path() / "adapter").string(), cfg);
    for (const bool with_adapter : {false, true}) {
      const auto prompts = g["prompts"].get<std::vector<std::vector<int32_t>>>();
      GenerateOptions go;
      go.max_new_tokens = g["new_tokens"].get<int64_t>();
      BatchOptions bo;
      bo.adapter = with_adapter ? &lora : nullptr;
      bo.prefill_tokens = 3;  // prompts over several forwards: prefills and cached continuations
      const auto gens = generate(dec, nullptr, prompts, go, {}, bo);
      compared += testing::expect_greedy_tokens(g[with_adapter ? "adapter" : "base"], gens,
                                                e.path().filename().string() + (with_adapter ? " adapter" : " base"));
    }
    // The logits themselves: the CPU decoder's (itself checked against transformers' forward).
    const LlamaWeights w = load_llama_weights(cfg, ckpt);
    BatchDecoder cpu(cfg, w);
    Rng rng(3);
    const auto ids = random_ids(rng, 9, cfg.vocab_size);
    // fp32 both; the GEMM and attention sums run in another order: 1e-5 relative.
    EXPECT_LT(testing::rel_err(stepped_logits(dec, ids, &lora), stepped_logits(cpu, ids, &lora)), 1e-5)
        << e.path().filename();
    ++cases;
  }
  EXPECT_EQ(cases, 5);
  EXPECT_GE(compared, 5 * 2 * 2 * 10);
}

// bf16 / fp16 / NF4 logits against the CPU's fp32 on the same (for NF4: NF4-rounded) weights, both
// fed at once (the flash prefill) and one token at a time (the decode attention over the cache).
TEST(GpuDecoder, HalfPrecisionAndNf4LogitsAreTheCpusWithinRounding) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  cuda::Context ctx;
  for (const int64_t d : {64, 128}) {
    const LlamaConfig cfg = gqa_config(d);
    const LlamaWeights w = spread_weights(cfg, 11);
    LlamaWeights w4 = w;
    for (auto& Ly : w4.layers)
      for (Tensor& t : Ly.proj) nf4_dequantize(nf4_quantize(t.data.data(), t.shape, 64, true), t.data.data());
    const LoraParams lora = nonzero_lora(cfg, 8, 4);
    Rng rng(static_cast<uint64_t>(d));
    const auto ids = random_ids(rng, 150, cfg.vocab_size);  // past one key chunk of the decode attention
    struct Case {
      Storage s;
      bool nf4;
      double bound;  // relative to the fp32 logits: bf16 keeps 8 bits (2^-8 = 3.9e-3 per rounding, a few
                     // roundings per layer add up), fp16 11 bits
      const char* name;
    };
    for (const Case& k : {Case{Storage::BF16, false, 3e-2, "bf16"}, Case{Storage::F16, false, 5e-3, "fp16"},
                          Case{Storage::BF16, true, 3e-2, "nf4"}}) {
      if (k.s == Storage::BF16 && ctx.sm_version() < 80) continue;
      GpuDecoderOptions o;
      o.storage = k.s, o.nf4 = k.nf4;
      GpuDecoder dec(ctx, cfg, memory_source(w).get(), o);
      BatchDecoder cpu(cfg, k.nf4 ? w4 : w);
      const auto want = all_logits(cpu, ids, &lora);
      const int64_t flash_before = dec.flash_batches();
      const auto prefill = all_logits(dec, ids, &lora);
      EXPECT_EQ(dec.flash_batches(), flash_before + 1) << k.name << " d " << d;  // the prefill ran flash
      const auto stepped = stepped_logits(dec, ids, &lora);
      EXPECT_LT(testing::rel_err(prefill, want), k.bound) << k.name << " d " << d;
      EXPECT_LT(testing::rel_err(stepped, want), k.bound) << k.name << " d " << d;
      // The two attentions differ only in their rounding order: well within the format's bound.
      EXPECT_LT(testing::rel_err(stepped, prefill), k.bound) << k.name << " d " << d;
    }
  }
}

TEST(GpuDecoder, AdaptersBatchedTogetherGiveWhatEachGivesAlone) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  cuda::Context ctx;
  const LlamaConfig cfg = gqa_config(64);
  const LlamaWeights w = spread_weights(cfg, 21);
  const LoraParams a1 = nonzero_lora(cfg, 8, 5), a2 = nonzero_lora(cfg, 16, 6);
  for (const Storage s : {Storage::F32, Storage::BF16}) {
    if (s == Storage::BF16 && ctx.sm_version() < 80) continue;
    GpuDecoderOptions o;
    o.storage = s;
    GpuDecoder dec(ctx, cfg, memory_source(w).get(), o);
    Rng rng(8);
    const std::vector<std::vector<int32_t>> p = {random_ids(rng, 7, cfg.vocab_size), random_ids(rng, 12, cfg.vocab_size),
                                                 random_ids(rng, 5, cfg.vocab_size)};
    const std::vector<const LoraParams*> who = {&a1, nullptr, &a2};
    // Alone: each sequence's prompt, then two decoding steps.
    std::vector<std::vector<float>> alone;
    for (size_t i = 0; i < p.size(); ++i) {
      auto c = dec.new_cache(32);
      std::vector<DecodeRow> rows;
      for (int32_t t : p[i]) rows.push_back({c.get(), t, who[i], false});
      rows.back().logits = true;
      std::vector<float> l = dec.forward(rows);
      for (int32_t t : {17, 99}) {
        const auto& n = dec.forward({{c.get(), t, who[i], true}});
        l.insert(l.end(), n.begin(), n.end());
      }
      alone.push_back(l);
    }
    // Together: the three prompts in one batch (a mixed prefill), then both steps of all three at once.
    std::vector<std::unique_ptr<KvCache>> c;
    std::vector<DecodeRow> rows;
    for (size_t i = 0; i < p.size(); ++i) {
      c.push_back(dec.new_cache(32));
      for (size_t j = 0; j < p[i].size(); ++j) rows.push_back({c[i].get(), p[i][j], who[i], j + 1 == p[i].size()});
    }
    const int64_t V = cfg.vocab_size;
    std::vector<std::vector<float>> together(3);
    auto take = [&](const std::vector<float>& l) {
      for (size_t i = 0; i < 3; ++i) together[i].insert(together[i].end(), l.begin() + i * V, l.begin() + (i + 1) * V);
    };
    take(dec.forward(rows));
    for (int32_t t : {17, 99}) take(dec.forward({{c[0].get(), t, who[0], true}, {c[1].get(), t, who[1], true},
                                                 {c[2].get(), t, who[2], true}}));
    // fp32: only summation order differs (1e-5); bf16: GEMMs of another row count round differently
    // (within bf16's 2^-8 on a few roundings: 1e-2).
    const double bound = s == Storage::F32 ? 1e-5 : 1e-2;
    for (size_t i = 0; i < 3; ++i) EXPECT_LT(testing::rel_err(together[i], alone[i]), bound) << "sequence " << i;
    // And what the adapter changes is far beyond that: the base alone differs.
    auto c0 = dec.new_cache(32);
    std::vector<DecodeRow> base;
    for (int32_t t : p[0]) base.push_back({c0.get(), t, nullptr, false});
    base.back().logits = true;
    const std::vector<float> plain = dec.forward(base);
    EXPECT_GT(testing::rel_err(plain, std::vector<float>(alone[0].begin(), alone[0].begin() + V)), 10 * bound);
  }
}

// Decoding steps replayed from CUDA graphs run the very kernels on the very values: the same
// logits, bit for bit, as the launched ones, across a key-chunk boundary (a new graph) and with
// sequences finishing (a smaller batch, another graph).
TEST(GpuDecoder, GraphReplaysGiveTheLaunchedLogitsBitForBit) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  cuda::Context ctx;
  if (ctx.sm_version() < 80) GTEST_SKIP() << "bf16 needs sm_80";
  const LlamaConfig cfg = gqa_config(64);
  const LlamaWeights w = spread_weights(cfg, 31);
  const LoraParams lora = nonzero_lora(cfg, 8, 7);
  Rng rng(12);
  const std::vector<std::vector<int32_t>> prompts = {random_ids(rng, 120, cfg.vocab_size),
                                                     random_ids(rng, 100, cfg.vocab_size)};
  std::vector<std::vector<float>> got[2];
  int64_t launches = 0, captures = 0;
  for (const bool graphs : {false, true}) {
    GpuDecoderOptions o;
    o.graphs = graphs;
    GpuDecoder dec(ctx, cfg, memory_source(w).get(), o);
    std::vector<std::unique_ptr<KvCache>> c;
    std::vector<DecodeRow> rows;
    for (const auto& p : prompts) {
      c.push_back(dec.new_cache(200));
      for (size_t j = 0; j < p.size(); ++j) rows.push_back({c.back().get(), p[j], &lora, j + 1 == p.size()});
    }
    dec.forward(rows);
    for (int step = 0; step < 40; ++step) {
      rows.clear();
      for (size_t i = 0; i < c.size(); ++i)
        if (i == 0 || step < 25) rows.push_back({c[i].get(), static_cast<int32_t>((step * 7 + i) % 500), &lora, true});
      got[graphs].push_back(dec.forward(rows));
    }
    launches = dec.graph_launches(), captures = dec.graph_captures();
  }
  EXPECT_EQ(got[0], got[1]);
  EXPECT_GE(captures, 3);   // 2 rows, then 2 rows past position 127, then 1 row
  EXPECT_GE(launches, 30);  // every step but each shape's first and second
}

// The few-row projection kernel against fp32 on the same (rounded) inputs: only its output's
// rounding (half an ulp: 2^-9 for bf16, 2^-12 for fp16, relative) and the order of its fp32 sums
// differ. Shapes with a tail of the unrolled loop (in = 8 * 37) and a partial last block (out 37).
TEST(GpuDecoder, SmallRowProjectionsAreFp32sWithinOutputRounding) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  cuda::Context ctx;
  Rng rng(5);
  for (const Storage s : {Storage::BF16, Storage::F16})
    for (const int64_t in : {64, 296, 4096})
      for (const int64_t m : {1, 3, 8})
        for (const bool acc : {false, true}) {
          const int64_t out = 37;
          auto round = [&](std::vector<float>& v, std::vector<uint16_t>& h) {
            h.resize(v.size());
            for (size_t i = 0; i < v.size(); ++i) {
              h[i] = s == Storage::BF16 ? f32_to_bf16(v[i]) : f32_to_f16(v[i]);
              v[i] = s == Storage::BF16 ? bf16_to_f32(h[i]) : f16_to_f32(h[i]);
            }
          };
          std::vector<float> x(static_cast<size_t>(m * in)), w(static_cast<size_t>(out * in)),
              y0(static_cast<size_t>(m * out));
          for (auto* v : {&x, &w, &y0})
            for (float& e : *v) e = rng.normal();
          std::vector<uint16_t> xh, wh, yh;
          round(x, xh), round(w, wh), round(y0, yh);
          std::vector<float> want(y0.size());
          for (int64_t i = 0; i < m; ++i)
            for (int64_t o = 0; o < out; ++o) {
              double d = acc ? y0[i * out + o] : 0.0;
              for (int64_t k = 0; k < in; ++k) d += static_cast<double>(x[i * in + k]) * w[o * in + k];
              want[i * out + o] = static_cast<float>(d);
            }
          auto X = cuda::DeviceBuffer::from(xh), W = cuda::DeviceBuffer::from(wh), Y = cuda::DeviceBuffer::from(yh);
          ASSERT_TRUE(cuda::small_m_linear_supported(s, m, in, X.data(), W.data()));
          cuda::small_m_linear(ctx, s, X.data(), W.data(), Y.data(), m, in, out, acc);
          ctx.synchronize();
          const auto got_h = Y.to_host<uint16_t>(y0.size());
          std::vector<float> got(got_h.size());
          for (size_t i = 0; i < got.size(); ++i) got[i] = s == Storage::BF16 ? bf16_to_f32(got_h[i]) : f16_to_f32(got_h[i]);
          EXPECT_LT(testing::rel_err(got, want), s == Storage::BF16 ? 4e-3 : 5e-4)
              << (s == Storage::BF16 ? "bf16" : "fp16") << " m " << m << " in " << in << " acc " << acc;
        }
  EXPECT_FALSE(cuda::small_m_linear_supported(Storage::BF16, 9, 64, nullptr, nullptr));
  EXPECT_FALSE(cuda::small_m_linear_supported(Storage::F32, 1, 64, nullptr, nullptr));
  EXPECT_FALSE(cuda::small_m_linear_supported(Storage::BF16, 1, 60, nullptr, nullptr));
}

TEST(GpuDecoder, BadBatchesChangeNoCache) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  cuda::Context ctx;
  const LlamaConfig cfg = gqa_config(64);
  const LlamaWeights w = spread_weights(cfg, 2);
  GpuDecoderOptions o;
  o.storage = Storage::F32;
  GpuDecoder dec(ctx, cfg, memory_source(w).get(), o);
  auto c1 = dec.new_cache(3), c2 = dec.new_cache(8);
  dec.forward({{c1.get(), 1, nullptr, true}, {c2.get(), 2, nullptr, true}});
  EXPECT_THROW(dec.forward({{c1.get(), 5, nullptr, true}, {c2.get(), 512, nullptr, true}}), Error);  // id >= V
  EXPECT_THROW(dec.forward({{c2.get(), 5, nullptr, true}, {c1.get(), 1, nullptr, true}, {c1.get(), 2, nullptr, true},
                            {c1.get(), 3, nullptr, true}}),
               Error);  // c1 would pass its 3 positions
  EXPECT_EQ(c1->length(), 1);
  EXPECT_EQ(c2->length(), 1);
  BatchDecoder cpu(cfg, w);
  auto cpu_cache = cpu.new_cache(4);
  EXPECT_THROW(dec.forward({{cpu_cache.get(), 1, nullptr, true}}), Error);  // another decoder's cache
  EXPECT_THROW(cpu.forward({{c1.get(), 1, nullptr, true}}), Error);
}

}  // namespace
}  // namespace ftune

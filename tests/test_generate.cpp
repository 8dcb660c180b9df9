// Generation on the CPU: greedy decoding with the KV cache gives transformers' (and peft's)
// greedy tokens on the tiny fixture models; the cached step gives the training model's logits;
// the sampler's greedy, top-k, top-p and temperature behave as specified.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>

#include "infer/cpu_decoder.h"
#include "infer/generate.h"
#include "io/checkpoint.h"
#include "io/peft_adapter.h"
#include "model/llama.h"
#include "model/merge.h"
#include "greedy_goldens.h"
#include "test_util.h"

namespace ftune {
namespace {

namespace fs = std::filesystem;
const fs::path kFixtures = fs::path(FTUNE_SOURCE_DIR) / "tests/fixtures/hf";

TEST(Generate, GreedyTokensAreTransformersAndPefts) {
  int cases = 0, compared = 0;
  for (const auto& e : fs::directory_iterator(kFixtures)) {
    const fs::path gf = e.path() / "golden_generate.json";
    if (!fs::exists(gf)) continue;
    std::ifstream f(gf);
    const nlohmann::json g = nlohmann::json::parse(f);
    const LlamaConfig cfg = load_llama_config((e.path() / "model").string());
    // The base; the adapter merged (as peft's merge_and_unload); the adapter unmerged on every row.
    for (const int variant : {0, 1, 2}) {
      const bool with_adapter = variant > 0;
      LlamaWeights w = load_llama_weights(cfg, CheckpointReader((e.path() / "model").string()));
      const LoraParams lora = load_peft_adapter((e.path() / "adapter").string(), cfg);
      if (variant == 1) merge_adapter(w, lora);
      std::vector<std::vector<int32_t>> prompts = g["prompts"].get<std::vector<std::vector<int32_t>>>();
      BatchDecoder dec(cfg, w);
      GenerateOptions o;
      o.max_new_tokens = g["new_tokens"].get<int64_t>();
      BatchOptions bo;
      bo.adapter = variant == 2 ? &lora : nullptr;
      bo.prefill_tokens = 3;  // prompts fed over several forwards, split inside a prompt
      const auto gens = generate(dec, nullptr, prompts, o, {}, bo);  // no EOS ids: as the goldens (EOS disabled)
      compared += testing::expect_greedy_tokens(g[with_adapter ? "adapter" : "base"], gens,
                                                e.path().filename().string() + " variant " + std::to_string(variant));
    }
    ++cases;
  }
  EXPECT_EQ(cases, 5);
  EXPECT_GE(compared, 5 * 3 * 2 * 10);  // nearly every step of every row is compared
}

// The cached step, token by token, gives the logits of the training model's full forward.
TEST(Generate, CachedStepsGiveTheFullForwardsLogits) {
  const fs::path dir = kFixtures / "gqa_tied";
  const LlamaConfig cfg = load_llama_config((dir / "model").string());
  const LlamaWeights w = load_llama_weights(cfg, CheckpointReader((dir / "model").string()));
  Rng rng(5);
  std::vector<int32_t> ids(11);
  for (auto& t : ids) t = static_cast<int32_t>(3 + rng.below(static_cast<uint64_t>(cfg.vocab_size - 3)));
  std::vector<int32_t> labels(ids.size(), -100);
  const Batch b = make_batch({&ids}, {&labels}, 0);
  ModelOptions mo;
  mo.max_batch = 1, mo.max_seq = static_cast<int64_t>(ids.size());
  LlamaCpu model(cfg, w, nullptr, mo);
  const Tensor full = model.logits(b);
  CpuDecoder dec(cfg, w, 1, 16);
  std::vector<float> mine;
  for (int32_t t : ids) {
    const auto& l = dec.step(0, t);
    mine.insert(mine.end(), l.begin(), l.end());
  }
  // fp32 both; the attention and GEMM sums run in another order: 1e-5 relative.
  EXPECT_LT(testing::rel_err(mine, full.data), 1e-5);
}

TEST(Generate, SamplerGreedyTopKTopPAndTemperature) {
  const std::vector<float> logits = {0.1f, 2.0f, -1.0f, 1.5f, 2.0f, 0.0f};
  Rng rng(1);
  SamplingOptions greedy;
  EXPECT_EQ(sample_token(logits, greedy, rng), 1);  // the lowest id among equal best logits
  SamplingOptions k1{1.0, 1, 1.0, 0};
  for (int i = 0; i < 20; ++i) {  // top-1 keeps the tied pair {1, 4} only
    const int32_t t = sample_token(logits, k1, rng);
    EXPECT_TRUE(t == 1 || t == 4) << t;
  }
  SamplingOptions p_small{1.0, 0, 1e-6, 0};
  for (int i = 0; i < 20; ++i) EXPECT_EQ(sample_token(logits, p_small, rng), 1);
  // Temperature 1 without filters: the frequencies of 60000 draws follow the softmax (each within
  // 5 standard deviations of its binomial count).
  std::vector<double> p(logits.size());
  double z = 0;
  for (size_t i = 0; i < p.size(); ++i) z += (p[i] = std::exp(logits[i]));
  std::vector<int> count(logits.size(), 0);
  SamplingOptions t1{1.0, 0, 1.0, 0};
  const int n = 60000;
  for (int i = 0; i < n; ++i) ++count[sample_token(logits, t1, rng)];
  for (size_t i = 0; i < p.size(); ++i) {
    const double q = p[i] / z, sd = std::sqrt(n * q * (1 - q));
    EXPECT_LT(std::abs(count[i] - n * q), 5 * sd) << i;
  }
  // The same seed draws the same tokens.
  Rng a(9), b2(9);
  for (int i = 0; i < 50; ++i) EXPECT_EQ(sample_token(logits, t1, a), sample_token(logits, t1, b2));
}

}  // namespace
}  // namespace ftune

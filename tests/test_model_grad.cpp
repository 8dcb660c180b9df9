// The CPU model's LoRA gradients: finite differences, gradient checkpointing, gradient
// accumulation, packed-document masking and dropout determinism.
#include <gtest/gtest.h>

#include <ctime>

#include "model/llama.h"
#include "test_util.h"

namespace ftune {
namespace {

using testing::rel_err;

LlamaConfig tiny_config(int64_t kv_heads = 2, bool tied = false) {
  LlamaConfig c;
  c.vocab_size = 97;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = kv_heads;
  c.head_dim = 8;
  c.max_position_embeddings = 64;
  c.rms_norm_eps = 1e-5;
  c.tie_word_embeddings = tied;
  c.rope_scaling.type = "llama3";
  c.rope_scaling.factor = 8;
  c.rope_scaling.original_max_position_embeddings = 8;
  return c;
}

LoraSpec all_targets(double dropout = 0.0) {
  LoraSpec s;
  s.r = 4;
  s.alpha = 8;
  s.dropout = dropout;
  s.targets.fill(true);
  return s;
}

// Random non-zero adapter (B != 0 so that A's gradient is non-zero too).
LoraParams random_lora(const LlamaConfig& c, const LoraSpec& s, uint64_t seed) {
  LoraParams p = LoraParams::zeros(c, s);
  uint64_t k = seed;
  p.for_each([&](const std::string&, Tensor& t) { testing::fill_normal(t, ++k, 0.1f); });
  return p;
}

Batch random_batch(const LlamaConfig& c, int64_t rows, int64_t len, uint64_t seed) {
  Rng r(seed);
  std::vector<std::vector<int32_t>> ids(rows), labels(rows);
  std::vector<const std::vector<int32_t>*> pi, pl;
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t n = len - i;  // ragged rows exercise the padding
    for (int64_t t = 0; t < n; ++t) ids[i].push_back(static_cast<int32_t>(r.below(c.vocab_size)));
    labels[i] = ids[i];
    labels[i][1] = kIgnoreIndex;
    pi.push_back(&ids[i]);
    pl.push_back(&labels[i]);
  }
  return make_batch(pi, pl, 0);
}

struct Fixture {
  LlamaConfig cfg;
  LlamaWeights w;
  LoraParams lora;
  Fixture(const LlamaConfig& c, const LoraSpec& s) : cfg(c), w(random_llama_weights(c, 7)), lora(random_lora(c, s, 11)) {
    // Non-trivial norm weights.
    for (auto& l : w.layers) testing::fill_normal(l.input_norm, 3, 0.1f), testing::fill_normal(l.post_norm, 4, 0.1f);
    for (auto& l : w.layers)
      for (float& x : l.input_norm.data) x += 1.0f;
    for (auto& l : w.layers)
      for (float& x : l.post_norm.data) x += 1.0f;
    // Larger base weights than 0.02 so every layer matters to the loss.
    for (auto& l : w.layers)
      for (auto& p : l.proj) testing::fill_normal(p, p.numel(), 0.2f);
  }
};

LoraParams grads_of(Fixture& f, const Batch& b, bool ckpt, uint64_t key, double* loss = nullptr) {
  ModelOptions o;
  o.max_batch = b.batch;
  o.max_seq = b.seq;
  o.gradient_checkpointing = ckpt;
  LlamaCpu m(f.cfg, f.w, &f.lora, o);
  LoraParams g = f.lora.zeros_like();
  const double n = static_cast<double>(b.count_targets());
  auto r = m.forward_backward(b, static_cast<float>(1.0 / n), g, key);
  if (loss) *loss = r.loss_sum / n;
  return g;
}

double loss_of(Fixture& f, const Batch& b, uint64_t key) {
  LoraParams g = f.lora.zeros_like();
  ModelOptions o;
  o.max_batch = b.batch;
  o.max_seq = b.seq;
  LlamaCpu m(f.cfg, f.w, &f.lora, o);
  // forward_backward with a key keeps the dropout mask identical to the gradient run.
  auto r = m.forward_backward(b, 0.0f, g, key);
  return r.loss_sum / static_cast<double>(r.count);
}

std::vector<float> flat(const LoraParams& p) {
  std::vector<float> v;
  p.for_each([&](const std::string&, const Tensor& t) { v.insert(v.end(), t.data.begin(), t.data.end()); });
  return v;
}

// Central differences along random directions: d loss(p + h u)/dh vs <grad, u>.
void check_directional(Fixture& f, const Batch& b, uint64_t key) {
  const LoraParams g = grads_of(f, b, false, key);
  for (int trial = 0; trial < 3; ++trial) {
    LoraParams dir = f.lora.zeros_like();
    uint64_t k = 100 + trial;
    dir.for_each([&](const std::string&, Tensor& t) { testing::fill_normal(t, ++k); });
    double analytic = 0;
    const auto gf = flat(g), df = flat(dir);
    for (size_t i = 0; i < gf.size(); ++i) analytic += static_cast<double>(gf[i]) * df[i];
    const float h = 2e-3f;
    auto shifted = [&](float sign) {
      LoraParams saved = f.lora;
      auto pv = flat(dir);
      size_t i = 0;
      f.lora.for_each([&](const std::string&, Tensor& t) {
        for (float& x : t.data) x += sign * h * pv[i++];
      });
      const double l = loss_of(f, b, key);
      f.lora = saved;
      return l;
    };
    const double numeric = (shifted(1) - shifted(-1)) / (2.0 * h);
    // fp32 forward, h = 2e-3: truncation error O(h^2) (the base weights are large, so the loss
    // is far from linear) plus rounding ~1e-7/h; 2% is ample and still catches any wrong term,
    // which changes the result by O(1).
    EXPECT_NEAR(numeric, analytic, 2e-2 * std::abs(analytic) + 1e-4) << "direction " << trial;
  }
}

TEST(ModelGrad, FiniteDifferencesGqaLlama3Rope) {
  Fixture f(tiny_config(2), all_targets());
  check_directional(f, random_batch(f.cfg, 3, 12, 5), 0);
}

TEST(ModelGrad, FiniteDifferencesMhaTied) {
  Fixture f(tiny_config(4, true), all_targets());
  check_directional(f, random_batch(f.cfg, 2, 9, 6), 0);
}

TEST(ModelGrad, FiniteDifferencesWithDropout) {
  Fixture f(tiny_config(1), all_targets(0.3));
  check_directional(f, random_batch(f.cfg, 2, 10, 7), 12345);
}

TEST(ModelGrad, CheckpointingGivesIdenticalGradients) {
  for (double p : {0.0, 0.25}) {
    Fixture f(tiny_config(2), all_targets(p));
    const Batch b = random_batch(f.cfg, 3, 11, 8);
    double l1 = 0, l2 = 0;
    const auto g1 = flat(grads_of(f, b, false, 99, &l1));
    const auto g2 = flat(grads_of(f, b, true, 99, &l2));
    EXPECT_EQ(l1, l2);
    ASSERT_EQ(g1.size(), g2.size());
    // The recompute runs the same code on the same inputs: bitwise equal.
    EXPECT_EQ(g1, g2) << "dropout " << p;
  }
}

TEST(ModelGrad, AccumulationEqualsOneBigBatch) {
  Fixture f(tiny_config(2), all_targets());
  const Batch big = random_batch(f.cfg, 4, 10, 9);
  // Split the same rows into two micro-batches of two (re-padded to their own lengths).
  auto rows = [&](int64_t r0, int64_t r1) {
    std::vector<std::vector<int32_t>> ids, labels;
    for (int64_t r = r0; r < r1; ++r) {
      std::vector<int32_t> id, lab;
      for (int64_t t = 0; t < big.seq; ++t) {
        const int64_t i = r * big.seq + t;
        if (t >= 10 - r) break;
        id.push_back(big.ids[i]);
      }
      lab = id;
      lab[1] = kIgnoreIndex;
      ids.push_back(id);
      labels.push_back(lab);
    }
    return std::make_pair(ids, labels);
  };
  const double n = static_cast<double>(big.count_targets());
  LoraParams g_big = grads_of(f, big, false, 0);
  LoraParams g_acc = f.lora.zeros_like();
  ModelOptions o;
  o.max_batch = 2;
  o.max_seq = big.seq;
  LlamaCpu m(f.cfg, f.w, &f.lora, o);
  int64_t counted = 0;
  for (auto [r0, r1] : {std::pair<int64_t, int64_t>{0, 2}, {2, 4}}) {
    auto [ids, labels] = rows(r0, r1);
    std::vector<const std::vector<int32_t>*> pi, pl;
    for (size_t i = 0; i < ids.size(); ++i) pi.push_back(&ids[i]), pl.push_back(&labels[i]);
    const Batch b = make_batch(pi, pl, 0);
    counted += b.count_targets();
    m.forward_backward(b, static_cast<float>(1.0 / n), g_acc, 0);
  }
  ASSERT_EQ(counted, big.count_targets());
  // Same sums in a different grouping: fp32 rounding only.
  EXPECT_LT(rel_err(flat(g_acc), flat(g_big)), 1e-5);
}

TEST(ModelGrad, PackedDocumentsDoNotAttendAcrossBoundaries) {
  Fixture f(tiny_config(2), all_targets());
  const Batch two = random_batch(f.cfg, 2, 9, 10);  // rows of 9 and 8 tokens
  // Pack both rows into one: positions restart, document ids differ, no target across the seam.
  Batch packed;
  packed.batch = 1;
  packed.seq = 17;
  for (int64_t r = 0; r < 2; ++r) {
    const int64_t len = 9 - r;
    for (int64_t t = 0; t < len; ++t) {
      packed.ids.push_back(two.ids[r * two.seq + t]);
      packed.targets.push_back(two.targets[r * two.seq + t]);
      packed.pos.push_back(static_cast<int32_t>(t));
      packed.doc.push_back(static_cast<int32_t>(r));
    }
  }
  packed.tokens = 17;
  ASSERT_EQ(packed.count_targets(), two.count_targets());
  double l_two = 0, l_packed = 0;
  const auto g_two = flat(grads_of(f, two, false, 0, &l_two));
  const auto g_packed = flat(grads_of(f, packed, false, 0, &l_packed));
  EXPECT_NEAR(l_packed, l_two, 1e-5 * std::abs(l_two));
  EXPECT_LT(rel_err(g_packed, g_two), 1e-5);
}

}  // namespace
}  // namespace ftune

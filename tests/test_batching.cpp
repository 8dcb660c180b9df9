// Micro-batching: label shift and padding, seeded shuffles, and packing (several examples per
// row, no target or attention across a boundary, same loss as unpacked).
#include <gtest/gtest.h>

#include <set>

#include "data/batcher.h"
#include "model/llama.h"
#include "test_util.h"

namespace ftune {
namespace {

std::vector<Example> examples(int n, uint64_t seed) {
  Rng r(seed);
  std::vector<Example> out(n);
  for (auto& e : out) {
    const int len = 3 + static_cast<int>(r.below(9));
    for (int t = 0; t < len; ++t) e.ids.push_back(static_cast<int32_t>(4 + r.below(60)));
    e.labels = e.ids;
    e.labels[0] = kIgnoreIndex;
  }
  return out;
}

TEST(Batching, PaddedBatchShiftsLabels) {
  std::vector<int32_t> a = {5, 6, 7}, la = {-100, 6, 7}, b = {8, 9}, lb = {8, 9};
  const Batch x = make_batch({&a, &b}, {&la, &lb}, 0);
  EXPECT_EQ(x.seq, 3);
  EXPECT_EQ(x.ids, (std::vector<int32_t>{5, 6, 7, 8, 9, 0}));
  EXPECT_EQ(x.targets, (std::vector<int32_t>{6, 7, -100, 9, -100, -100}));
  EXPECT_EQ(x.tokens, 5);
}

TEST(Batching, ShuffleIsSeededAndCoversEveryExampleEachEpoch) {
  const auto ex = examples(10, 1);
  MicroBatcher a(ex, 3, true, 7, 0), b(ex, 3, true, 7, 0), c(ex, 3, true, 8, 0);
  std::multiset<int32_t> first_tokens;
  bool differs = false;
  for (int i = 0; i < 4; ++i) {  // 10 examples in batches of 3: 3, 3, 3, 1
    const Batch x = a.next(), y = b.next(), z = c.next();
    EXPECT_EQ(x.ids, y.ids);
    differs |= x.ids != z.ids;
    for (int64_t r = 0; r < x.batch; ++r) first_tokens.insert(x.ids[r * x.seq]);
  }
  EXPECT_TRUE(differs);
  std::multiset<int32_t> want;
  for (const auto& e : ex) want.insert(e.ids[0]);
  EXPECT_EQ(first_tokens, want);
  EXPECT_EQ(a.epoch(), 0);
  a.next();
  EXPECT_EQ(a.epoch(), 1);
}

TEST(Batching, PackedRowsRespectBoundaries) {
  const auto ex = examples(20, 2);
  MicroBatcher p(ex, 2, false, 0, 0, 32);  // examples are 3..11 tokens: at least two fit a row
  const Batch b = p.next();
  EXPECT_EQ(b.batch, 2);
  EXPECT_LE(b.seq, 32);
  for (int64_t r = 0; r < b.batch; ++r) {
    for (int64_t t = 0; t + 1 < b.seq; ++t) {
      const int64_t i = r * b.seq + t;
      if (b.doc[i] != b.doc[i + 1]) {
        EXPECT_EQ(b.targets[i], kIgnoreIndex) << "target across a boundary at " << i;
        if (b.doc[i + 1] >= 0) {
          EXPECT_EQ(b.pos[i + 1], 0);
        }
      }
    }
    std::set<int32_t> docs(b.doc.begin() + r * b.seq, b.doc.begin() + (r + 1) * b.seq);
    docs.erase(-1);
    EXPECT_GE(docs.size(), 2u) << "several documents per row";
  }
}

TEST(Batching, PackedLossEqualsUnpackedLoss) {
  LlamaConfig c;
  c.vocab_size = 64;
  c.hidden_size = 32;
  c.intermediate_size = 40;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  const LlamaWeights w = random_llama_weights(c, 3);
  LoraSpec s;
  s.targets.fill(true);
  const LoraParams lora = LoraParams::init(c, s, 4);
  const auto ex = examples(12, 5);
  int64_t total = 0;
  for (const auto& e : ex) total += static_cast<int64_t>(e.ids.size());
  // Everything in one packed batch vs everything in one padded batch.
  MicroBatcher packed(ex, 12, false, 0, 0, 1000), plain(ex, 12, false, 0, 0);
  const Batch bp = packed.next(), bu = plain.next();
  EXPECT_EQ(bp.batch, 1);
  EXPECT_EQ(bp.tokens, total);
  EXPECT_EQ(bp.count_targets(), bu.count_targets());
  ModelOptions o;
  o.max_batch = 12;
  o.max_seq = total;
  LlamaCpu m(c, w, &lora, o);
  const auto lp = m.loss(bp), lu = m.loss(bu);
  EXPECT_NEAR(lp.loss_sum, lu.loss_sum, 1e-5 * lu.loss_sum);
}

}  // namespace
}  // namespace ftune

// Pipeline parallelism's parts: where ranks sit, the layer split (optimal against brute force),
// the 1F1B schedule (complete, ordered, within its activation slots, free of circular waits), and
// the CPU model's stage calls, which run micro-batches through a model cut into stages with the
// bits of the uncut model's forward_backward (loss, LoRA gradients and every weight gradient).
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <limits>
#include <set>

#include "core/error.h"
#include "core/rng.h"
#include "dist/pipeline.h"
#include "model/llama.h"
#include "params/param_table.h"
#include "test_util.h"

namespace ftune {
namespace {

TEST(Pipeline, PlaceIsStageWithinReplica) {
  const auto p = dist::pipeline_place(5, 8, 4);
  EXPECT_EQ(p.stage, 1);
  EXPECT_EQ(p.replica, 1);
  EXPECT_EQ(p.replicas, 2);
  EXPECT_EQ(p.rank_of(1, 1), 5);
  try {
    dist::pipeline_place(0, 6, 4);
    FAIL() << "4 stages over 6 ranks were accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("4 stages do not divide the run's 6 ranks"), std::string::npos) << e.what();
  }
}

double max_cost(const std::vector<double>& c, double first, double last, const std::vector<int64_t>& b) {
  double worst = 0;
  const int P = static_cast<int>(b.size()) - 1;
  for (int s = 0; s < P; ++s) {
    double v = (s == 0 ? first : 0) + (s == P - 1 ? last : 0);
    for (int64_t l = b[s]; l < b[s + 1]; ++l) v += c[l];
    worst = std::max(worst, v);
  }
  return worst;
}

// The best largest stage over every split of L layers into P non-empty groups.
double brute_best(const std::vector<double>& c, double first, double last, int P) {
  const int64_t L = static_cast<int64_t>(c.size());
  double best = std::numeric_limits<double>::infinity();
  std::vector<int64_t> b(static_cast<size_t>(P + 1));
  b[0] = 0, b[P] = L;
  auto rec = [&](auto& self, int s) -> void {
    if (s == P) return void(best = std::min(best, max_cost(c, first, last, b)));
    for (int64_t x = b[s - 1] + 1; x <= L - (P - s); ++x) b[s] = x, self(self, s + 1);
  };
  if (P == 1) return max_cost(c, first, last, b);
  rec(rec, 1);
  return best;
}

TEST(Pipeline, SplitIsOptimalAndEveryStageHasALayer) {
  EXPECT_EQ(dist::split_layers(std::vector<double>(8, 1.0), 0, 0, 4), (std::vector<int64_t>{0, 2, 4, 6, 8}));
  // A large embedding and head take layers off the first and last stages (costs 4, 5, 5).
  EXPECT_EQ(dist::split_layers(std::vector<double>(10, 1.0), 2.0, 2.0, 3), (std::vector<int64_t>{0, 2, 7, 10}));
  Rng r(5);
  for (int trial = 0; trial < 200; ++trial) {
    const int64_t L = 1 + static_cast<int64_t>(r.below(9));
    const int P = 1 + static_cast<int>(r.below(static_cast<uint64_t>(L)));
    std::vector<double> c;
    for (int64_t l = 0; l < L; ++l) c.push_back(0.1 + static_cast<double>(r.below(100)));
    const double first = static_cast<double>(r.below(150)), last = static_cast<double>(r.below(150));
    const auto b = dist::split_layers(c, first, last, P);
    ASSERT_EQ(b.size(), static_cast<size_t>(P + 1));
    for (int s = 0; s < P; ++s) ASSERT_LT(b[s], b[s + 1]) << "stage " << s << " is empty";
    EXPECT_DOUBLE_EQ(max_cost(c, first, last, b), brute_best(c, first, last, P)) << "L " << L << " P " << P;
  }
  EXPECT_THROW(dist::split_layers(std::vector<double>(3, 1.0), 0, 0, 4), Error);  // more stages than layers
}

// Runs the stages' op lists as the data allows (a forward needs the stage before's output of its
// micro-batch, a backward the stage after's gradient), calling run(stage, op) for each; returns
// how far each stage got.
std::vector<size_t> run_in_order(const std::vector<std::vector<dist::PipeOp>>& ops,
                                 const std::function<void(int, const dist::PipeOp&)>& run) {
  const int P = static_cast<int>(ops.size());
  std::vector<size_t> at(P, 0);
  std::vector<std::set<std::pair<bool, int64_t>>> done(P);
  for (bool moved = true; moved;) {
    moved = false;
    for (int s = 0; s < P; ++s) {
      if (at[s] == ops[s].size()) continue;
      const auto op = ops[s][at[s]];
      const bool ready = op.forward ? (s == 0 || done[s - 1].count({true, op.micro}))
                                    : (s == P - 1 || done[s + 1].count({false, op.micro}));
      if (!ready) continue;
      run(s, op);
      done[s].insert({op.forward, op.micro}), ++at[s], moved = true;
    }
  }
  return at;
}

TEST(Pipeline, OneFOneBIsCompleteOrderedAndWithinItsSlots) {
  for (int P = 1; P <= 6; ++P)
    for (int64_t M = 1; M <= 9; ++M) {
      EXPECT_DOUBLE_EQ(dist::pipeline_bubble(P, M), static_cast<double>(P - 1) / static_cast<double>(M + P - 1));
      std::vector<std::vector<dist::PipeOp>> ops;
      for (int s = 0; s < P; ++s) {
        ops.push_back(dist::one_f_one_b(P, s, M));
        const auto& o = ops.back();
        ASSERT_EQ(o.size(), static_cast<size_t>(2 * M));
        const int64_t slots = dist::pipeline_slots(P, s, M);
        std::set<int64_t> in_flight;
        int64_t next_f = 0, next_b = 0;
        for (const auto& op : o) {
          if (op.forward) {
            ASSERT_EQ(op.micro, next_f++);  // forwards and backwards each in micro-batch order
            in_flight.insert(op.micro);
            ASSERT_LE(static_cast<int64_t>(in_flight.size()), slots) << "P " << P << " M " << M << " s " << s;
            std::set<int64_t> used;  // the in-flight micro-batches' slots are distinct
            for (int64_t m : in_flight) ASSERT_TRUE(used.insert(m % slots).second);
          } else {
            ASSERT_EQ(op.micro, next_b++);
            ASSERT_TRUE(in_flight.erase(op.micro)) << "backward before forward";
          }
        }
      }
      // Run every stage's list with the data dependencies: it must always finish.
      const auto at = run_in_order(ops, [](int, const dist::PipeOp&) {});
      for (int s = 0; s < P; ++s) EXPECT_EQ(at[s], ops[s].size()) << "stage " << s << " stuck, P " << P << " M " << M;
    }
}

LlamaConfig four_layers() {
  LlamaConfig c;
  c.vocab_size = 61;
  c.hidden_size = 32;
  c.intermediate_size = 40;
  c.num_hidden_layers = 4;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  c.max_position_embeddings = 64;
  c.rms_norm_eps = 1e-5;
  return c;
}

Batch random_batch(const LlamaConfig& c, int64_t rows, int64_t len, uint64_t seed) {
  Rng r(seed);
  std::vector<std::vector<int32_t>> ids(rows), labels(rows);
  std::vector<const std::vector<int32_t>*> pi, pl;
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t t = 0; t < len - i; ++t) ids[i].push_back(static_cast<int32_t>(r.below(c.vocab_size)));
    labels[i] = ids[i];
    pi.push_back(&ids[i]);
    pl.push_back(&labels[i]);
  }
  return make_batch(pi, pl, 0);
}

std::vector<float> all_of(const LoraParams& p, const LlamaWeights& w) {
  std::vector<float> v;
  p.for_each([&](const std::string&, const Tensor& t) { v.insert(v.end(), t.data.begin(), t.data.end()); });
  v.insert(v.end(), w.embed.data.begin(), w.embed.data.end());
  for (const auto& l : w.layers) {
    for (const auto& t : l.proj) v.insert(v.end(), t.data.begin(), t.data.end());
    v.insert(v.end(), l.input_norm.data.begin(), l.input_norm.data.end());
    v.insert(v.end(), l.post_norm.data.begin(), l.post_norm.data.end());
  }
  v.insert(v.end(), w.final_norm.data.begin(), w.final_norm.data.end());
  v.insert(v.end(), w.lm_head.data.begin(), w.lm_head.data.end());
  return v;
}

// Three stages (layers 0, 1-2, 3) run four micro-batches of different lengths in the 1F1B order,
// the hidden states and gradients handed over by copy: the same bits as the uncut model.
void check_stages_equal_whole(bool checkpointing) {
  const LlamaConfig cfg = four_layers();
  LlamaWeights w = random_llama_weights(cfg, 3);
  for (auto& l : w.layers)
    for (auto& p : l.proj) testing::fill_normal(p, p.numel(), 0.2f);
  LoraSpec spec;
  spec.r = 4, spec.alpha = 8, spec.dropout = 0.1;
  spec.targets.fill(true);
  LoraParams lora = LoraParams::zeros(cfg, spec);
  uint64_t k = 40;
  lora.for_each([&](const std::string&, Tensor& t) { testing::fill_normal(t, ++k, 0.1f); });
  std::vector<Batch> micro;
  for (int m = 0; m < 4; ++m) micro.push_back(random_batch(cfg, 2, 9 + 2 * m, 100 + m));
  const float scale = 1.0f / 50.0f;
  auto key = [](int m) { return 0x9e3779b97f4a7c15ull * (m + 1) | 1; };
  ModelOptions o;
  o.max_batch = 2, o.max_seq = 16, o.gradient_checkpointing = checkpointing;

  LoraParams g_ref = lora.zeros_like();
  LlamaWeights w_ref = zeros_like(w);
  double loss_ref = 0;
  {
    LlamaCpu whole(cfg, w, &lora, o);
    for (int m = 0; m < 4; ++m) loss_ref += whole.forward_backward(micro[m], scale, g_ref, key(m), &w_ref).loss_sum;
  }
  const std::vector<int64_t> bounds{0, 1, 3, 4};
  const int P = 3;
  std::vector<std::unique_ptr<LlamaCpu>> stage;
  for (int s = 0; s < P; ++s) {
    ModelOptions so = o;
    so.first_layer = bounds[s], so.end_layer = bounds[s + 1], so.slots = dist::pipeline_slots(P, s, 4);
    stage.push_back(std::make_unique<LlamaCpu>(cfg, w, &lora, so));
  }
  EXPECT_TRUE(stage[0]->first_stage() && !stage[0]->last_stage() && stage[2]->last_stage());
  LoraParams g = lora.zeros_like();
  LlamaWeights wg = zeros_like(w);
  // hidden[s][m]: stage s's output of micro-batch m; grad[s][m]: the gradient of stage s's input.
  const size_t n = static_cast<size_t>(2 * 16 * cfg.hidden_size);
  std::vector<std::vector<std::vector<float>>> hidden(P, std::vector<std::vector<float>>(4, std::vector<float>(n)));
  auto grad = hidden;
  double loss = 0;
  std::vector<std::vector<dist::PipeOp>> ops;
  for (int s = 0; s < P; ++s) ops.push_back(dist::one_f_one_b(P, s, 4));
  run_in_order(ops, [&](int s, const dist::PipeOp& op) {
      const int64_t m = op.micro, slot = m % dist::pipeline_slots(P, s, 4);
      if (op.forward)
        loss += stage[s]->stage_forward(slot, micro[m], s ? hidden[s - 1][m].data() : nullptr,
                                        s < P - 1 ? hidden[s][m].data() : nullptr, true, scale, key(static_cast<int>(m)), &wg)
                    .loss_sum;
      else
        stage[s]->stage_backward(slot, micro[m], s < P - 1 ? grad[s + 1][m].data() : nullptr,
                                 s ? grad[s][m].data() : nullptr, g, &wg);
  });
  EXPECT_EQ(loss, loss_ref);
  EXPECT_TRUE(all_of(g, wg) == all_of(g_ref, w_ref)) << "gradients differ, rel " << testing::rel_err(all_of(g, wg), all_of(g_ref, w_ref));
  // Evaluation through the stages: the uncut model's loss.
  double eval = 0, eval_ref = 0;
  {
    LlamaCpu whole(cfg, w, &lora, o);
    eval_ref = whole.loss(micro[1]).loss_sum;
  }
  std::vector<float> h0(n), h1(n);
  stage[0]->stage_forward(0, micro[1], nullptr, h0.data(), false, 0.0f, 0);
  stage[1]->stage_forward(0, micro[1], h0.data(), h1.data(), false, 0.0f, 0);
  eval = stage[2]->stage_forward(0, micro[1], h1.data(), nullptr, false, 0.0f, 0).loss_sum;
  EXPECT_EQ(eval, eval_ref);
}

TEST(Pipeline, StagesOfTheCpuModelEqualTheWholeModel) { check_stages_equal_whole(false); }
TEST(Pipeline, StagesOfTheCpuModelEqualTheWholeModelWithCheckpointing) { check_stages_equal_whole(true); }

}  // namespace
}  // namespace ftune

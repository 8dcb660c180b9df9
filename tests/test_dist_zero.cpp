// ZeRO's partition of the flat layout: whole norm chunks per rank covering the range once, decay
// ranges cut to a shard, and a norm assembled from shards with the unsharded norm's bits. ZeRO-3:
// the units' pieces cover each unit once over the ranks; the unit gate changes nothing the model
// computes and leaves no unit whole between uses; ranks as threads over Gloo train as one rank
// does, and their checkpoints load at any stage.
#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <thread>

#include "dist/communicator.h"
#include "dist/zero.h"
#include "dist/zero3.h"
#include "io/checkpoint.h"
#include "model/llama.h"
#include "optim/flat_adamw.h"
#include "train/backend.h"
#include "train/zero3_units.h"
#include "test_util.h"

namespace ftune {
namespace {

TEST(Zero, ShardsCoverTheRangeInWholeChunks) {
  for (int64_t n : {int64_t{0}, int64_t{5}, dist::kNormChunk, 3 * dist::kNormChunk + 7, 40 * dist::kNormChunk + 1})
    for (int world : {1, 2, 3, 4, 7}) {
      int64_t at = 0;
      for (int r = 0; r < world; ++r) {
        const dist::Shard s = dist::make_shard(n, r, world);
        EXPECT_EQ(s.begin, at) << n << " " << world << " " << r;
        EXPECT_TRUE(s.begin % dist::kNormChunk == 0 || s.begin == n);
        EXPECT_EQ(s.counts.size(), static_cast<size_t>(world));
        EXPECT_EQ(static_cast<int64_t>(s.counts[r]), s.size());
        at = s.end;
      }
      EXPECT_EQ(at, n);
    }
}

TEST(Zero, DecayRangesWithinAShard) {
  dist::Shard s{100, 200, {100, 100, 100}};
  const auto r = dist::ranges_within({{0, 50}, {90, 120}, {150, 160}, {190, 300}}, s);
  ASSERT_EQ(r.size(), 3u);
  EXPECT_EQ(r[0], (std::pair<int64_t, int64_t>{0, 20}));
  EXPECT_EQ(r[1], (std::pair<int64_t, int64_t>{50, 60}));
  EXPECT_EQ(r[2], (std::pair<int64_t, int64_t>{90, 100}));
}

// Three ranks as threads over Gloo: the norm from their shards equals flat_grad_norm bit for bit.
TEST(Zero, ShardedNormHasTheUnshardedBits) {
  const int64_t n = 5 * dist::kNormChunk + 12345;
  const std::vector<float> g = testing::randn(static_cast<size_t>(n), 11, 3.0f);
  const double want = flat_grad_norm(g.data(), n);
  const auto store = dist::make_memory_store(std::chrono::milliseconds(30000));
  std::vector<double> got(3, -1);
  std::vector<std::thread> ranks;
  std::vector<std::unique_ptr<dist::Store>> views;
  for (int r = 0; r < 3; ++r) views.push_back(dist::prefixed(*store, "zero"));
  std::vector<std::unique_ptr<dist::Communicator>> comms(3);
  for (int r = 0; r < 3; ++r)
    ranks.emplace_back([&, r] {
      comms[r] = dist::make_gloo_communicator(*views[r], r, 3, std::chrono::milliseconds(30000), "127.0.0.1");
      const dist::Shard s = dist::make_shard(n, r, 3);
      got[r] = dist::sharded_grad_norm(g.data() + s.begin, s, n, *comms[r]);
    });
  for (auto& t : ranks) t.join();
  for (int r = 0; r < 3; ++r) EXPECT_EQ(got[r], want) << r;
}


// ---- ZeRO-3 ----

// A small Llama of random odd sizes (so that units rarely divide by the world size).
LlamaConfig random_config(uint64_t seed, bool tied) {
  Rng r(seed);
  LlamaConfig c;
  c.vocab_size = 40 + static_cast<int64_t>(r.below(60));
  c.hidden_size = 16 + 8 * static_cast<int64_t>(r.below(3));
  c.intermediate_size = 20 + static_cast<int64_t>(r.below(30));
  c.num_hidden_layers = 1 + static_cast<int64_t>(r.below(3));
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.head_dim = 8;
  c.max_position_embeddings = 64;
  c.rms_norm_eps = 1e-5;
  c.tie_word_embeddings = tied;
  return c;
}

bool is_norm(const ParamSpec& s) {
  return s.role == ParamRole::InputNorm || s.role == ParamRole::PostNorm || s.role == ParamRole::FinalNorm;
}

TEST(Zero3Layout, PiecesCoverEveryUnitOnceOverTheRanks) {
  for (uint64_t seed = 1; seed <= 6; ++seed)
    for (bool tied : {false, true})
      for (int world : {1, 2, 3, 4, 7}) {
        const LlamaConfig cfg = random_config(seed, tied);
        const ParamTable table = ParamTable::full(cfg);
        const auto& specs = table.specs();
        const int64_t L = cfg.num_hidden_layers, P = table.trainable_numel();
        SCOPED_TRACE(::testing::Message() << "seed " << seed << " tied " << tied << " world " << world);
        std::vector<int> held(static_cast<size_t>(P), 0);  // ranks holding each matrix element
        for (int r = 0; r < world; ++r) {
          const dist::Zero3Layout z(table, cfg, r, world);
          ASSERT_EQ(z.units(), L + 2);
          // Each unit's extent: the embedding, a layer's seven projections, the lm_head.
          const ParamSpec& q = *table.find("model.layers.0.self_attn.q_proj.weight");
          EXPECT_EQ(z.unit(0).begin, 0);
          EXPECT_EQ(z.unit(0).numel, cfg.vocab_size * cfg.hidden_size);
          EXPECT_EQ(z.unit(dist::Zero3Layout::layer_unit(0)).begin, q.offset);
          int64_t proj = 0;
          for (const ParamSpec& s : specs) proj += s.role == ParamRole::Proj && s.layer == 0 ? s.numel() : 0;
          EXPECT_EQ(z.unit(1).numel, proj);
          int64_t local = 0;
          for (int64_t u = 0; u < z.units(); ++u) {
            const dist::Zero3Unit& x = z.unit(u);
            if (x.alias) continue;
            EXPECT_EQ(x.piece, (x.numel + world - 1) / world) << u;
            EXPECT_GE(x.piece * world - x.numel, 0);
            EXPECT_LT(x.piece * world - x.numel, world) << u;  // padding: less than one element per rank
            EXPECT_EQ(x.local, local) << u;
            local += x.piece;
          }
          EXPECT_EQ(z.sharded_numel(), local);
          EXPECT_EQ(z.norm_numel(), (2 * L + 1) * cfg.hidden_size);
          EXPECT_EQ(z.local_numel(), z.sharded_numel() + z.norm_numel());
          EXPECT_EQ(z.norm_specs().size(), static_cast<size_t>(2 * L + 1));
          int64_t prev_end = 0, norms_seen = 0;
          for (const dist::Zero3Run& run : z.runs()) {
            const ParamSpec& s = specs[static_cast<size_t>(run.spec)];
            EXPECT_GE(run.local, prev_end);  // in local order, not overlapping
            prev_end = run.local + run.n;
            ASSERT_GT(run.n, 0);
            EXPECT_GE(run.table, s.offset);  // within its tensor
            EXPECT_LE(run.table + run.n, s.offset + s.numel());
            if (is_norm(s)) {  // whole, after the pieces, on every rank
              EXPECT_EQ(run.local, z.sharded_numel() + norms_seen);
              EXPECT_EQ(run.table, s.offset);
              EXPECT_EQ(run.n, s.numel());
              norms_seen += run.n;
              continue;
            }
            // Piece r of the unit holding it: unit elements [r * piece, (r + 1) * piece).
            int64_t u = 0;
            while (u + 1 < z.units() && !(run.table >= z.unit(u).begin && run.table < z.unit(u).begin + z.unit(u).numel))
              ++u;
            const dist::Zero3Unit& x = z.unit(u);
            ASSERT_FALSE(x.alias);
            const int64_t at = run.table - x.begin;
            EXPECT_EQ(run.local - x.local, at - r * x.piece);
            EXPECT_GE(at, r * x.piece);
            EXPECT_LE(at + run.n, (r + 1) * x.piece);
            for (int64_t e = run.table; e < run.table + run.n; ++e) ++held[static_cast<size_t>(e)];
          }
          EXPECT_EQ(norms_seen, z.norm_numel());
          // local_of agrees with the runs, and is -1 for the elements other ranks hold.
          Rng pick(seed * 131 + static_cast<uint64_t>(r));
          for (int k = 0; k < 200; ++k) {
            const int64_t e = static_cast<int64_t>(pick.below(static_cast<uint64_t>(P)));
            int64_t want = -1;
            for (const dist::Zero3Run& run : z.runs())
              if (e >= run.table && e < run.table + run.n) want = run.local + (e - run.table);
            EXPECT_EQ(z.local_of(e), want) << e;
          }
        }
        for (const ParamSpec& s : specs)
          for (int64_t e = s.offset; e < s.offset + s.numel(); ++e)
            ASSERT_EQ(held[static_cast<size_t>(e)], is_norm(s) ? 0 : 1) << s.key << " element " << e - s.offset;
      }
}

TEST(Zero3Layout, TiedLmHeadIsTheEmbeddingsPiece) {
  for (int world : {1, 2, 5}) {
    const LlamaConfig tied = random_config(9, true), untied = random_config(9, false);
    const dist::Zero3Layout t(ParamTable::full(tied), tied, world - 1, world);
    const dist::Zero3Layout u(ParamTable::full(untied), untied, world - 1, world);
    const dist::Zero3Unit &head = t.unit(t.head_unit()), &embed = t.unit(0);
    EXPECT_TRUE(head.alias);
    EXPECT_EQ(head.begin, embed.begin);
    EXPECT_EQ(head.numel, embed.numel);
    EXPECT_EQ(head.piece, embed.piece);
    EXPECT_EQ(head.local, embed.local);
    // The untied lm_head is a piece of its own, the last one.
    EXPECT_FALSE(u.unit(u.head_unit()).alias);
    EXPECT_EQ(u.unit(u.head_unit()).local + u.unit(u.head_unit()).piece, u.sharded_numel());
    EXPECT_EQ(u.sharded_numel() - t.sharded_numel(), u.unit(u.head_unit()).piece);
  }
}

Batch random_batch(const LlamaConfig& c, int64_t rows, int64_t len, uint64_t seed) {
  Rng r(seed);
  std::vector<std::vector<int32_t>> ids(static_cast<size_t>(rows)), labels(ids.size());
  std::vector<const std::vector<int32_t>*> pi, pl;
  for (size_t i = 0; i < ids.size(); ++i) {
    const int64_t n = len - static_cast<int64_t>(i);  // ragged rows: padding too
    for (int64_t t = 0; t < n; ++t) ids[i].push_back(static_cast<int32_t>(r.below(static_cast<uint64_t>(c.vocab_size))));
    labels[i] = ids[i];
    labels[i][1] = kIgnoreIndex;
    pi.push_back(&ids[i]);
    pl.push_back(&labels[i]);
  }
  return make_batch(pi, pl, 0);
}

// How many of the units' matrices (no norm) are whole in `w`.
int64_t whole_matrices(const ParamTable& t, const LlamaWeights& w) {
  int64_t n = 0;
  for (const ParamSpec& s : t.specs())
    if (!is_norm(s) && !param_tensor(w, s).empty()) ++n;
  return n;
}

// Zero3Units as the model's gate, checking that no unit is whole outside its use and writing down
// the calls: g gather, r release, b begin_grads, e end_grads, each with its unit.
class WatchedUnits final : public UnitGate {
 public:
  WatchedUnits(Zero3Units& z, const ParamTable& t, const LlamaWeights& w, const LlamaWeights& g)
      : z_(z), t_(t), w_(w), g_(g) {}
  void gather(int64_t u) override {
    EXPECT_EQ(whole_matrices(t_, w_), 0) << "before gather " << u;
    z_.gather(u);
    EXPECT_GT(whole_matrices(t_, w_), 0);
    log += "g" + std::to_string(u) + " ";
  }
  void release(int64_t u) override {
    z_.release(u);
    EXPECT_EQ(whole_matrices(t_, w_), 0) << "after release " << u;
    log += "r" + std::to_string(u) + " ";
  }
  void begin_grads(int64_t u) override {
    EXPECT_EQ(whole_matrices(t_, g_), 0) << "before begin_grads " << u;
    z_.begin_grads(u);
    log += "b" + std::to_string(u) + " ";
  }
  void end_grads(int64_t u) override {
    z_.end_grads(u);
    EXPECT_EQ(whole_matrices(t_, g_), 0) << "after end_grads " << u;
    log += "e" + std::to_string(u) + " ";
  }
  std::string log;

 private:
  Zero3Units& z_;
  const ParamTable& t_;
  const LlamaWeights& w_;
  const LlamaWeights& g_;
};

// On one rank every collective is the identity, so the gated model must compute exactly what the
// plain one does: the same loss, logits and gradient bits (each unit's gradient starts from zero in
// both, and the tied embedding's two shares are added in the same order), with the units asked for
// in the order of their use and every one of them given up between uses.
TEST(Zero3Units, TheGateChangesNoBitAndHoldsNoUnitBetweenUses) {
  for (bool tied : {false, true})
    for (bool checkpointing : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "tied " << tied << " checkpointing " << checkpointing);
      const LlamaConfig cfg = random_config(tied ? 21 : 22, tied);
      const ParamTable table = ParamTable::full(cfg);
      const LlamaWeights w = random_llama_weights(cfg, 5);
      const ModelOptions opt{2, 8, checkpointing};
      const Batch b = random_batch(cfg, 2, 8, 7);
      const float scale = 1.0f / static_cast<float>(b.count_targets());
      LoraParams none;
      LlamaWeights plain_grads = zeros_like(w);
      LlamaCpu plain(cfg, w, nullptr, opt);
      const auto want = plain.forward_backward(b, scale, none, 0, &plain_grads);
      std::vector<float> want_grads(static_cast<size_t>(table.trainable_numel()));
      gather_trainable(table, plain_grads, want_grads.data());

      const auto comm = dist::make_single_communicator();
      const dist::Zero3Layout layout(table, cfg, 0, 1);
      LlamaWeights weights, grads;
      Zero3Units units(cfg, table, layout, *comm, *memory_source(w), weights, grads);
      EXPECT_EQ(whole_matrices(table, weights), 0);
      WatchedUnits watch(units, table, weights, grads);
      LlamaCpu gated(cfg, weights, nullptr, opt, &watch);
      const auto got = gated.forward_backward(b, scale, none, 0, &grads);
      EXPECT_EQ(got.loss_sum, want.loss_sum);
      EXPECT_EQ(got.count, want.count);
      units.reduce_norm_grads();
      const std::vector<float> got_grads = units.to_table(units.grad());
      ASSERT_EQ(got_grads.size(), want_grads.size());
      for (const ParamSpec& s : table.specs()) {
        const std::vector<float> g(got_grads.begin() + s.offset, got_grads.begin() + s.offset + s.numel());
        const std::vector<float> want(want_grads.begin() + s.offset, want_grads.begin() + s.offset + s.numel());
        if (tied && s.role == ParamRole::Embed) {
          // The exception: the plain model adds each looked-up row's gradient onto the head's share
          // ((h + e1) + e2), the gate hands the two over apart (h + (e1 + e2)). Rounding of a few
          // fp32 additions: measured 2.5e-8 relative.
          const double e = testing::rel_err(g, want);
          EXPECT_LT(e, 1e-6);
          std::printf("[ measured ] tied embedding's gradient: %.1e relative\n", e);
        } else {
          EXPECT_EQ(g, want) << s.key;
        }
      }
      // Forward: embedding, layers, head (its gradient handed over at once); backward: each layer
      // gathered again, its gradient handed over before it is given up; the embedding's gradient last.
      const int64_t L = cfg.num_hidden_layers, H = L + 1;
      std::string order = "g0 r0 ";
      for (int64_t l = 0; l < L; ++l) order += "g" + std::to_string(1 + l) + " r" + std::to_string(1 + l) + " ";
      order += "g" + std::to_string(H) + " b" + std::to_string(H) + " e" + std::to_string(H) + " r" + std::to_string(H) + " ";
      for (int64_t l = L - 1; l >= 0; --l) {
        const std::string u = std::to_string(1 + l);
        order += "g" + u + " b" + u + " e" + u + " r" + u + " ";
      }
      order += "b0 e0 ";
      EXPECT_EQ(watch.log, order);
      EXPECT_EQ(whole_matrices(table, weights), 0);
      EXPECT_EQ(whole_matrices(table, grads), 0);
      EXPECT_EQ(gated.loss(b).loss_sum, plain.loss(b).loss_sum);
      EXPECT_EQ(gated.logits(b).data, plain.logits(b).data);
      // What the gated model read is what it was given.
      LlamaWeights whole;
      units.whole_weights(whole);
      for (const ParamSpec& s : table.specs()) EXPECT_EQ(param_tensor(whole, s).data, param_tensor(w, s).data) << s.key;
    }
}

// Runs fn(rank, comm) on `world` threads, each rank with a Gloo communicator over one memory store.
void on_ranks(int world, const std::function<void(int, dist::Communicator&)>& fn) {
  const auto store = dist::make_memory_store(std::chrono::milliseconds(60000));
  std::vector<std::unique_ptr<dist::Communicator>> comms(static_cast<size_t>(world));
  std::vector<std::thread> ranks;
  for (int r = 0; r < world; ++r)
    ranks.emplace_back([&, r] {
      comms[r] = dist::make_gloo_communicator(*store, r, world, std::chrono::milliseconds(60000), "127.0.0.1");
      fn(r, *comms[r]);
    });
  for (auto& t : ranks) t.join();
}

BackendOptions full_options(bool checkpointing, int zero, dist::Communicator* comm) {
  BackendOptions o;
  o.model = {2, 8, checkpointing};
  o.plan.method = Method::Full;
  o.plan.checkpointing = checkpointing;
  o.plan.adamw.weight_decay = 0.1;  // the decay ranges matter: norms must not decay
  o.plan.zero = zero;
  o.comm = comm;
  return o;
}

std::vector<float> flat(const ParamTable& t, const LlamaWeights& w) {
  std::vector<float> v(static_cast<size_t>(t.trainable_numel()));
  gather_trainable(t, w, v.data());
  return v;
}

// W ranks under ZeRO-3, one micro-batch each per step, against one rank stepping all W micro-batches:
// the same losses, gradient norms (clipped: max_grad_norm below them) and weights, up to the order
// of the gradient sums (one rank accumulates micro-batch after micro-batch, ZeRO-3 sums each over
// the ranks and then adds; the norm adds the ranks' sums of squares). Measured over 4 steps at lr
// 1e-2, 3 ranks (tied, checkpointed): losses 9e-10, norms 2e-8, weights 1.7e-7 relative (2 ranks,
// untied: the weights bit for bit, since each GEMM adds a micro-batch's whole product onto the
// gradient as the ranks' sum does). The bounds are 1e-6, 6 times the worst, which a decayed norm
// weight (lr x decay = 1e-3 relative per step) or a lost or doubled piece would exceed by far. Every rank reads the same weights; the checkpoint state, in the table
// layout, loads into a one-rank backend (and the one-rank state into ZeRO-3) with no bit changed;
// rank 0 evaluates alone while the others only take part in the gathers.
TEST(Zero3Backend, RanksTrainAsOneRankAndCheckpointsCrossStages) {
  struct Case { int world; bool tied, checkpointing; };
  for (const Case c : {Case{2, false, false}, Case{3, true, true}}) {
    SCOPED_TRACE(::testing::Message() << c.world << " ranks, tied " << c.tied << " checkpointing " << c.checkpointing);
    const LlamaConfig cfg = random_config(30 + static_cast<uint64_t>(c.world), c.tied);
    const ParamTable table = ParamTable::full(cfg);
    testing::TempDir dir("zero3");
    save_llama_model(cfg, random_llama_weights(cfg, 8), dir.str(), DType::F32);
    const int steps = 4;
    const double lr = 1e-2, max_norm = 0.5;
    std::vector<std::vector<Batch>> micro(steps);
    std::vector<float> scale(steps);
    for (int s = 0; s < steps; ++s) {
      int64_t targets = 0;
      for (int k = 0; k < c.world; ++k) {
        micro[s].push_back(random_batch(cfg, 2, 8 - k % 2, 100 * static_cast<uint64_t>(s) + static_cast<uint64_t>(k)));
        targets += micro[s].back().count_targets();
      }
      scale[s] = 1.0f / static_cast<float>(targets);
    }
    const CheckpointReader ckpt(dir.str());
    const auto one = make_backend(cfg, ckpt, LoraParams{}, full_options(c.checkpointing, 0, nullptr));
    std::vector<double> want_loss, want_norm;
    for (int s = 0; s < steps; ++s) {
      double sum = 0;
      for (const Batch& b : micro[s]) sum += one->forward_backward(b, scale[s], 0).loss_sum;
      want_loss.push_back(sum);
      want_norm.push_back(one->step(lr, max_norm).grad_norm);
    }
    LlamaWeights want_w;
    one->read_weights(want_w);
    const BackendState one_state = one->save_state();

    std::vector<std::vector<double>> loss(c.world), norm(c.world);
    std::vector<LlamaWeights> got_w(static_cast<size_t>(c.world)), reloaded(got_w.size());
    std::vector<BackendState> state(got_w.size());
    std::vector<double> eval(got_w.size(), -1);
    on_ranks(c.world, [&](int r, dist::Communicator& comm) {
      const CheckpointReader mine(dir.str());
      const auto z = make_backend(cfg, mine, LoraParams{}, full_options(c.checkpointing, 3, &comm));
      EXPECT_NE(z->name().find("ZeRO-3"), std::string::npos);
      EXPECT_TRUE(z->collective_forward());
      for (int s = 0; s < steps; ++s) {
        double sum = z->forward_backward(micro[s][static_cast<size_t>(r)], scale[s], 0).loss_sum;
        z->all_reduce_gradients(comm);
        comm.all_reduce_sum(&sum, 1);
        loss[r].push_back(sum);
        norm[r].push_back(z->step(lr, max_norm).grad_norm);
      }
      z->read_weights(got_w[r]);
      state[r] = z->save_state();
      if (r == 0)
        eval[0] = z->loss(micro[0][0]).loss_sum;
      else
        z->forward_without_rows();
      const auto back = make_backend(cfg, mine, LoraParams{}, full_options(c.checkpointing, 3, &comm));
      back->load_state(one_state);  // a one-rank checkpoint, taken back piece by piece
      back->read_weights(reloaded[r]);
    });
    double worst_loss = 0, worst_norm = 0, worst_w = 0;
    for (int r = 0; r < c.world; ++r) {
      EXPECT_EQ(loss[r], loss[0]) << r;
      EXPECT_EQ(norm[r], norm[0]) << r;
      EXPECT_EQ(flat(table, got_w[r]), flat(table, got_w[0])) << r;
      EXPECT_EQ(state[r].f32, state[0].f32) << r;
      EXPECT_EQ(flat(table, reloaded[r]), flat(table, want_w)) << r;
    }
    for (int s = 0; s < steps; ++s) {
      EXPECT_GT(want_norm[s], max_norm);  // clipping is exercised
      worst_loss = std::max(worst_loss, std::abs(loss[0][s] - want_loss[s]) / std::abs(want_loss[s]));
      worst_norm = std::max(worst_norm, std::abs(norm[0][s] - want_norm[s]) / want_norm[s]);
    }
    for (const ParamSpec& s : table.specs())
      worst_w = std::max(worst_w, testing::rel_err(param_tensor(got_w[0], s).data, param_tensor(want_w, s).data));
    EXPECT_LT(worst_loss, 1e-6);
    EXPECT_LT(worst_norm, 1e-6);
    EXPECT_LT(worst_w, 1e-6);
    std::printf("[ measured ] %d ranks: losses %.1e, grad norms %.1e, weights %.1e relative to one rank\n", c.world,
                worst_loss, worst_norm, worst_w);
    // The state is the table layout's: the masters are the weights, and the moments of every element.
    EXPECT_EQ(state[0].f32.at("master"), flat(table, got_w[0]));
    EXPECT_EQ(state[0].f32.at("adam.m").size(), static_cast<size_t>(table.trainable_numel()));
    EXPECT_EQ(state[0].ints.at("adam.t"), steps);
    const auto resumed = make_backend(cfg, ckpt, LoraParams{}, full_options(c.checkpointing, 0, nullptr));
    resumed->load_state(state[0]);
    LlamaWeights w;
    resumed->read_weights(w);
    EXPECT_EQ(flat(table, w), flat(table, got_w[0]));
    // Rank 0's lone evaluation is the plain model's on the gathered weights.
    LlamaCpu check(cfg, got_w[0], nullptr, {2, 8, false});
    EXPECT_EQ(eval[0], check.loss(micro[0][0]).loss_sum);
  }
}

}  // namespace
}  // namespace ftune

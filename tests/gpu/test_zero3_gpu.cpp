// ZeRO-3 on the GPU: one rank is the unsharded model bit for bit (the gather is the piece itself);
// two ranks sharing the GPU through host-staged Gloo equal one rank computing both micro-batches;
// the plan divides weights, gradients and moments by the ranks; train.max_memory refuses a model
// planned over it. Skipped without a GPU, except the plan, which needs none.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <filesystem>
#include <latch>
#include <thread>

#include "../error_util.h"
#include "../test_util.h"
#include "core/rng.h"
#include "dist/communicator.h"
#include "dist/store.h"
#include "dist/zero3.h"
#include "gpu/llama_gpu.h"
#include "gpu/nccl_communicator.h"
#include "gpu/zero3_comm.h"
#include "io/checkpoint.h"
#include "model/presets.h"
#include "ops/cuda/context.h"
#include "params/param_table.h"
#include "train/backend.h"

namespace ftune {
namespace {

namespace fs = std::filesystem;
using testing::rel_err;
using std::chrono::milliseconds;

const fs::path kFixtures = fs::path(FTUNE_SOURCE_DIR) / "tests/fixtures/hf";
constexpr int kSteps = 3;

// Random rows (ids and labels with some masked), `rows` x `seq`.
Batch random_batch(const LlamaConfig& cfg, int64_t rows, int64_t seq, uint64_t seed) {
  Rng rng(seed, 1);
  std::vector<std::vector<int32_t>> ids(rows, std::vector<int32_t>(seq)), labels = ids;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t t = 0; t < seq; ++t) {
      ids[r][t] = static_cast<int32_t>(rng.next_u64() % static_cast<uint64_t>(cfg.vocab_size));
      labels[r][t] = rng.next_u64() % 5 == 0 ? -100 : ids[r][t];
    }
  std::vector<const std::vector<int32_t>*> pi, pl;
  for (int64_t r = 0; r < rows; ++r) pi.push_back(&ids[r]), pl.push_back(&labels[r]);
  return make_batch(pi, pl, 0);
}

cuda::AdamWStep adamw_step(int64_t t) { return {1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, t}; }

// The masters of a model in the table's layout (ZeRO-3: gathered over `comm`).
std::vector<float> masters(const LlamaGpu& m, dist::Communicator* comm) {
  std::vector<float> table(static_cast<size_t>(m.table().trainable_numel()));
  if (!m.zero3()) {
    LlamaWeights w;
    m.get_weights(w);
    gather_trainable(m.table(), w, table.data());
    return table;
  }
  const std::vector<float> local = m.local_masters();
  dist::zero3_to_table(*m.zero3(), local.data(), *comm, table.data());
  return table;
}

struct RunResult {
  std::vector<double> losses, norms;
  std::vector<float> weights;  // table layout
};

// kSteps of the unsharded model, every micro-batch on this one rank.
RunResult unsharded(const LlamaConfig& cfg, const WeightSource& w, const std::vector<Batch>& micro, GpuModelOptions o) {
  cuda::Context ctx;
  LlamaGpu m(ctx, cfg, &w, nullptr, o);
  int64_t targets = 0;
  for (const Batch& b : micro) targets += b.count_targets();
  RunResult run;
  for (int64_t s = 1; s <= kSteps; ++s) {
    double loss = 0;
    for (const Batch& b : micro) loss += m.forward_backward(b, 1.0f / static_cast<float>(targets)).first;
    run.losses.push_back(loss), run.norms.push_back(m.grad_norm());
    m.optimizer_step(adamw_step(s), 1.0f);
    m.zero_grads();
  }
  run.weights = masters(m, nullptr);
  return run;
}

// The same under ZeRO-3 on `world` ranks (threads sharing the GPU, Gloo between them): rank r
// computes micro-batch r. Returns rank 0's view.
RunResult sharded(const LlamaConfig& cfg, const WeightSource& w, const std::vector<Batch>& micro, GpuModelOptions o,
                  int world, bool whole_weights = false) {
  const milliseconds timeout(60000);
  auto store = dist::make_memory_store(timeout);
  int64_t targets = 0;
  for (const Batch& b : micro) targets += b.count_targets();
  std::vector<RunResult> runs(world);
  std::vector<std::string> errors(world);
  std::latch done(world);
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r)
    threads.emplace_back([&, r] {
      try {
        cuda::Context ctx;
        auto comm = world == 1 ? dist::make_single_communicator() : dist::make_gloo_communicator(*store, r, world, timeout);
        GpuModelOptions mine = o;
        mine.zero3_world = world, mine.zero3_rank = r, mine.zero_whole_weights = whole_weights;
        LlamaGpu m(ctx, cfg, &w, nullptr, mine);
        auto zc = make_zero3_comm(ctx, *comm, nullptr, m.zero3_max_unit_bytes(), m.zero3_max_piece());
        m.set_zero3_comm(zc.get());
        for (int64_t s = 1; s <= kSteps; ++s) {
          double loss = 0;
          for (size_t i = static_cast<size_t>(r); i < micro.size(); i += static_cast<size_t>(world))
            loss += m.forward_backward(micro[i], 1.0f / static_cast<float>(targets)).first;
          comm->all_reduce_sum(&loss, 1);
          m.reduce_gradients([&](float* g, size_t n) { comm->all_reduce_sum(g, n); });  // the norms' gradients
          runs[r].losses.push_back(loss), runs[r].norms.push_back(m.grad_norm());
          m.optimizer_step(adamw_step(s), 1.0f);
          m.zero_grads();
        }
        runs[r].weights = masters(m, comm.get());
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
      done.arrive_and_wait();
    });
  for (auto& t : threads) t.join();
  for (int r = 0; r < world; ++r) EXPECT_EQ(errors[r], "") << "rank " << r;
  for (int r = 1; r < world; ++r) EXPECT_EQ(runs[r].weights, runs[0].weights) << "rank " << r;  // every rank, the same
  return runs[0];
}

struct Model {
  LlamaConfig cfg;
  LlamaWeights w;
};
Model fixture(const char* name) {
  const fs::path dir = kFixtures / name / "model";
  Model m{load_llama_config(dir.string()), {}};
  m.w = load_llama_weights(m.cfg, CheckpointReader(dir.string()));
  return m;
}

std::vector<float> masters_of(const Model& f) {
  const ParamTable t = ParamTable::full(f.cfg);
  std::vector<float> v(static_cast<size_t>(t.trainable_numel()));
  gather_trainable(t, f.w, v.data());
  return v;
}

double max_rel(const std::vector<double>& a, const std::vector<double>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]) / std::abs(a[i]));
  return m;
}

// One rank: the gather copies the piece and the reduce-scatter adds the unit's gradient into the
// zeroed accumulator. With one micro-batch and an untied lm_head every loss and weight has the
// unsharded model's bits (fp32 and bf16, with and without checkpointing, fp32 and 8-bit moments).
// The embedding's gradient is where the order can differ: the unsharded model adds each token's row
// onto what the buffer holds (the tied lm_head's share, the earlier micro-batches'), ZeRO-3 sums the
// unit's rows from zero and then adds them to the accumulator; fp32 rounding of those sums moves the
// results by about 1e-8 relative, bounded here by 1e-6.
TEST(Zero3Gpu, OneRankIsTheUnshardedModel) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  for (const char* name : {"gqa_tied", "mha_untied"}) {
    const Model f = fixture(name);
    const auto src = memory_source(f.w);
    const Batch b1 = random_batch(f.cfg, 2, 24, 11), b2 = random_batch(f.cfg, 2, 17, 12);
    for (const std::vector<Batch>& micro : {std::vector<Batch>{b1}, std::vector<Batch>{b1, b2}})
      for (const cuda::Storage st : {cuda::Storage::F32, cuda::Storage::BF16})
        for (const bool ckpt : {false, true})
          for (const GpuOptimizer opt : {GpuOptimizer::AdamW, GpuOptimizer::AdamW8bit}) {
            GpuModelOptions o{2, 24, st, ckpt};
            o.full = true, o.optimizer = opt;
            const bool bitwise = !f.cfg.tie_word_embeddings && micro.size() == 1;
            const std::string what = fmt::format("{}, {} micro-batches, storage {}, checkpointing {}, optimizer {}",
                                                 name, micro.size(), static_cast<int>(st), ckpt, static_cast<int>(opt));
            const RunResult a = unsharded(f.cfg, *src, micro, o), b = sharded(f.cfg, *src, micro, o, 1);
            ASSERT_EQ(a.weights.size(), b.weights.size());
            EXPECT_EQ(a.losses[0], b.losses[0]) << what;  // the same weights: the same first forward
            if (bitwise) {
              EXPECT_EQ(a.losses, b.losses) << what;
              EXPECT_EQ(a.weights, b.weights) << what << ": rel " << rel_err(b.weights, a.weights);
            } else {
              EXPECT_LT(max_rel(a.losses, b.losses), 1e-6) << what;
              EXPECT_LT(rel_err(b.weights, a.weights), 1e-6) << what;
            }
            EXPECT_GT(rel_err(a.weights, masters_of(f)), 1e-4) << what;  // the weights did move
            // The norm adds the pieces' and the norms' sums of squares separately (each with
            // atomics): the same value within double rounding.
            for (size_t i = 0; i < a.norms.size(); ++i)
              EXPECT_NEAR(a.norms[i], b.norms[i], 1e-6 * a.norms[i]) << what;
          }
  }
}

// Two ranks sharing the GPU, host-staged, under stage 3 and under stages 1/2 (whole weights, the
// new pieces gathered into them after each step): each computes one of the two micro-batches; the units'
// gradients are summed over the ranks in another order than one rank's accumulation (fp32
// rounding, ~1e-8 measured on fp32 storage), so losses and weights are compared within 1e-6
// relative in fp32 and within bf16's rounding of the per-row GEMMs (cuBLAS picks its kernels by
// shape: one row's products round differently from two rows') in bf16: 2e-3 on the losses, 1e-4 on
// the fp32 masters, whose few-step updates are mostly lr-sized.
TEST(Zero3Gpu, TwoRanksSharingTheGpuEqualOneRank) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  for (const char* name : {"gqa_tied", "mha_untied"}) {
    const Model f = fixture(name);
    const auto src = memory_source(f.w);
    const std::vector<Batch> micro{random_batch(f.cfg, 2, 24, 21), random_batch(f.cfg, 2, 24, 22)};
    for (const cuda::Storage st : {cuda::Storage::F32, cuda::Storage::BF16})
    for (const bool whole : {false, true}) {  // stage 3; stages 1 and 2 (whole weights)
      GpuModelOptions o{2, 24, st, true};
      o.full = true;
      const bool fp32 = st == cuda::Storage::F32;
      const RunResult a = unsharded(f.cfg, *src, micro, o), b = sharded(f.cfg, *src, micro, o, 2, whole);
      const std::string what = fmt::format("{}, storage {}, {}", name, static_cast<int>(st),
                                           whole ? "dist.zero 1/2" : "dist.zero 3");
      EXPECT_LT(max_rel(a.losses, b.losses), fp32 ? 1e-6 : 2e-3) << what;
      EXPECT_LT(rel_err(b.weights, a.weights), fp32 ? 1e-6 : 1e-4) << what;
      EXPECT_GT(rel_err(a.weights, masters_of(f)), 1e-4) << what;
      fmt::print("{}: losses max rel {:.3g}, weights rel {:.3g}\n", what, max_rel(a.losses, b.losses),
                 rel_err(b.weights, a.weights));
    }
  }
}

// The plan of a Llama-2-7B-shape full fine-tune on 8 ranks: weights, gradients and moments are
// this rank's pieces plus one gathered unit, a rank's whole budget fits a T4's 15 GiB; no GPU needed.
TEST(Zero3Gpu, PlanDividesWeightsGradientsAndMomentsByTheRanks) {
  const LlamaConfig cfg = preset_config("llama2-7b");
  GpuModelOptions o{1, 2048, cuda::Storage::BF16, true};
  o.full = true, o.optimizer = GpuOptimizer::AdamW8bit;
  const MemoryPlan whole = LlamaGpu::plan(cfg, nullptr, o, 90);
  o.zero3_world = 8, o.zero3_rank = 3;
  const MemoryPlan eighth = LlamaGpu::plan(cfg, nullptr, o, 90);
  const ParamTable table = ParamTable::full(cfg);
  const dist::Zero3Layout z(table, cfg, 3, 8);
  int64_t widest = 0;
  for (int64_t u = 0; u < z.units(); ++u) widest = std::max(widest, z.unit(u).piece * 8);
  const int64_t norms = z.norm_numel();
  // Weights: the bf16 pieces, one gathered unit, the fp32 norms.
  EXPECT_EQ(eighth[MemCategory::Weights], static_cast<size_t>((z.sharded_numel() + widest) * 2 + norms * 4));
  // Gradients: the fp32 local range and one unit's.
  EXPECT_EQ(eighth[MemCategory::Gradients], static_cast<size_t>((z.local_numel() + widest) * 4));
  EXPECT_LT(eighth[MemCategory::Optimizer], whole[MemCategory::Optimizer] / 7);  // masters + 8-bit moments, 1/8
  EXPECT_GT(eighth[MemCategory::Optimizer], whole[MemCategory::Optimizer] / 9);
  EXPECT_EQ(eighth[MemCategory::Activations], whole[MemCategory::Activations]);  // data parallel: the same rows
  EXPECT_LT(eighth.device_total(), size_t{14} << 30);  // under a T4's usable 15 GiB with the CUDA context
  fmt::print("7B zero 3 on 8 ranks, per rank: weights {:.2f} GiB, gradients {:.2f}, optimizer {:.2f}, total {:.2f} "
             "(one rank: {:.2f})\n",
             eighth[MemCategory::Weights] / 1073741824.0, eighth[MemCategory::Gradients] / 1073741824.0,
             eighth[MemCategory::Optimizer] / 1073741824.0, eighth.device_total() / 1073741824.0,
             whole.device_total() / 1073741824.0);
}

// The NCCL path at world size 1: the gather is the piece, the reduce-scatter adds the whole.
TEST(Zero3Gpu, NcclWorldOfOne) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  cuda::Context ctx;
  const auto store = dist::make_memory_store(milliseconds(10000));
  NcclCommunicator nccl(*store, 0, 1, ctx, milliseconds(10000));
  auto host = dist::make_single_communicator();
  auto zc = make_zero3_comm(ctx, *host, &nccl, 1 << 20, 1 << 18);
  const std::vector<float> x = testing::randn(1 << 18, 5), acc0 = testing::randn(1 << 18, 6);
  auto dx = cuda::DeviceBuffer::from(x), out = cuda::DeviceBuffer(x.size() * 4), acc = cuda::DeviceBuffer::from(acc0);
  zc->all_gather(dx.data(), out.data(), x.size() * 4);
  zc->reduce_scatter_add(dx.as<float>(), acc.as<float>(), x.size());
  ctx.synchronize();
  EXPECT_EQ(out.to_host<float>(x.size()), x);
  std::vector<float> want = acc0;
  for (size_t i = 0; i < want.size(); ++i) want[i] += x[i];
  EXPECT_EQ(acc.to_host<float>(x.size()), want);
  EXPECT_EQ(zc->sum(2.5), 2.5);
}

// train.max_memory: a cap below what the model plans is refused before anything is allocated,
// with the plan's numbers.
TEST(Zero3Gpu, MaxMemoryRefusesAModelOverTheCap) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  const Model f = fixture("mha_untied");
  const auto src = memory_source(f.w);
  cuda::Context ctx;
  GpuModelOptions o{2, 24, cuda::Storage::BF16, true};
  o.full = true;
  const size_t need = LlamaGpu::plan(f.cfg, nullptr, o, ctx.sm_version()).device_total();
  o.memory_cap = need - 1;
  testing::expect_error([&] { LlamaGpu m(ctx, f.cfg, src.get(), nullptr, o); },
                        "train.max_memory: the model needs");
  o.memory_cap = need;
  EXPECT_NO_THROW(LlamaGpu(ctx, f.cfg, src.get(), nullptr, o));
}

}  // namespace
}  // namespace ftune

// fp16 dynamic loss scaling on the GPU (PyTorch GradScaler's rules): a step whose gradients
// overflow is skipped, the scale halves, and the run ends with the weights of a run that never saw
// that batch. The overflow is injected into the gradients of exactly one step, through the
// gradient sum that data parallelism runs (a communicator that writes an infinity). Skipped without
// a GPU.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <filesystem>
#include <limits>

#include "../test_util.h"
#include "core/rng.h"
#include "dist/communicator.h"
#include "io/checkpoint.h"
#include "ops/cuda/context.h"
#include "params/param_table.h"
#include "train/backend.h"

namespace ftune {
namespace {

namespace fs = std::filesystem;

// One rank whose all-reduce leaves the data as it is, or, when armed, makes its first element +inf.
class OverflowComm final : public dist::Communicator {
 public:
  bool armed = false;
  int rank() const override { return 0; }
  int world() const override { return 1; }
  void all_reduce_sum(float* d, size_t n) override {
    if (armed && n) d[0] = std::numeric_limits<float>::infinity();
  }
  void all_reduce_sum(double*, size_t) override {}
  void reduce_scatter_sum(const float* in, float* out, const std::vector<size_t>& c) override {
    std::copy(in, in + c[0], out);
  }
  void all_gather(const float* in, float* out, const std::vector<size_t>& c) override { std::copy(in, in + c[0], out); }
  void all_gather_bytes(const void* in, void* out, const std::vector<size_t>& b) override {
    std::copy_n(static_cast<const char*>(in), b[0], static_cast<char*>(out));
  }
  void broadcast(void*, size_t, int) override {}
  void send(const void*, size_t, int) override {}
  void recv(void*, size_t, int) override {}
  void send_recv(const void*, size_t, void*, size_t, int) override {}
  void barrier() override {}
};

Batch random_batch(int64_t vocab, uint64_t seed) {
  Rng rng(seed, 3);
  std::vector<std::vector<int32_t>> ids(2, std::vector<int32_t>(20));
  for (auto& row : ids)
    for (auto& t : row) t = static_cast<int32_t>(rng.next_u64() % static_cast<uint64_t>(vocab));
  std::vector<const std::vector<int32_t>*> p{&ids[0], &ids[1]};
  return make_batch(p, p, 0);
}

TEST(LossScalingGpu, AnOverflowedStepIsSkippedAndLeavesNoTrace) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  const fs::path dir = fs::path(FTUNE_SOURCE_DIR) / "tests/fixtures/hf/mha_untied/model";
  const LlamaConfig cfg = load_llama_config(dir.string());
  const CheckpointReader ckpt(dir.string());
  BackendOptions o;
  o.model.max_batch = 2, o.model.max_seq = 20;
  o.plan.method = Method::Full, o.plan.device = Device::Cuda, o.plan.precision = Precision::Fp16;
  o.plan.adamw = {0.9, 0.999, 1e-8, 0.01};
  const Batch b1 = random_batch(cfg.vocab_size, 1), b2 = random_batch(cfg.vocab_size, 2),
              b3 = random_batch(cfg.vocab_size, 3);
  auto run = [&](const std::vector<const Batch*>& batches, int inject_at) {
    auto backend = make_backend(cfg, ckpt, LoraParams{}, o);
    OverflowComm comm;
    std::vector<StepResult> results;
    for (size_t i = 0; i < batches.size(); ++i) {
      backend->forward_backward(*batches[i], 1.0f / static_cast<float>(batches[i]->count_targets()), 0);
      comm.armed = static_cast<int>(i) == inject_at;
      backend->all_reduce_gradients(comm);
      results.push_back(backend->step(1e-3, 1.0));
    }
    LlamaWeights w;
    backend->read_weights(w);
    const ParamTable t = ParamTable::full(cfg);
    std::vector<float> flat(static_cast<size_t>(t.trainable_numel()));
    gather_trainable(t, w, flat.data());
    return std::make_tuple(results, flat, backend->save_state());
  };
  const auto [ra, wa, sa] = run({&b1, &b2, &b3}, 1);
  const auto [rb, wb, sb] = run({&b1, &b3}, -1);
  ASSERT_EQ(ra.size(), 3u);
  EXPECT_FALSE(ra[0].skipped);
  EXPECT_TRUE(ra[1].skipped);  // exactly the injected step
  EXPECT_FALSE(std::isfinite(ra[1].grad_norm));
  EXPECT_FALSE(ra[2].skipped);
  EXPECT_EQ(sa.int_of("scaler.skipped"), 1);
  EXPECT_EQ(std::bit_cast<double>(sa.int_of("scaler.scale_bits")), 32768.0);  // 2^16 halved
  EXPECT_EQ(std::bit_cast<double>(sb.int_of("scaler.scale_bits")), 65536.0);
  EXPECT_EQ(sa.int_of("gpu.steps"), sb.int_of("gpu.steps"));  // AdamW's step count skipped it too
  // The third step's gradients carry 2^15 instead of 2^16: a power of two, exact in binary except
  // where an fp16 gradient falls into the subnormals; measured bit for bit, bounded at 1e-6.
  EXPECT_NEAR(ra[2].grad_norm, rb[1].grad_norm, 1e-6 * rb[1].grad_norm);
  EXPECT_LT(testing::rel_err(wa, wb), 1e-6);
  std::printf("[ measured ] skipped step: weights rel diff %.3g to the run without that batch (norm %.6g vs %.6g)\n",
              testing::rel_err(wa, wb), ra[2].grad_norm, rb[1].grad_norm);
}

}  // namespace
}  // namespace ftune

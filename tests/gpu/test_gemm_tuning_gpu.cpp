// GEMM tuning (Context::set_gemm_tuning, ops/cuda/gemm.cu): while a large problem's first calls run
// cuBLASLt's candidate algorithms in turn, every call still computes the product asked for - a
// 16-bit output, an fp32 output, and an fp32 accumulation in place called many times over - within
// the rounding of a different summation order of the heuristic's first choice (the same problem on a
// Context that does not tune); once the candidates are timed, the plan stops tuning; small problems,
// and every problem with tuning off, are never tuned. Skipped without a GPU.
#include <gtest/gtest.h>

#include <cstdio>
#include <vector>

#include "../test_util.h"
#include "ops/cuda/context.h"
#include "ops/cuda/gemm.h"

namespace ftune {
namespace {

using testing::rel_err;
constexpr cuda::Storage BF = cuda::Storage::BF16, F32 = cuda::Storage::F32;

std::vector<float> randn(size_t n, uint64_t seed, float scale) {  // N(0, scale^2)
  std::vector<float> v = testing::randn(n, seed);
  for (float& x : v) x *= scale;
  return v;
}

// The problems of a projection: y[m, n] = x[m, k] W^T with W [n, k] (16-bit out), and the input
// gradient dx[m, k] (fp32) = dy[m, n] W, once written and once accumulated in place `calls` times.
struct Results {
  std::vector<float> y, dx, acc;
};

Results run(bool tune, int64_t m, int64_t n, int64_t k, int calls, cuda::GemmTuning* state) {
  cuda::Context ctx;
  ctx.set_gemm_tuning(tune);
  const auto x = cuda::DeviceBuffer::from(testing::to_bf16(randn(static_cast<size_t>(m * k), 1, 1.0f)));
  const auto w = cuda::DeviceBuffer::from(testing::to_bf16(randn(static_cast<size_t>(n * k), 2, 0.05f)));
  const auto dy = cuda::DeviceBuffer::from(testing::to_bf16(randn(static_cast<size_t>(m * n), 3, 1.0f)));
  const std::vector<float> acc0 = randn(static_cast<size_t>(m * k), 4, 1.0f);
  cuda::DeviceBuffer y(static_cast<size_t>(m * n) * 2), dx(static_cast<size_t>(m * k) * 4);
  auto acc = cuda::DeviceBuffer::from(acc0);
  for (int i = 0; i < calls; ++i) {
    cuda::gemm(ctx, m, n, k, 1.0f, {x.data(), BF, false}, {w.data(), BF, true}, 0.0f, nullptr, y.data(), BF);
    cuda::gemm(ctx, m, k, n, 1.0f, {dy.data(), BF, false}, {w.data(), BF, false}, 0.0f, nullptr, dx.data(), F32);
    cuda::gemm(ctx, m, k, n, 1.0f, {dy.data(), BF, false}, {w.data(), BF, false}, 1.0f, acc.data(), F32);
    if (i == calls / 2) ctx.synchronize();  // the timed calls so far read back at the next ones
  }
  ctx.synchronize();
  // A small problem: never tuned.
  cuda::DeviceBuffer small(64 * 64 * 4);
  cuda::gemm(ctx, 64, 64, 64, 1.0f, {x.data(), BF, false}, {w.data(), BF, true}, 0.0f, nullptr, small.data(), F32);
  ctx.synchronize();
  *state = cuda::gemm_tuning_state(ctx);
  return {testing::from_bf16(y.to_host<uint16_t>(static_cast<size_t>(m * n))), dx.to_host<float>(static_cast<size_t>(m * k)),
          acc.to_host<float>(static_cast<size_t>(m * k))};
}

TEST(GemmTuning, EveryTunedCallComputesTheProductAndTuningEnds) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  // 2 m n k = 3.4e10 flop: above the tuning threshold (1e10); 8 candidates x 3 samples each take
  // 24 calls, so 40 calls with a synchronisation halfway finish the timing.
  const int64_t m = 2048, n = 2048, k = 4096;
  const int calls = 40;
  cuda::GemmTuning tuned{}, plain{};
  const Results a = run(true, m, n, k, calls, &tuned);
  const Results b = run(false, m, n, k, calls, &plain);
  const double ey = rel_err(a.y, b.y), edx = rel_err(a.dx, b.dx), eacc = rel_err(a.acc, b.acc);
  std::printf("[ measured ] tuned vs first choice: y (bf16) %.2e, dx (fp32) %.2e, %d in-place accumulations %.2e; "
              "plans %d, tuned %d, still tuning %d\n",
              ey, edx, calls, eacc, tuned.plans, tuned.tuned, tuned.tuning);
  // bf16 out: the fp32 sums differ only in order (~1e-6 relative), so rounding to bf16 flips the
  // last bit of a few elements: well below bf16's 2^-9 rms rounding error.
  EXPECT_LT(ey, 2e-3);
  // fp32 out, 4096-term sums of bf16 products in a different order: ~sqrt(4096) x 2^-24 at worst.
  EXPECT_LT(edx, 1e-5);
  // An extra or a lost accumulation would be off by 1/40 of the sum; a candidate run twice on the
  // same call by 1/40 too: far above the order-only bound.
  EXPECT_LT(eacc, 1e-5);
  EXPECT_EQ(plain.tuned, 0);
  EXPECT_EQ(plain.tuning, 0);
  EXPECT_EQ(tuned.plans, 4);  // y, dx, acc and the small problem
  EXPECT_LE(tuned.tuned, 3);  // the three large ones, where the heuristic offers more than one
  EXPECT_EQ(tuned.tuning, 0);
}

}  // namespace
}  // namespace ftune

// RMSNorm CUDA kernels against their CPU twins on random inputs; skipped without a GPU.
#include <gtest/gtest.h>

#include <cmath>

#include "core/rng.h"
#include "../test_util.h"
#include "ops/cpu/rmsnorm.h"
#include "ops/cuda/context.h"
#include "ops/cuda/rmsnorm.h"

namespace ftune {
namespace {

using testing::rel_err;

std::vector<float> randn(size_t n, uint64_t seed, float mean = 0.0f) {
  Rng r(seed);
  std::vector<float> v(n);
  for (float& x : v) x = mean + r.normal();
  return v;
}

TEST(CudaRmsNorm, MatchesCpuForwardAndBackward) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  cuda::Context ctx;
  // Odd sizes on purpose: rows not a multiple of anything, dims below and above the block size.
  for (auto [rows, dim] : {std::pair<int64_t, int64_t>{3, 7}, {17, 256}, {33, 1000}, {5, 4099}}) {
    const auto x = randn(rows * dim, 1 + dim), w = randn(dim, 2 + dim, 1.0f), dy = randn(rows * dim, 3 + dim);
    std::vector<float> y(rows * dim), rstd(rows), dx = randn(rows * dim, 4 + dim);
    std::vector<float> dx_gpu_init = dx;
    cpu::rmsnorm_forward(x.data(), w.data(), y.data(), rstd.data(), rows, dim, 1e-5f);
    cpu::rmsnorm_backward(dy.data(), x.data(), w.data(), rstd.data(), dx.data(), rows, dim);

    auto dxb = cuda::DeviceBuffer::from(x), dwb = cuda::DeviceBuffer::from(w), ddy = cuda::DeviceBuffer::from(dy);
    auto ddx = cuda::DeviceBuffer::from(dx_gpu_init);
    cuda::DeviceBuffer dyb(y.size() * 4), drstd(rows * 4);
    cuda::rmsnorm_forward(ctx, dxb.as<float>(), dwb.as<float>(), dyb.as<float>(), drstd.as<float>(), rows, dim, 1e-5f);
    cuda::rmsnorm_backward(ctx, ddy.as<float>(), dxb.as<float>(), dwb.as<float>(), drstd.as<float>(), ddx.as<float>(),
                           rows, dim);
    ctx.synchronize();
    // fp32 on both sides; only the summation order differs: 1e-5 relative.
    EXPECT_LT(rel_err(dyb.to_host<float>(y.size()), y), 1e-5) << rows << "x" << dim;
    EXPECT_LT(rel_err(drstd.to_host<float>(rows), rstd), 1e-5) << rows << "x" << dim;
    EXPECT_LT(rel_err(ddx.to_host<float>(dx.size()), dx), 1e-5) << rows << "x" << dim;
  }
}

}  // namespace
}  // namespace ftune

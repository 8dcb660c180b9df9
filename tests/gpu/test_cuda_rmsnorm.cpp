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

using testing::randn;

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
    cuda::rmsnorm_forward(ctx, cuda::Storage::F32, dxb.data(), dwb.as<float>(), dyb.data(), drstd.as<float>(), rows, dim,
                          1e-5f);
    cuda::rmsnorm_backward(ctx, cuda::Storage::F32, ddy.as<float>(), dxb.data(), dwb.as<float>(), drstd.as<float>(),
                           ddx.as<float>(), rows, dim);
    ctx.synchronize();
    // fp32 on both sides; only the summation order differs: 1e-5 relative.
    EXPECT_LT(rel_err(dyb.to_host<float>(y.size()), y), 1e-5) << rows << "x" << dim;
    EXPECT_LT(rel_err(drstd.to_host<float>(rows), rstd), 1e-5) << rows << "x" << dim;
    EXPECT_LT(rel_err(ddx.to_host<float>(dx.size()), dx), 1e-5) << rows << "x" << dim;
  }
}

TEST(CudaRmsNorm, Bf16StorageMatchesCpu) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  cuda::Context ctx;
  for (auto [rows, dim] : {std::pair<int64_t, int64_t>{5, 64}, {19, 1000}, {8, 4096}}) {
    // The CPU twin sees the bf16-rounded input, so only the output rounding differs.
    const auto x = testing::from_bf16(testing::to_bf16(randn(rows * dim, 11 + dim)));
    const auto w = randn(dim, 12 + dim, 1.0f), dy = randn(rows * dim, 13 + dim);
    std::vector<float> y(rows * dim), rstd(rows), dx = randn(rows * dim, 14 + dim);
    auto ddx = cuda::DeviceBuffer::from(dx);
    cpu::rmsnorm_forward(x.data(), w.data(), y.data(), rstd.data(), rows, dim, 1e-5f);
    cpu::rmsnorm_backward(dy.data(), x.data(), w.data(), rstd.data(), dx.data(), rows, dim);
    auto dxb = cuda::DeviceBuffer::from(testing::to_bf16(x)), dwb = cuda::DeviceBuffer::from(w),
         ddy = cuda::DeviceBuffer::from(dy);
    cuda::DeviceBuffer dyb(y.size() * 2), drstd(rows * 4);
    cuda::rmsnorm_forward(ctx, cuda::Storage::BF16, dxb.data(), dwb.as<float>(), dyb.data(), drstd.as<float>(), rows,
                          dim, 1e-5f);
    cuda::rmsnorm_backward(ctx, cuda::Storage::BF16, ddy.as<float>(), dxb.data(), dwb.as<float>(), drstd.as<float>(),
                           ddx.as<float>(), rows, dim);
    ctx.synchronize();
    // y is rounded to bf16 once (2^-9 relative at most, ~2e-3 rms); rstd and dx stay fp32.
    EXPECT_LT(rel_err(testing::from_bf16(dyb.to_host<uint16_t>(y.size())), y), 4e-3) << rows << "x" << dim;
    EXPECT_LT(rel_err(drstd.to_host<float>(rows), rstd), 1e-5) << rows << "x" << dim;
    EXPECT_LT(rel_err(ddx.to_host<float>(dx.size()), dx), 1e-5) << rows << "x" << dim;
  }
}

}  // namespace
}  // namespace ftune

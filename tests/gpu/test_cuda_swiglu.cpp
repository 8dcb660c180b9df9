// SwiGLU CUDA kernels against the CPU twin, fp32 and bf16 storage; skipped without a GPU.
#include <gtest/gtest.h>

#include <cmath>

#include "core/dtype.h"
#include "core/rng.h"
#include "../test_util.h"
#include "ops/cpu/swiglu.h"
#include "ops/cuda/context.h"
#include "ops/cuda/swiglu.h"

namespace ftune {
namespace {

using testing::rel_err;
using testing::to_bf16;
using testing::from_bf16;

std::vector<float> randn(size_t n, uint64_t seed) {
  Rng r(seed);
  std::vector<float> v(n);
  for (float& x : v) x = 2.0f * r.normal();
  return v;
}

TEST(CudaSwiglu, MatchesCpuInF32AndBf16) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  cuda::Context ctx;
  for (int64_t n : {1, 7, 1000, 1 << 20, 3 * (1 << 20) + 5}) {
    auto g = randn(n, n), u = randn(n, n + 1), d = randn(n, n + 2);
    // Reference on the bf16-rounded inputs, so only the kernel's own rounding is measured.
    for (auto* v : {&g, &u, &d})
      for (float& x : *v) x = bf16_to_f32(f32_to_bf16(x));
    std::vector<float> out(n), dg(n), du(n);
    cpu::swiglu_forward(g.data(), u.data(), out.data(), n);
    cpu::swiglu_backward(g.data(), u.data(), d.data(), dg.data(), du.data(), n);
    {
      auto bg = cuda::DeviceBuffer::from(g), bu = cuda::DeviceBuffer::from(u), bd = cuda::DeviceBuffer::from(d);
      cuda::DeviceBuffer bo(n * 4), bdg(n * 4), bdu(n * 4);
      cuda::swiglu_forward(ctx, cuda::Storage::F32, bg.data(), bu.data(), bo.data(), n);
      cuda::swiglu_backward(ctx, cuda::Storage::F32, bg.data(), bu.data(), bd.data(), bdg.data(), bdu.data(), n);
      ctx.synchronize();
      // fp32: __expf differs from std::exp by a few ulp.
      EXPECT_LT(rel_err(bo.to_host<float>(n), out), 1e-5) << n;
      EXPECT_LT(rel_err(bdg.to_host<float>(n), dg), 1e-5) << n;
      EXPECT_LT(rel_err(bdu.to_host<float>(n), du), 1e-5) << n;
    }
    {
      auto bg = cuda::DeviceBuffer::from(to_bf16(g)), bu = cuda::DeviceBuffer::from(to_bf16(u)),
           bd = cuda::DeviceBuffer::from(to_bf16(d));
      cuda::DeviceBuffer bo(n * 2), bdg(n * 2), bdu(n * 2);
      cuda::swiglu_forward(ctx, cuda::Storage::BF16, bg.data(), bu.data(), bo.data(), n);
      cuda::swiglu_backward(ctx, cuda::Storage::BF16, bg.data(), bu.data(), bd.data(), bdg.data(), bdu.data(), n);
      ctx.synchronize();
      // bf16 output rounding: 2^-9 relative per element.
      EXPECT_LT(rel_err(from_bf16(bo.to_host<uint16_t>(n)), out), 4e-3) << n;
      EXPECT_LT(rel_err(from_bf16(bdg.to_host<uint16_t>(n)), dg), 4e-3) << n;
      EXPECT_LT(rel_err(from_bf16(bdu.to_host<uint16_t>(n)), du), 4e-3) << n;
    }
  }
}

}  // namespace
}  // namespace ftune

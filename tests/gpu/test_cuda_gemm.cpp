// cuBLASLt GEMM against the CPU GEMM: every transpose combination, odd shapes, bf16 and fp32
// operands, fp32 outputs and bf16 outputs of bf16 operands, and beta = 1 accumulation; skipped
// without a GPU.
#include <gtest/gtest.h>

#include "../test_util.h"
#include "core/dtype.h"
#include "core/rng.h"
#include "ops/cpu/matmul.h"
#include "ops/cuda/context.h"
#include "ops/cuda/gemm.h"

namespace ftune {
namespace {

using testing::rel_err;
using testing::to_bf16;

TEST(CudaGemm, MatchesCpuForEveryLayoutAndType) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  cuda::Context ctx;
  struct Shape {
    int64_t m, n, k;
  };
  for (Shape s : {Shape{1, 1, 1}, {37, 53, 67}, {256, 512, 1024}, {8, 4096, 16}}) {
    for (int t = 0; t < 4; ++t) {
      const bool ta = t & 1, tb = t & 2;
      Rng r(s.m * 1000 + s.n + s.k + t);
      std::vector<float> a(s.m * s.k), b(s.k * s.n), c0(s.m * s.n);
      for (auto* v : {&a, &b, &c0})
        for (float& x : *v) x = bf16_to_f32(f32_to_bf16(r.normal()));  // exactly representable in bf16
      for (bool bf16 : {false, true}) {
        for (float beta : {0.0f, 1.0f}) {
          std::vector<float> want = c0;
          cpu::gemm(ta, tb, s.m, s.n, s.k, 0.5f, a.data(), b.data(), beta, want.data());
          const cuda::Storage st = bf16 ? cuda::Storage::BF16 : cuda::Storage::F32;
          auto da = bf16 ? cuda::DeviceBuffer::from(to_bf16(a)) : cuda::DeviceBuffer::from(a);
          auto db = bf16 ? cuda::DeviceBuffer::from(to_bf16(b)) : cuda::DeviceBuffer::from(b);
          // fp32 output, then bf16 output.
          auto dc = cuda::DeviceBuffer::from(c0);
          cuda::gemm(ctx, s.m, s.n, s.k, 0.5f, {da.data(), st, ta}, {db.data(), st, tb}, beta, dc.data(),
                     cuda::Storage::F32);
          ctx.synchronize();
          // Exact bf16 inputs and fp32 accumulation: only the summation order differs (1e-5);
          // fp32 operands may run through TF32-free fp32 paths, same bound.
          EXPECT_LT(rel_err(dc.to_host<float>(want.size()), want), 1e-5)
              << s.m << "x" << s.n << "x" << s.k << " ta " << ta << " tb " << tb << " bf16 " << bf16;
          if (!bf16) continue;  // bf16 output needs bf16 operands
          auto dc16 = cuda::DeviceBuffer::from(to_bf16(c0));
          cuda::gemm(ctx, s.m, s.n, s.k, 0.5f, {da.data(), st, ta}, {db.data(), st, tb}, beta, dc16.data(),
                     cuda::Storage::BF16);
          ctx.synchronize();
          const auto h16 = dc16.to_host<uint16_t>(want.size());
          std::vector<float> got16(h16.size());
          for (size_t i = 0; i < h16.size(); ++i) got16[i] = bf16_to_f32(h16[i]);
          // One bf16 rounding of the result (2^-9 relative), plus beta*C read from bf16 (exact here).
          EXPECT_LT(rel_err(got16, want), 4e-3) << s.m << "x" << s.n << "x" << s.k << " bf16 out";
        }
      }
    }
  }
}

// D = A B + C with C and D distinct (the residual add fused into the epilogue): C is read, not
// written, and D gets the sum.
TEST(CudaGemm, SeparateInputAndOutputMatrices) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  cuda::Context ctx;
  const int64_t m = 45, n = 96, k = 80;
  Rng r(5);
  std::vector<float> a(m * k), b(n * k), c(m * n);
  for (auto* v : {&a, &b, &c})
    for (float& x : *v) x = bf16_to_f32(f32_to_bf16(r.normal()));
  std::vector<float> want = c;
  cpu::gemm(false, true, m, n, k, 1.0f, a.data(), b.data(), 1.0f, want.data());
  auto da = cuda::DeviceBuffer::from(to_bf16(a)), db = cuda::DeviceBuffer::from(to_bf16(b)),
       dc = cuda::DeviceBuffer::from(to_bf16(c));
  cuda::DeviceBuffer dd(m * n * 2);
  const auto bf = cuda::Storage::BF16;
  cuda::gemm(ctx, m, n, k, 1.0f, {da.data(), bf, false}, {db.data(), bf, true}, 1.0f, dc.data(), dd.data(), bf);
  ctx.synchronize();
  EXPECT_LT(rel_err(testing::from_bf16(dd.to_host<uint16_t>(m * n)), want), 4e-3);  // one bf16 rounding
  EXPECT_EQ(testing::from_bf16(dc.to_host<uint16_t>(m * n)), c);                     // C untouched
}

}  // namespace
}  // namespace ftune

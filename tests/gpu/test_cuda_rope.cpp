// RoPE CUDA kernels against the CPU twin (llama3-scaled frequencies, GQA head counts, odd token
// counts), fp32 and bf16 storage; skipped without a GPU.
#include <gtest/gtest.h>

#include <cmath>

#include "core/dtype.h"
#include "core/rng.h"
#include "../test_util.h"
#include "model/rope.h"
#include "ops/cpu/rope.h"
#include "ops/cuda/context.h"
#include "ops/cuda/rope.h"

namespace ftune {
namespace {

using testing::rel_err;

TEST(CudaRope, MatchesCpuForwardAndBackward) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  cuda::Context ctx;
  LlamaConfig c;
  c.head_dim = 64;
  c.rope_theta = 500000;
  c.rope_scaling.type = "llama3";
  c.rope_scaling.factor = 8;
  c.rope_scaling.original_max_position_embeddings = 512;
  const auto inv = rope_inv_freq(c);
  for (auto [n, heads] : {std::pair<int64_t, int64_t>{1, 1}, {37, 8}, {4099, 32}}) {
    const int64_t d = c.head_dim;
    Rng r(n);
    std::vector<int32_t> pos(n);
    for (auto& p : pos) p = static_cast<int32_t>(r.below(8192));  // packed rows: arbitrary positions
    std::vector<float> cos, sin;
    rope_tables(inv, pos.data(), n, cos, sin);
    std::vector<float> x(n * heads * d);
    for (float& v : x) v = bf16_to_f32(f32_to_bf16(r.normal()));
    auto fwd = x, bwd = x;
    cpu::rope_forward(fwd.data(), cos.data(), sin.data(), n, heads, d);
    cpu::rope_backward(bwd.data(), cos.data(), sin.data(), n, heads, d);
    auto dcos = cuda::DeviceBuffer::from(cos), dsin = cuda::DeviceBuffer::from(sin);
    for (bool backward : {false, true}) {
      const auto& want = backward ? bwd : fwd;
      auto op = backward ? cuda::rope_backward : cuda::rope_forward;
      auto b32 = cuda::DeviceBuffer::from(x);
      op(ctx, cuda::Storage::F32, b32.data(), dcos.as<float>(), dsin.as<float>(), n, heads, d);
      std::vector<uint16_t> xb(x.size());
      for (size_t i = 0; i < x.size(); ++i) xb[i] = f32_to_bf16(x[i]);
      auto b16 = cuda::DeviceBuffer::from(xb);
      op(ctx, cuda::Storage::BF16, b16.data(), dcos.as<float>(), dsin.as<float>(), n, heads, d);
      ctx.synchronize();
      // fp32: identical arithmetic up to fused multiply-add contraction.
      EXPECT_LT(rel_err(b32.to_host<float>(x.size()), want), 1e-6) << n << "x" << heads;
      const auto got16 = b16.to_host<uint16_t>(x.size());
      std::vector<float> g(x.size());
      for (size_t i = 0; i < g.size(); ++i) g[i] = bf16_to_f32(got16[i]);
      EXPECT_LT(rel_err(g, want), 4e-3) << n << "x" << heads << " bf16";  // one bf16 rounding
    }
  }
}

}  // namespace
}  // namespace ftune

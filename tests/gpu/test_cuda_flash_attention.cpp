// Tensor-core flash attention against the reference GPU attention (attention.h, run in fp32
// storage on the same bf16-rounded values): GQA, packed documents, lengths that are not a
// multiple of any block, forward and backward; plus the Llama-2-7B shape once, with its speed
// printed (never asserted). Skipped without a GPU or where the flash kernels do not run.
#include <cuda_runtime.h>
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>

#include "../test_util.h"
#include "core/dtype.h"
#include "core/rng.h"
#include "ops/cuda/attention.h"
#include "ops/cuda/context.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_buffer.h"
#include "ops/cuda/flash_attention.h"

namespace ftune {
namespace {

using testing::from_bf16;
using testing::rel_err;
using testing::to_bf16;

struct Case {
  int64_t batch, seq, heads, kv, d;
  int max_doc;  // packed documents of 1..max_doc tokens; 0: one document per row; -n: ids drawn from 0..n-1
};

struct Errors {
  double out, lse, dq, dk, dv;
  bool finite;
};

std::vector<float> bf16_back(const cuda::DeviceBuffer& b, size_t n) { return from_bf16(b.to_host<uint16_t>(n)); }

bool all_finite(const std::vector<float>& v) {
  for (float x : v)
    if (!std::isfinite(x)) return false;
  return true;
}

// Runs the reference (fp32 storage) and the flash kernels (bf16) on the same bf16-rounded inputs.
Errors compare(const cuda::Context& ctx, const Case& c) {
  const int64_t N = c.batch * c.seq;
  Rng r(static_cast<uint64_t>(c.seq * 131 + c.heads * 7 + c.d));
  auto randv = [&](int64_t n) {
    std::vector<float> v(n);
    for (float& x : v) x = bf16_to_f32(f32_to_bf16(r.normal()));
    return v;
  };
  const auto q = randv(N * c.heads * c.d), k = randv(N * c.kv * c.d), v = randv(N * c.kv * c.d),
             dout = randv(N * c.heads * c.d);
  std::vector<int32_t> doc;  // ids restart per row and never decrease, as the packer writes them
  if (c.max_doc < 0)  // not what the packer writes, but the kernels must stay exact
    for (int64_t i = 0; i < N; ++i) doc.push_back(static_cast<int32_t>(r.below(-c.max_doc)));
  if (c.max_doc > 0)
    for (int64_t b = 0; b < c.batch; ++b)
      for (int64_t t = 0, id = 0, left = 0; t < c.seq; ++t, --left) {
        if (left == 0) left = 1 + static_cast<int64_t>(r.below(c.max_doc)), ++id;
        doc.push_back(static_cast<int32_t>(id));
      }
  auto ddoc = cuda::DeviceBuffer::from(doc.empty() ? std::vector<int32_t>{0} : doc);
  const int32_t* dp = doc.empty() ? nullptr : ddoc.as<int32_t>();
  const cuda::AttnShape a{c.batch, c.seq, c.heads, c.kv, c.d, 1.0f / std::sqrt(static_cast<float>(c.d))};
  const size_t nq = q.size(), nk = k.size(), nl = static_cast<size_t>(c.batch * c.heads * c.seq);

  // Reference in fp32 storage.
  std::vector<float> ref_out, ref_lse, ref_dq, ref_dk, ref_dv;
  {
    auto bq = cuda::DeviceBuffer::from(q), bk = cuda::DeviceBuffer::from(k), bv = cuda::DeviceBuffer::from(v),
         bdo = cuda::DeviceBuffer::from(dout);
    cuda::DeviceBuffer bo(nq * 4), bdq(nq * 4), bdk(nk * 4), bdv(nk * 4), lse(nl * 4), delta(nl * 4);
    cuda::attention_forward(ctx, cuda::Storage::F32, a, bq.data(), bk.data(), bv.data(), dp, bo.data(), lse.as<float>());
    cuda::attention_backward(ctx, cuda::Storage::F32, a, bq.data(), bk.data(), bv.data(), dp, bo.data(),
                             lse.as<float>(), bdo.data(), bdq.data(), bdk.data(), bdv.data(), delta.as<float>());
    ctx.synchronize();
    ref_out = bo.to_host<float>(nq), ref_lse = lse.to_host<float>(nl);
    ref_dq = bdq.to_host<float>(nq), ref_dk = bdk.to_host<float>(nk), ref_dv = bdv.to_host<float>(nk);
  }

  auto bq = cuda::DeviceBuffer::from(to_bf16(q)), bk = cuda::DeviceBuffer::from(to_bf16(k)),
       bv = cuda::DeviceBuffer::from(to_bf16(v)), bdo = cuda::DeviceBuffer::from(to_bf16(dout));
  cuda::DeviceBuffer bo(nq * 2), bdq(nq * 2), bdk(nk * 2), bdv(nk * 2), lse(nl * 4), delta(nl * 4),
      scratch(static_cast<size_t>(cuda::flash_attention_scratch_floats(a)) * 4);
  cuda::flash_attention_forward(ctx, a, bq.data(), bk.data(), bv.data(), dp, bo.data(), lse.as<float>());
  cuda::flash_attention_backward(ctx, a, bq.data(), bk.data(), bv.data(), dp, bo.data(), lse.as<float>(), bdo.data(),
                                 bdq.data(), bdk.data(), bdv.data(), delta.as<float>(), scratch.as<float>());
  ctx.synchronize();
  const auto out = bf16_back(bo, nq), dq = bf16_back(bdq, nq), dk = bf16_back(bdk, nk), dv = bf16_back(bdv, nk);
  const auto l = lse.to_host<float>(nl);
  Errors e{rel_err(out, ref_out), rel_err(l, ref_lse), rel_err(dq, ref_dq), rel_err(dk, ref_dk), rel_err(dv, ref_dv),
           all_finite(out) && all_finite(l) && all_finite(dq) && all_finite(dk) && all_finite(dv)};
  std::printf("flash B%lld T%lld h%lld/%lld d%lld docs<=%d: out %.2e lse %.2e dq %.2e dk %.2e dv %.2e\n",
              static_cast<long long>(c.batch), static_cast<long long>(c.seq), static_cast<long long>(c.heads),
              static_cast<long long>(c.kv), static_cast<long long>(c.d), c.max_doc, e.out, e.lse, e.dq, e.dk, e.dv);
  return e;
}

// Tolerances. lse: scores are fp32 sums of exact bf16 products in both kernels and the flash row
// sum is fp32, so only summation order and ex2.approx differ (~1e-6). out: P is rounded to bf16
// for the P.V mma (2^-9 relative per weight) and out to bf16 once: a few 1e-3. dq/dk/dv: P and
// dS rounded to bf16 for four mmas, and the backward reads the bf16 out for delta = dO.O, where
// dP - delta cancels: ~1e-2 at worst.
void expect_close(const Errors& e, const Case& c) {
  const std::string what = fmt::format("T{} h{}/{} d{} docs<={}", c.seq, c.heads, c.kv, c.d, c.max_doc);
  EXPECT_TRUE(e.finite) << what;
  EXPECT_LT(e.out, 1e-2) << "out " << what;
  EXPECT_LT(e.lse, 1e-4) << "lse " << what;
  EXPECT_LT(e.dq, 2e-2) << "dq " << what;
  EXPECT_LT(e.dk, 2e-2) << "dk " << what;
  EXPECT_LT(e.dv, 2e-2) << "dv " << what;
}

bool usable(const cuda::Context& ctx, const Case& c) {
  return cuda::flash_attention_supported(ctx, cuda::AttnShape{c.batch, c.seq, c.heads, c.kv, c.d, 1.0f});
}

TEST(CudaFlashAttention, MatchesReference) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  cuda::Context ctx;
  if (!usable(ctx, Case{1, 1, 1, 1, 128, 0})) GTEST_SKIP() << "flash attention not supported on " << ctx.name();
  for (const Case& c : {Case{2, 256, 8, 2, 64, 0}, Case{1, 1000, 4, 4, 128, 300}, Case{2, 37, 4, 1, 128, 0},
                        Case{1, 1, 2, 2, 64, 0}, Case{2, 130, 8, 8, 64, 40}, Case{1, 300, 8, 2, 128, 60},
                        Case{3, 200, 4, 2, 64, 1}, Case{2, 300, 4, 2, 64, -3}, Case{1, 260, 4, 1, 128, -2}})
    expect_close(compare(ctx, c), c);
}

struct Event {
  cudaEvent_t e = nullptr;
  Event() { FT_CUDA(cudaEventCreate(&e)); }
  ~Event() { cudaEventDestroy(e); }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
};

// The Llama-2-7B training shape: checked once against the reference, then timed (printed only).
TEST(CudaFlashAttention, LlamaShapeAndSpeed) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  cuda::Context ctx;
  const Case c{4, 2048, 32, 32, 128, 0};
  if (!usable(ctx, c)) GTEST_SKIP() << "flash attention not supported on " << ctx.name();
  expect_close(compare(ctx, c), c);

  const cuda::AttnShape a{c.batch, c.seq, c.heads, c.kv, c.d, 1.0f / std::sqrt(128.0f)};
  const size_t nq = static_cast<size_t>(c.batch * c.seq * c.heads * c.d), nl = static_cast<size_t>(c.batch * c.heads * c.seq);
  std::vector<float> host(nq);
  Rng r(7);
  for (float& x : host) x = r.normal();
  auto bq = cuda::DeviceBuffer::from(to_bf16(host)), bk = cuda::DeviceBuffer::from(to_bf16(host)),
       bv = cuda::DeviceBuffer::from(to_bf16(host)), bdo = cuda::DeviceBuffer::from(to_bf16(host));
  cuda::DeviceBuffer bo(nq * 2), bdq(nq * 2), bdk(nq * 2), bdv(nq * 2), lse(nl * 4), delta(nl * 4),
      scratch(static_cast<size_t>(cuda::flash_attention_scratch_floats(a)) * 4);
  auto fwd = [&] { cuda::flash_attention_forward(ctx, a, bq.data(), bk.data(), bv.data(), nullptr, bo.data(), lse.as<float>()); };
  auto bwd = [&] {
    cuda::flash_attention_backward(ctx, a, bq.data(), bk.data(), bv.data(), nullptr, bo.data(), lse.as<float>(),
                                   bdo.data(), bdq.data(), bdk.data(), bdv.data(), delta.as<float>(), scratch.as<float>());
  };
  const double fwd_flops = 4.0 * c.batch * c.heads * c.seq * c.seq * c.d / 2, bwd_flops = 2.5 * fwd_flops;
  constexpr int kReps = 5;
  Event e0, e1, e2;
  fwd(), bwd();  // warm-up
  FT_CUDA(cudaEventRecord(e0.e, ctx.stream()));
  for (int i = 0; i < kReps; ++i) fwd();
  FT_CUDA(cudaEventRecord(e1.e, ctx.stream()));
  for (int i = 0; i < kReps; ++i) bwd();
  FT_CUDA(cudaEventRecord(e2.e, ctx.stream()));
  ctx.synchronize();
  float ms_f = 0, ms_b = 0;
  FT_CUDA(cudaEventElapsedTime(&ms_f, e0.e, e1.e));
  FT_CUDA(cudaEventElapsedTime(&ms_b, e1.e, e2.e));
  ms_f /= kReps, ms_b /= kReps;
  std::printf("flash B4 T2048 h32 d128 causal on %s: forward %.3f ms %.1f TFLOP/s, backward %.3f ms %.1f TFLOP/s\n",
              ctx.name().c_str(), ms_f, fwd_flops / (ms_f * 1e-3) / 1e12, ms_b, bwd_flops / (ms_b * 1e-3) / 1e12);
}

}  // namespace
}  // namespace ftune

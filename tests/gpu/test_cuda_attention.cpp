// GPU attention against the CPU twin: GQA, packed documents, odd lengths, forward and backward,
// fp32 and bf16 storage; skipped without a GPU.
#include <gtest/gtest.h>

#include <cmath>

#include "../test_util.h"
#include "core/dtype.h"
#include "core/rng.h"
#include "ops/cpu/attention.h"
#include "ops/cuda/attention.h"
#include "ops/cuda/context.h"

namespace ftune {
namespace {

using testing::rel_err;
using testing::to_bf16;

std::vector<float> back(const cuda::DeviceBuffer& b, size_t n, bool bf16) {
  if (!bf16) return b.to_host<float>(n);
  const auto raw = b.to_host<uint16_t>(n);
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = bf16_to_f32(raw[i]);
  return out;
}

TEST(CudaAttention, MatchesCpuForwardAndBackward) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  cuda::Context ctx;
  struct Case {
    int64_t batch, seq, heads, kv, d;
    bool packed;
  };
  for (Case c : {Case{1, 1, 1, 1, 32, false}, Case{2, 37, 8, 2, 64, false}, Case{2, 130, 4, 4, 128, true},
                 Case{1, 67, 8, 1, 64, true}, Case{2, 45, 4, 2, 16, true}, Case{1, 29, 2, 1, 80, false}}) {
    const int64_t N = c.batch * c.seq;
    Rng r(c.seq * 31 + c.heads);
    auto randv = [&](int64_t n) {
      std::vector<float> v(n);
      for (float& x : v) x = bf16_to_f32(f32_to_bf16(r.normal()));
      return v;
    };
    const auto q = randv(N * c.heads * c.d), k = randv(N * c.kv * c.d), v = randv(N * c.kv * c.d),
               dout = randv(N * c.heads * c.d);
    std::vector<int32_t> doc;
    if (c.packed)  // documents of 1..40 tokens, restarting ids per row
      for (int64_t b = 0; b < c.batch; ++b)
        for (int64_t t = 0, d = 0, left = 0; t < c.seq; ++t, --left) {
          if (left == 0) left = 1 + static_cast<int64_t>(r.below(40)), ++d;
          doc.push_back(static_cast<int32_t>(d));
        }
    const float scale = 1.0f / std::sqrt(static_cast<float>(c.d));
    cpu::AttnShape cs{c.batch, c.seq, c.heads, c.kv, c.d, scale};
    std::vector<float> probs(c.batch * c.heads * c.seq * c.seq), out(q.size()), dq(q.size()), dk(k.size()),
        dv(v.size());
    cpu::attention_forward(cs, q.data(), k.data(), v.data(), doc.empty() ? nullptr : doc.data(), probs.data(), out.data());
    cpu::attention_backward(cs, q.data(), k.data(), v.data(), probs.data(), dout.data(), dq.data(), dk.data(), dv.data());
    cuda::AttnShape gs{c.batch, c.seq, c.heads, c.kv, c.d, scale};
    auto ddoc = cuda::DeviceBuffer::from(doc.empty() ? std::vector<int32_t>{0} : doc);
    const int32_t* dp = doc.empty() ? nullptr : ddoc.as<int32_t>();
    for (bool bf16 : {false, true}) {
      const cuda::Storage s = bf16 ? cuda::Storage::BF16 : cuda::Storage::F32;
      auto up = [&](const std::vector<float>& x) { return bf16 ? cuda::DeviceBuffer::from(to_bf16(x)) : cuda::DeviceBuffer::from(x); };
      auto bq = up(q), bk = up(k), bv = up(v), bdo = up(dout);
      const size_t es = bf16 ? 2 : 4;
      cuda::DeviceBuffer bo(q.size() * es), bdq(q.size() * es), bdk(k.size() * es), bdv(v.size() * es),
          lse(c.batch * c.heads * c.seq * 4), delta(c.batch * c.heads * c.seq * 4);
      cuda::attention_forward(ctx, s, gs, bq.data(), bk.data(), bv.data(), dp, bo.data(), lse.as<float>());
      cuda::attention_backward(ctx, s, gs, bq.data(), bk.data(), bv.data(), dp, bo.data(), lse.as<float>(), bdo.data(),
                               bdq.data(), bdk.data(), bdv.data(), delta.as<float>());
      ctx.synchronize();
      // fp32: order of sums and __expf (~1e-6). bf16: outputs rounded once, and the backward
      // reads the bf16-rounded forward output for its row term: ~1e-2.
      const double tol = bf16 ? 1.5e-2 : 2e-5;
      const std::string what = std::to_string(c.seq) + "x" + std::to_string(c.heads) + "/" + std::to_string(c.kv) +
                               (bf16 ? " bf16" : " fp32");
      EXPECT_LT(rel_err(back(bo, out.size(), bf16), out), tol) << "out " << what;
      EXPECT_LT(rel_err(back(bdq, dq.size(), bf16), dq), tol) << "dq " << what;
      EXPECT_LT(rel_err(back(bdk, dk.size(), bf16), dk), tol) << "dk " << what;
      EXPECT_LT(rel_err(back(bdv, dv.size(), bf16), dv), tol) << "dv " << what;
    }
  }
}

}  // namespace
}  // namespace ftune

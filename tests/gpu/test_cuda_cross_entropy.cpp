// Chunked lm_head + cross-entropy on the GPU against the CPU twin: loss and d hidden, ignored
// rows, fp32 and bf16 storage, vocabularies of Llama 2 and Llama 3 size; skipped without a GPU.
#include <gtest/gtest.h>

#include "../test_util.h"
#include "core/dtype.h"
#include "core/rng.h"
#include "ops/cpu/cross_entropy.h"
#include "ops/cuda/context.h"
#include "ops/cuda/cross_entropy.h"

namespace ftune {
namespace {

using testing::rel_err;
using testing::to_bf16;

TEST(CudaCrossEntropy, MatchesCpu) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  cuda::Context ctx;
  for (auto [rows, dim, vocab] : {std::tuple<int64_t, int64_t, int64_t>{5, 64, 1000}, {67, 256, 32000}, {33, 128, 128256}}) {
    Rng r(rows + vocab);
    std::vector<float> h(rows * dim), w(vocab * dim);
    for (float& x : h) x = bf16_to_f32(f32_to_bf16(r.normal()));
    for (float& x : w) x = bf16_to_f32(f32_to_bf16(0.1f * r.normal()));
    std::vector<int32_t> target(rows);
    for (auto& t : target) t = r.below(5) == 0 ? -100 : static_cast<int32_t>(r.below(vocab));
    int64_t count = 0;
    for (auto t : target) count += t >= 0;
    const float scale = 1.0f / static_cast<float>(count);
    std::vector<float> dh_ref(rows * dim);
    const auto ref = cpu::lm_head_cross_entropy(h.data(), w.data(), target.data(), rows, dim, vocab, scale, dh_ref.data());
    auto dt = cuda::DeviceBuffer::from(target);
    for (bool bf16 : {false, true}) {
      const cuda::Storage s = bf16 ? cuda::Storage::BF16 : cuda::Storage::F32;
      auto dhid = bf16 ? cuda::DeviceBuffer::from(to_bf16(h)) : cuda::DeviceBuffer::from(h);
      auto dw = bf16 ? cuda::DeviceBuffer::from(to_bf16(w)) : cuda::DeviceBuffer::from(w);
      const int64_t chunk = 16;
      cuda::DeviceBuffer scratch(chunk * vocab * 4), loss(rows * 4), ddh(rows * dim * 4);
      cuda::lm_head_cross_entropy(ctx, s, dhid.data(), dw.data(), dt.as<int32_t>(), rows, dim, vocab, scale,
                                  loss.as<float>(), ddh.data(), scratch.data(), chunk);
      ctx.synchronize();
      double sum = 0;
      for (float l : loss.to_host<float>(rows)) sum += l;
      std::vector<float> dh(rows * dim);
      if (bf16) {
        const auto raw = ddh.to_host<uint16_t>(rows * dim);
        for (size_t i = 0; i < dh.size(); ++i) dh[i] = bf16_to_f32(raw[i]);
      } else {
        dh = ddh.to_host<float>(rows * dim);
      }
      // fp32: summation order only. bf16: logits and their gradients are rounded to bf16 once
      // each (2^-9), which moves the loss by ~1e-3 relative and d hidden by ~1e-2.
      EXPECT_NEAR(sum, ref.loss_sum, (bf16 ? 2e-3 : 1e-5) * ref.loss_sum) << rows << "x" << vocab;
      EXPECT_LT(rel_err(dh, dh_ref), bf16 ? 1.5e-2 : 1e-4) << rows << "x" << vocab;
    }
  }
}

}  // namespace
}  // namespace ftune

// The weight-gradient CUDA kernels of full fine-tuning (embedding scatter-add, RMSNorm weight
// gradient) against their CPU twins on random inputs, run to run bit-identical, accumulating onto
// what the gradient buffers held; skipped without a GPU (the host-side index test runs anyway).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "../test_util.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/rng.h"
#include "ops/cpu/embedding.h"
#include "ops/cpu/rmsnorm.h"
#include "ops/cuda/context.h"
#include "ops/cuda/embedding.h"
#include "ops/cuda/rmsnorm.h"

namespace ftune {
namespace {

using testing::rel_err;

using testing::randn;

bool bit_identical(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

bool all_finite(const std::vector<float>& v) {
  for (float x : v)
    if (!std::isfinite(x)) return false;
  return true;
}

std::vector<float> nans(size_t n) { return std::vector<float>(n, std::numeric_limits<float>::quiet_NaN()); }

// ---- embedding backward ----

TEST(CudaEmbeddingBackward, IndexGroupsPositionsById) {  // host code only: runs without a GPU too
  const std::vector<int32_t> ids = {3, 1, 3, 0, 1, 3, 7};
  const auto ix = cuda::embedding_grad_index(ids.data(), static_cast<int64_t>(ids.size()));
  EXPECT_EQ(ix.unique_ids, (std::vector<int32_t>{0, 1, 3, 7}));
  EXPECT_EQ(ix.offsets, (std::vector<int32_t>{0, 1, 3, 6, 7}));
  EXPECT_EQ(ix.tokens, (std::vector<int32_t>{3, 1, 4, 0, 2, 5, 6}));

  const auto empty = cuda::embedding_grad_index(nullptr, 0);
  EXPECT_TRUE(empty.unique_ids.empty());
  EXPECT_EQ(empty.offsets, (std::vector<int32_t>{0}));
  EXPECT_TRUE(empty.tokens.empty());

  const std::vector<int32_t> bad = {2, -1, 4};
  EXPECT_THROW(cuda::embedding_grad_index(bad.data(), 3), Error);
}

// Ids with one id used by many tokens, several used a few times, most of the table unused, and the
// table's last row used once.
std::vector<int32_t> skewed_ids(int64_t n, int64_t vocab, uint64_t seed) {
  Rng r(seed);
  std::vector<int32_t> ids(n);
  for (auto& i : ids) i = r.below(3) == 0 ? 5 : static_cast<int32_t>(r.below(vocab / 3));
  ids[n / 2] = static_cast<int32_t>(vocab - 1);
  return ids;
}

// Runs the GPU backward from dtable0 and returns the table. `offset` floats shift dx and dtable off
// their 16-byte alignment, which must take the scalar path and give the same sums.
std::vector<float> gpu_embedding_backward(const cuda::Context& ctx, const std::vector<int32_t>& ids,
                                          const std::vector<float>& dx, int64_t dim,
                                          const std::vector<float>& dtable0, int64_t offset) {
  const auto ix = cuda::embedding_grad_index(ids.data(), static_cast<int64_t>(ids.size()));
  auto du = cuda::DeviceBuffer::from(ix.unique_ids), doff = cuda::DeviceBuffer::from(ix.offsets),
       dtok = cuda::DeviceBuffer::from(ix.tokens);
  std::vector<float> dx_pad(offset, 0.0f), dt_pad(offset, 0.0f);
  dx_pad.insert(dx_pad.end(), dx.begin(), dx.end());
  dt_pad.insert(dt_pad.end(), dtable0.begin(), dtable0.end());
  auto ddx = cuda::DeviceBuffer::from(dx_pad), dtab = cuda::DeviceBuffer::from(dt_pad);
  cuda::embedding_backward(ctx, du.as<int32_t>(), doff.as<int32_t>(), dtok.as<int32_t>(),
                           static_cast<int64_t>(ix.unique_ids.size()), ddx.as<float>() + offset, dim,
                           dtab.as<float>() + offset);
  ctx.synchronize();
  auto got = dtab.to_host<float>(dt_pad.size());
  return std::vector<float>(got.begin() + offset, got.end());
}

TEST(CudaEmbeddingBackward, MatchesCpuAccumulatesAndIsDeterministic) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  cuda::Context ctx;
  const int64_t vocab = 997, n = 523;  // n prime: a multiple of no block or vector width
  struct Case {
    int64_t dim, offset;
  };
  // dim 7 and 4099: the scalar path; 64: the float4 path, and shifted off alignment, the scalar one.
  for (auto [dim, offset] : {Case{7, 0}, Case{64, 0}, Case{64, 1}, Case{4099, 0}}) {
    const auto ids = skewed_ids(n, vocab, 21 + dim);
    const auto dx = randn(n * dim, 22 + dim);
    const auto dtable0 = randn(vocab * dim, 23 + dim);  // non-zero: the backward must add onto it
    std::vector<float> want = dtable0;
    cpu::embedding_backward(ids.data(), dx.data(), n, dim, want.data());

    const auto got = gpu_embedding_backward(ctx, ids, dx, dim, dtable0, offset);
    // Both sides add the same fp32 values onto the same starting row in the same token order, so
    // the sums are expected to be bit-identical; 1e-6 (a few fp32 ulps) is the bound, while a lost,
    // doubled or misplaced token row, or an overwrite instead of an add, costs 1e-3 or more.
    EXPECT_LE(rel_err(got, want), 1e-6) << "dim " << dim << " offset " << offset;
    std::vector<char> used(vocab, 0);
    for (int32_t i : ids) used[i] = 1;
    int64_t unused = 0;
    for (int64_t v = 0; v < vocab; ++v) {
      if (used[v]) continue;
      ++unused;
      ASSERT_EQ(0, std::memcmp(&got[v * dim], &dtable0[v * dim], dim * sizeof(float)))
          << "row " << v << " of an unused id changed, dim " << dim;
    }
    EXPECT_GT(unused, vocab / 2);  // the case does have unused ids
    EXPECT_TRUE(bit_identical(gpu_embedding_backward(ctx, ids, dx, dim, dtable0, offset), got))
        << "two runs differ, dim " << dim << " offset " << offset;
  }
}

TEST(CudaEmbeddingBackward, NoTokensLeavesTableAlone) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  cuda::Context ctx;
  const auto dtable0 = randn(10 * 8, 31);
  auto dtab = cuda::DeviceBuffer::from(dtable0);
  cuda::embedding_backward(ctx, nullptr, nullptr, nullptr, 0, nullptr, 8, dtab.as<float>());
  ctx.synchronize();
  EXPECT_TRUE(bit_identical(dtab.to_host<float>(dtable0.size()), dtable0));
}

// ---- RMSNorm weight gradient ----

std::vector<uint16_t> to_f16(const std::vector<float>& v) {
  std::vector<uint16_t> o(v.size());
  for (size_t i = 0; i < v.size(); ++i) o[i] = f32_to_f16(v[i]);
  return o;
}
std::vector<float> from_f16(const std::vector<uint16_t>& v) {
  std::vector<float> o(v.size());
  for (size_t i = 0; i < v.size(); ++i) o[i] = f16_to_f32(v[i]);
  return o;
}

// Runs the GPU weight gradient from dw0 on a NaN-poisoned workspace and returns dw.
template <typename X>
std::vector<float> gpu_rmsnorm_weight_grad(const cuda::Context& ctx, cuda::Storage s, const std::vector<float>& dy,
                                           const std::vector<X>& x_stored, const std::vector<float>& rstd,
                                           int64_t rows, int64_t dim, const std::vector<float>& dw0) {
  auto ddy = cuda::DeviceBuffer::from(dy), dx = cuda::DeviceBuffer::from(x_stored),
       drstd = cuda::DeviceBuffer::from(rstd), ddw = cuda::DeviceBuffer::from(dw0);
  const size_t ws = cuda::rmsnorm_weight_grad_workspace(rows, dim);
  EXPECT_GE(ws, static_cast<size_t>(dim) * sizeof(float));
  auto dws = cuda::DeviceBuffer::from(nans(ws / sizeof(float)));  // every element must be written before read
  cuda::rmsnorm_weight_grad(ctx, s, ddy.as<float>(), dx.data(), drstd.as<float>(), rows, dim, ddw.as<float>(),
                            dws.as<float>());
  ctx.synchronize();
  return ddw.to_host<float>(dim);
}

struct Shape {
  int64_t rows, dim;
};
// Rows below, at and across the 64-row chunks (never a multiple of them), dims below a warp, at a
// power of two and above the block size.
constexpr Shape kShapes[] = {{1, 64}, {37, 7}, {129, 64}, {1000, 7}, {203, 4099}};

// The CPU twin's dw on x as the GPU sees it (already rounded to the storage type), from dw0.
std::vector<float> cpu_weight_grad(const std::vector<float>& x, const std::vector<float>& dy, int64_t rows,
                                   int64_t dim, const std::vector<float>& dw0, std::vector<float>& rstd) {
  const auto w = randn(dim, 7 + dim, 1.0f);
  std::vector<float> y(rows * dim), dx(rows * dim, 0.0f), dw = dw0;
  rstd.assign(rows, 0.0f);
  cpu::rmsnorm_forward(x.data(), w.data(), y.data(), rstd.data(), rows, dim, 1e-5f);
  cpu::rmsnorm_backward(dy.data(), x.data(), w.data(), rstd.data(), dx.data(), rows, dim, dw.data());
  return dw;
}

TEST(CudaRmsNormWeightGrad, F32MatchesCpuAccumulatesAndIsDeterministic) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  cuda::Context ctx;
  for (auto [rows, dim] : kShapes) {
    const auto x = randn(rows * dim, 41 + rows + dim), dy = randn(rows * dim, 42 + rows + dim);
    const auto dw0 = randn(dim, 43 + rows + dim);  // non-zero: the gradient must add onto it
    std::vector<float> rstd;
    const auto want = cpu_weight_grad(x, dy, rows, dim, dw0, rstd);
    const auto got = gpu_rmsnorm_weight_grad(ctx, cuda::Storage::F32, dy, x, rstd, rows, dim, dw0);
    ASSERT_TRUE(all_finite(got)) << rows << "x" << dim;
    // The same products summed in fp32 partials of 64 rows (the CPU sums in double, over all rows):
    // rounding of order sqrt(64) fp32 ulps of the partial sums, far below 1e-5; an overwrite instead
    // of an add, or a lost chunk, costs 1e-2 or more.
    EXPECT_LE(rel_err(got, want), 1e-5) << rows << "x" << dim;
    EXPECT_TRUE(bit_identical(gpu_rmsnorm_weight_grad(ctx, cuda::Storage::F32, dy, x, rstd, rows, dim, dw0), got))
        << "two runs differ, " << rows << "x" << dim;
  }
}

TEST(CudaRmsNormWeightGrad, Bf16AndF16StorageMatchCpu) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  cuda::Context ctx;
  for (auto [rows, dim] : kShapes) {
    const auto x = randn(rows * dim, 51 + rows + dim), dy = randn(rows * dim, 52 + rows + dim);
    const auto dw0 = randn(dim, 53 + rows + dim);
    {
      // The CPU twin sees the bf16-rounded x, so only the summation differs, as in fp32.
      const auto xb = testing::to_bf16(x);
      std::vector<float> rstd;
      const auto want = cpu_weight_grad(testing::from_bf16(xb), dy, rows, dim, dw0, rstd);
      const auto got = gpu_rmsnorm_weight_grad(ctx, cuda::Storage::BF16, dy, xb, rstd, rows, dim, dw0);
      ASSERT_TRUE(all_finite(got)) << "bf16 " << rows << "x" << dim;
      EXPECT_LE(rel_err(got, want), 1e-5) << "bf16 " << rows << "x" << dim;
      EXPECT_TRUE(bit_identical(gpu_rmsnorm_weight_grad(ctx, cuda::Storage::BF16, dy, xb, rstd, rows, dim, dw0), got))
          << "two bf16 runs differ, " << rows << "x" << dim;
    }
    {
      const auto xh = to_f16(x);
      std::vector<float> rstd;
      const auto want = cpu_weight_grad(from_f16(xh), dy, rows, dim, dw0, rstd);
      const auto got = gpu_rmsnorm_weight_grad(ctx, cuda::Storage::F16, dy, xh, rstd, rows, dim, dw0);
      ASSERT_TRUE(all_finite(got)) << "f16 " << rows << "x" << dim;
      EXPECT_LE(rel_err(got, want), 1e-5) << "f16 " << rows << "x" << dim;
    }
  }
}

TEST(CudaRmsNormWeightGrad, NoRowsLeavesGradientAlone) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  cuda::Context ctx;
  EXPECT_EQ(cuda::rmsnorm_weight_grad_workspace(0, 16), 0u);
  const auto dw0 = randn(16, 61);
  auto ddw = cuda::DeviceBuffer::from(dw0);
  cuda::rmsnorm_weight_grad(ctx, cuda::Storage::F32, nullptr, nullptr, nullptr, 0, 16, ddw.as<float>(), nullptr);
  ctx.synchronize();
  EXPECT_TRUE(bit_identical(ddw.to_host<float>(16), dw0));
}

}  // namespace
}  // namespace ftune

// NF4 CUDA kernels against the CPU reference (quant/nf4.cpp): quantization bit for bit, bf16
// dequantization equal to the rounding of the CPU's exact fp32 values, the random fill's spread,
// and (printed, never asserted) the dequantization bandwidth. Skipped without a GPU.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "../test_util.h"
#include "core/dtype.h"
#include "core/rng.h"
#include "ops/cuda/context.h"
#include "ops/cuda/nf4.h"
#include "quant/dynamic_map.h"
#include "quant/nf4.h"

namespace ftune {
namespace {

using cuda::DeviceBuffer;

std::vector<float> weights(int64_t n, uint64_t seed, float std) {
  Rng r(seed);
  std::vector<float> v(n);
  for (float& x : v) x = std * r.normal();
  // A few blocks that stress the edges: all zeros, exact thresholds (absmax 1), one NaN.
  if (n >= 3 * 64) {
    std::fill(v.begin() + 64, v.begin() + 128, 0.0f);
    v[128] = 1.0f;
    const auto& c = nf4_code();
    for (int k = 0; k < 15; ++k) v[129 + k] = static_cast<float>((static_cast<double>(c[k]) + c[k + 1]) / 2);
    v[150] = std::nanf("");
  }
  return v;
}

std::vector<float> code2_host() {
  const QuantMap& m = dynamic_map(true);
  return {m.begin(), m.end()};
}

// GPU first stage + device double quantization with the CPU's offset, against nf4_quantize.
void check_quantize(const cuda::Context& ctx, const std::vector<float>& x, int64_t bs, bool bf16_input) {
  const int64_t n = static_cast<int64_t>(x.size());
  std::vector<float> xin = x;
  DeviceBuffer dx;
  if (bf16_input) {
    for (float& v : xin) v = bf16_to_f32(f32_to_bf16(v));
    dx = DeviceBuffer::from(testing::to_bf16(xin));
  } else {
    dx = DeviceBuffer::from(xin);
  }
  const Nf4Tensor ref = nf4_quantize(xin.data(), {n}, bs, true);
  const int64_t nb = ref.nblocks(), nb2 = ref.nblocks2();
  DeviceBuffer packed((n + 1) / 2), absmax(nb * 4), q(nb), a2(nb2 * 4);
  cuda::nf4_quantize(ctx, bf16_input ? cuda::Storage::BF16 : cuda::Storage::F32, dx.data(), n, bs,
                     packed.as<uint8_t>(), absmax.as<float>());
  ctx.synchronize();
  const auto absmax_h = absmax.to_host<float>(nb);
  std::vector<uint8_t> pk_ref(ref.packed);
  EXPECT_EQ(packed.to_host<uint8_t>((n + 1) / 2), pk_ref) << "n " << n << " bs " << bs;
  std::vector<float> absmax_ref(nb);
  std::vector<uint8_t> scratch((n + 1) / 2);
  nf4_quantize_blocks(xin.data(), n, bs, scratch.data(), absmax_ref.data());
  EXPECT_EQ(std::memcmp(absmax_h.data(), absmax_ref.data(), nb * 4), 0) << "n " << n << " bs " << bs;
  const float offset = nf4_absmax_mean(absmax_h.data(), nb);
  EXPECT_EQ(offset, ref.offset);
  auto code2 = DeviceBuffer::from(code2_host());
  cuda::nf4_quantize_absmax(ctx, absmax.as<float>(), nb, offset, code2.as<float>(), q.as<uint8_t>(), a2.as<float>());
  ctx.synchronize();
  EXPECT_EQ(q.to_host<uint8_t>(nb), ref.absmax_q) << "n " << n << " bs " << bs;
  const auto a2h = a2.to_host<float>(nb2);
  EXPECT_EQ(std::memcmp(a2h.data(), ref.absmax2.data(), nb2 * 4), 0) << "n " << n << " bs " << bs;
}

TEST(CudaNf4, QuantizeIsBitIdenticalToCpu) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  cuda::Context ctx;
  for (int64_t bs : {32, 64, 128, 256, 4096})
    for (int64_t n : {int64_t{7}, int64_t{1000}, int64_t{64 * 300 + 17}, int64_t{1} << 20})
      for (bool bf16 : {false, true}) check_quantize(ctx, weights(n, n + bs, 0.02f), bs, bf16);
}

// bitsandbytes' build uses --use_fast_math, so its 1.0f/absmax is rcp.approx.ftz: count how often
// that changes a code against the IEEE reciprocal (reported, not asserted beyond "rare").
TEST(CudaNf4, FastMathReciprocalRarelyChangesCodes) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  cuda::Context ctx;
  const int64_t n = int64_t{1} << 24, bs = 64, nb = n / bs;
  const auto x = weights(n, 99, 0.02f);
  auto dx = DeviceBuffer::from(x);
  DeviceBuffer p1(n / 2), p2(n / 2), a1(nb * 4), a2(nb * 4);
  cuda::nf4_quantize(ctx, cuda::Storage::F32, dx.data(), n, bs, p1.as<uint8_t>(), a1.as<float>());
  cuda::nf4_quantize(ctx, cuda::Storage::F32, dx.data(), n, bs, p2.as<uint8_t>(), a2.as<float>(),
                     cuda::Nf4Reciprocal::BnbFastMath);
  ctx.synchronize();
  const auto h1 = p1.to_host<uint8_t>(n / 2), h2 = p2.to_host<uint8_t>(n / 2);
  int64_t differ = 0;
  for (int64_t i = 0; i < n / 2; ++i) differ += ((h1[i] >> 4) != (h2[i] >> 4)) + ((h1[i] & 15) != (h2[i] & 15));
  std::printf("[ nf4 ] rcp.approx vs IEEE reciprocal: %lld of %lld codes differ\n", static_cast<long long>(differ),
              static_cast<long long>(n));
  EXPECT_LT(differ, n / 10000);
  EXPECT_EQ(a1.to_host<float>(nb), a2.to_host<float>(nb));
}

// Dequantized bf16 = round-to-nearest-even of the CPU's fp32 value, for nested and fp32 scales,
// aligned and unaligned pointers and lengths that leave a scalar tail.
TEST(CudaNf4, DequantizeMatchesCpu) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  cuda::Context ctx;
  auto code2 = DeviceBuffer::from(code2_host());
  for (int64_t bs : {32, 64, 256})
    for (int64_t n : {int64_t{5}, int64_t{64 * 33 + 3}, int64_t{1} << 20, (int64_t{1} << 20) + 24})
      for (bool nested : {true, false})
        for (int64_t shift : {0, 1}) {  // shift: byte offset of packed / element offset of out
          SCOPED_TRACE(::testing::Message() << "bs " << bs << " n " << n << " nested " << nested << " shift " << shift);
          const auto x = weights(n, 3 * n + bs, 1.0f);
          const Nf4Tensor t = nf4_quantize(x.data(), {n}, bs, nested);
          std::vector<float> ref(n);
          nf4_dequantize(t, ref.data());
          std::vector<uint8_t> pk(shift);
          pk.insert(pk.end(), t.packed.begin(), t.packed.end());
          auto dp = DeviceBuffer::from(pk);
          DeviceBuffer out((n + shift) * 2);
          const uint8_t* packed = dp.as<uint8_t>() + shift;
          void* o = out.as<uint16_t>() + shift;
          if (nested) {
            auto q = DeviceBuffer::from(t.absmax_q), a2 = DeviceBuffer::from(t.absmax2);
            cuda::nf4_dequantize_bf16(ctx, packed, q.as<uint8_t>(), a2.as<float>(), t.offset, code2.as<float>(), n, bs,
                                      o);
            ctx.synchronize();
          } else {
            auto a = DeviceBuffer::from(t.absmax);
            cuda::nf4_dequantize_bf16(ctx, packed, a.as<float>(), n, bs, o);
            ctx.synchronize();
          }
          const auto got = out.to_host<uint16_t>(n + shift);
          int64_t bad = 0, first = -1;
          for (int64_t i = 0; i < n; ++i)
            if (got[shift + i] != f32_to_bf16(ref[i])) bad += 1, first = first < 0 ? i : first;
          EXPECT_EQ(bad, 0) << "first at " << first;
        }
}

TEST(CudaNf4, RandomFillHasTheExpectedSpread) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  cuda::Context ctx;
  const int64_t n = int64_t{1} << 22, bs = 64, nb = n / bs, nb2 = (nb + 255) / 256;
  const float mean = 0.05f;
  DeviceBuffer p(n / 2), q(nb), a2(nb2 * 4), out(n * 2);
  auto code2 = DeviceBuffer::from(code2_host());
  cuda::nf4_fill_random(ctx, p.as<uint8_t>(), q.as<uint8_t>(), a2.as<float>(), n, bs, 1234, mean);
  cuda::nf4_dequantize_bf16(ctx, p.as<uint8_t>(), q.as<uint8_t>(), a2.as<float>(), mean, code2.as<float>(), n, bs,
                            out.data());
  ctx.synchronize();
  const auto v = testing::from_bf16(out.to_host<uint16_t>(n));
  double s = 0, ss = 0;
  for (float x : v) {
    ASSERT_TRUE(std::isfinite(x));
    ASSERT_LE(std::fabs(x), 1.2f * mean * 1.004f);  // largest block scale, then bf16 rounding
    s += x, ss += static_cast<double>(x) * x;
  }
  const double m = s / n, sd = std::sqrt(ss / n - m * m);
  // Uniform codes times independent block scales mean * (1 + 0.2 c), c uniform over the dynamic map.
  double lut1 = 0, lut2 = 0, c1 = 0, c2 = 0;
  for (float c : nf4_code()) lut1 += c / 16.0, lut2 += c * c / 16.0;
  for (float c : dynamic_map(true)) c1 += c / 256.0, c2 += static_cast<double>(c) * c / 256.0;
  const double want_m = lut1 * mean * (1 + 0.2 * c1);
  const double want_sd = std::sqrt(lut2 * mean * mean * (1 + 0.4 * c1 + 0.04 * c2) - want_m * want_m);
  std::printf("[ nf4 ] random fill: mean %.4g (expected %.4g), std %.5f (expected %.5f)\n", m, want_m, sd, want_sd);
  EXPECT_NEAR(m, want_m, 0.08 * want_m);  // about 7 sigma of the sample mean
  EXPECT_NEAR(sd, want_sd, 0.01 * want_sd);
  // Codes are all used, about equally.
  const auto ph = p.to_host<uint8_t>(n / 2);
  std::vector<int64_t> hist(16);
  for (uint8_t b : ph) ++hist[b >> 4], ++hist[b & 15];
  for (int64_t h : hist) EXPECT_NEAR(static_cast<double>(h), n / 16.0, 0.01 * n / 16.0);
  // The same seed gives the same data.
  DeviceBuffer p2(n / 2);
  cuda::nf4_fill_random(ctx, p2.as<uint8_t>(), q.as<uint8_t>(), a2.as<float>(), n, bs, 1234, mean);
  ctx.synchronize();
  EXPECT_EQ(p2.to_host<uint8_t>(n / 2), ph);
}

// Bandwidth of the QLoRA hot path, printed as bytes moved (packed + scales read, bf16 written) per
// second. Not asserted: benchmarks never fail tests.
TEST(CudaNf4, DequantizeThroughputIsReported) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  cuda::Context ctx;
  auto code2 = DeviceBuffer::from(code2_host());
  for (int64_t rows : {4096, 8192, 28672}) {
    const int64_t cols = 8192, n = rows * cols, bs = 64, nb = n / bs, nb2 = (nb + 255) / 256;
    DeviceBuffer p(n / 2), q(nb), a2(nb2 * 4), af(nb * 4), out(n * 2);
    cuda::nf4_fill_random(ctx, p.as<uint8_t>(), q.as<uint8_t>(), a2.as<float>(), n, bs, 7);
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    for (bool nested : {true, false}) {
      auto run = [&] {
        if (nested)
          cuda::nf4_dequantize_bf16(ctx, p.as<uint8_t>(), q.as<uint8_t>(), a2.as<float>(), 0.05f, code2.as<float>(), n,
                                    bs, out.data());
        else
          cuda::nf4_dequantize_bf16(ctx, p.as<uint8_t>(), af.as<float>(), n, bs, out.data());
      };
      for (int i = 0; i < 3; ++i) run();
      const int iters = 20;
      cudaEventRecord(e0, ctx.stream());
      for (int i = 0; i < iters; ++i) run();
      cudaEventRecord(e1, ctx.stream());
      cudaEventSynchronize(e1);
      float ms = 0;
      cudaEventElapsedTime(&ms, e0, e1);
      const double sec = ms / 1e3 / iters;
      const double bytes = n / 2.0 + n * 2.0 + (nested ? nb + nb2 * 4.0 : nb * 4.0);
      std::printf("[ nf4 ] dequant [%lld, %lld] bs 64 %s: %.1f us, %.0f GB/s, %.1f Gelem/s\n",
                  static_cast<long long>(rows), static_cast<long long>(cols), nested ? "nested" : "fp32-absmax",
                  sec * 1e6, bytes / sec / 1e9, n / sec / 1e9);
    }
    {  // the ceiling: a device-to-device copy of the bf16 output (read + write counted)
      DeviceBuffer copy(n * 2);
      for (int i = 0; i < 3; ++i) ctx.copy(copy.data(), out.data(), n * 2);
      cudaEventRecord(e0, ctx.stream());
      for (int i = 0; i < 20; ++i) ctx.copy(copy.data(), out.data(), n * 2);
      cudaEventRecord(e1, ctx.stream());
      cudaEventSynchronize(e1);
      float ms = 0;
      cudaEventElapsedTime(&ms, e0, e1);
      std::printf("[ nf4 ] copy of %lld bf16: %.0f GB/s\n", static_cast<long long>(n), 4.0 * n / (ms / 1e3 / 20) / 1e9);
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
  }
  SUCCEED();
}

}  // namespace
}  // namespace ftune

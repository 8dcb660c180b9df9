// Op rows for the NF4 kernels against the CPU reference (quant/nf4.cpp): quantization bit for bit
// from fp32 and bf16 storage (codes, block absmax, the nested absmax and its offset), and the bf16
// dequantization equal to the rounding of the CPU's exact fp32 values (nested and fp32 scales,
// aligned and unaligned pointers, scalar tails). Then the cases that are no table row: the
// bitsandbytes fast-math reciprocal, the random fill's spread, and (printed, never asserted) the
// dequantization bandwidth.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>

#include "../test_util.h"
#include "core/dtype.h"
#include "op_harness.h"
#include "ops/cuda/nf4.h"
#include "quant/dynamic_map.h"
#include "quant/nf4.h"

namespace ftune::ops {
namespace {

using cuda::DeviceBuffer;

// A few blocks that stress the edges: all zeros, exact thresholds (absmax 1), one NaN.
void set_edges(Floats& v) {
  if (v.size() < 3 * 64) return;
  std::fill(v.begin() + 64, v.begin() + 128, 0.0f);
  v[128] = 1.0f;
  const auto& c = nf4_code();
  for (int k = 0; k < 15; ++k) v[129 + k] = static_cast<float>((static_cast<double>(c[k]) + c[k + 1]) / 2);
  v[150] = std::nanf("");
}

Floats code2_host() {
  const QuantMap& m = dynamic_map(true);
  return {m.begin(), m.end()};
}

Floats widen(const std::vector<uint8_t>& b) { return Floats(b.begin(), b.end()); }

// ---- quantization ----

// The GPU first stage, then the device double quantization with the offset the host computes from
// the GPU's absmax, against nf4_quantize.
OpCase quantize_case(Dtype dt, int64_t n, int64_t bs) {
  OpCase c;
  c.name = "nf4_quantize n " + std::to_string(n) + " bs " + std::to_string(bs) + " " + dtype_name(dt);
  c.dtype = dt;
  c.inputs = {{"x", n, 0, 0.02f}};
  c.prepare = [](Tensors& t, Rng&) { set_edges(t.f["x"]); };  // rounded to the dtype afterwards
  const int64_t nb = (n + bs - 1) / bs;
  c.reference = [=](const Tensors& t) {
    const Floats& x = t.at("x");
    const Nf4Tensor ref = nf4_quantize(x.data(), {n}, bs, true);
    Floats absmax(nb);
    std::vector<uint8_t> scratch((n + 1) / 2);
    nf4_quantize_blocks(x.data(), n, bs, scratch.data(), absmax.data());
    return Outputs{{"packed", widen(ref.packed)}, {"absmax", absmax}, {"offset", {ref.offset}},
                   {"absmax_q", widen(ref.absmax_q)}, {"absmax2", ref.absmax2}};
  };
  c.launch = [=](const cuda::Context& ctx, const Tensors& t) {
    const int64_t nb2 = (nb + 255) / 256;
    auto x = upload(dt, t.at("x"));
    DeviceBuffer packed((n + 1) / 2), absmax(nb * 4), q(nb), a2(nb2 * 4);
    cuda::nf4_quantize(ctx, storage(dt), x.data(), n, bs, packed.as<uint8_t>(), absmax.as<float>());
    const Floats absmax_h = download(ctx, Dtype::F32, absmax, nb);
    const float offset = nf4_absmax_mean(absmax_h.data(), nb);
    auto code2 = DeviceBuffer::from(code2_host());
    cuda::nf4_quantize_absmax(ctx, absmax.as<float>(), nb, offset, code2.as<float>(), q.as<uint8_t>(), a2.as<float>());
    ctx.synchronize();
    return Outputs{{"packed", widen(packed.to_host<uint8_t>((n + 1) / 2))}, {"absmax", absmax_h},
                   {"offset", {offset}}, {"absmax_q", widen(q.to_host<uint8_t>(nb))},
                   {"absmax2", download(ctx, Dtype::F32, a2, nb2)}};
  };
  for (const char* out : {"packed", "absmax", "offset", "absmax_q", "absmax2"})
    c.checks.push_back({out, 0.0, "the CPU's thresholds, IEEE reciprocal and order-free max: bit for bit"});
  return c;
}

std::vector<OpCase> quantize_rows() {
  std::vector<OpCase> rows;
  for (int64_t bs : {32, 64, 128, 256, 4096})
    for (int64_t n : {int64_t{7}, int64_t{1000}, int64_t{64 * 300 + 17}, int64_t{1} << 20})
      for (Dtype dt : {Dtype::F32, Dtype::BF16}) rows.push_back(quantize_case(dt, n, bs));  // no fp16 input path
  return rows;
}

TEST(GpuOps, Nf4Quantize) {
  FTUNE_SKIP_WITHOUT_CUDA();
  cuda::Context ctx;
  run_cases(ctx, quantize_rows());
}

// ---- dequantization to bf16 and fp16 ----

// shift: byte offset of packed and element offset of out off their alignment. dt: the output's
// storage (bf16, or fp16 for the T4).
OpCase dequantize_case(int64_t n, int64_t bs, bool nested, int64_t shift, Dtype dt) {
  OpCase c;
  c.name = "nf4_dequantize n " + std::to_string(n) + " bs " + std::to_string(bs) +
           (nested ? " nested" : " fp32-absmax") + " shift " + std::to_string(shift) + " " + dtype_name(dt);
  c.dtype = dt;                                 // the output's storage
  c.inputs = {{"x", n, 0, 1, false}};           // the weight quantized on the host from fp32
  c.prepare = [](Tensors& t, Rng&) { set_edges(t.f["x"]); };
  c.reference = [=](const Tensors& t) {
    const Nf4Tensor q = nf4_quantize(t.at("x").data(), {n}, bs, nested);
    Floats ref(n);
    nf4_dequantize(q, ref.data());
    return Outputs{{"out", round_to(dt, ref)}};
  };
  c.launch = [=](const cuda::Context& ctx, const Tensors& t) {
    const Nf4Tensor q = nf4_quantize(t.at("x").data(), {n}, bs, nested);
    std::vector<uint8_t> pk(shift);
    pk.insert(pk.end(), q.packed.begin(), q.packed.end());
    auto dp = DeviceBuffer::from(pk);
    DeviceBuffer out((n + shift) * 2);
    const uint8_t* packed = dp.as<uint8_t>() + shift;
    void* o = out.as<uint16_t>() + shift;
    if (nested) {
      auto aq = DeviceBuffer::from(q.absmax_q), a2 = DeviceBuffer::from(q.absmax2), code2 = DeviceBuffer::from(code2_host());
      if (dt == Dtype::BF16)  // the bf16 entry point, which QLoRA on bf16 GPUs calls
        cuda::nf4_dequantize_bf16(ctx, packed, aq.as<uint8_t>(), a2.as<float>(), q.offset, code2.as<float>(), n, bs, o);
      else
        cuda::nf4_dequantize(ctx, storage(dt), packed, aq.as<uint8_t>(), a2.as<float>(), q.offset, code2.as<float>(),
                             n, bs, o);
      return Outputs{{"out", download(ctx, dt, out, n, shift)}};
    }
    auto a = DeviceBuffer::from(q.absmax);
    cuda::nf4_dequantize(ctx, storage(dt), packed, a.as<float>(), n, bs, o);
    return Outputs{{"out", download(ctx, dt, out, n, shift)}};
  };
  c.checks = {{"out", 0.0, "round to nearest even of the CPU's exact fp32 value (no FMA): bit for bit"}};
  return c;
}

TEST(GpuOps, Nf4Dequantize) {
  FTUNE_SKIP_WITHOUT_CUDA();
  cuda::Context ctx;
  std::vector<OpCase> rows;
  for (int64_t bs : {32, 64, 256})
    for (int64_t n : {int64_t{5}, int64_t{64 * 33 + 3}, int64_t{1} << 20, (int64_t{1} << 20) + 24})
      for (bool nested : {true, false})
        for (int64_t shift : {0, 1})
          for (Dtype dt : {Dtype::BF16, Dtype::F16}) rows.push_back(dequantize_case(n, bs, nested, shift, dt));
  run_cases(ctx, rows);
}

// ---- no table row ----

// bitsandbytes' build uses --use_fast_math, so its 1.0f/absmax is rcp.approx.ftz: count how often
// that changes a code against the IEEE reciprocal (reported, not asserted beyond "rare").
TEST(GpuOps, Nf4FastMathReciprocalRarelyChangesCodes) {
  FTUNE_SKIP_WITHOUT_CUDA();
  cuda::Context ctx;
  const int64_t n = int64_t{1} << 24, bs = 64, nb = n / bs;
  Floats x = testing::randn(n, 99);
  for (float& v : x) v *= 0.02f;
  set_edges(x);
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

TEST(GpuOps, Nf4RandomFillHasTheExpectedSpread) {
  FTUNE_SKIP_WITHOUT_CUDA();
  cuda::Context ctx;
  const int64_t n = int64_t{1} << 22, bs = 64, nb = n / bs, nb2 = (nb + 255) / 256;
  const float mean = 0.05f;
  DeviceBuffer p(n / 2), q(nb), a2(nb2 * 4), out(n * 2);
  auto code2 = DeviceBuffer::from(code2_host());
  cuda::nf4_fill_random(ctx, p.as<uint8_t>(), q.as<uint8_t>(), a2.as<float>(), n, bs, 1234, mean);
  cuda::nf4_dequantize_bf16(ctx, p.as<uint8_t>(), q.as<uint8_t>(), a2.as<float>(), mean, code2.as<float>(), n, bs,
                            out.data());
  const Floats v = download(ctx, Dtype::BF16, out, n);
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
// second; only that the timing ran is asserted (benchmarks never fail tests on speed).
TEST(GpuOps, Nf4DequantizeThroughputIsReported) {
  FTUNE_SKIP_WITHOUT_CUDA();
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
      EXPECT_GT(ms, 0.0f);
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
}

}  // namespace
}  // namespace ftune::ops

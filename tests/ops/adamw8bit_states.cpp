// 8-bit AdamW on the GPU (gpu/adamw8bit_states.h) against the CPU optimizer, bit for bit over many
// steps with NaN and Inf gradients, and the paged states (chunked over the side stream) against the
// device-resident ones: whole-optimizer runs rather than op-table rows; skipped without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/rng.h"
#include "ops/cuda/context.h"
#include "ops/cuda/cuda_check.h"
#include "optim/adamw8bit.h"
#include "gpu/adamw8bit_states.h"

namespace ftune {
namespace {

// Gradients with a per-block scale spread over 4 decades (so absmax differs block to block), and
// a NaN or an Inf on some steps.
std::vector<float> gradient(int64_t n, int step) {
  Rng r(500 + step);
  std::vector<float> g(n);
  for (int64_t i = 0; i < n; ++i) {
    const float scale = std::pow(10.0f, static_cast<float>((i / 256 * 7 + step) % 5) - 3.0f);
    g[i] = scale * r.normal();
  }
  if (step == 5) g[17] = std::numeric_limits<float>::quiet_NaN();
  if (step == 9) g[n - 1] = std::numeric_limits<float>::infinity();
  if (step == 12) g[n / 2] = -std::numeric_limits<float>::infinity();
  return g;
}

AdamW8bitStep settings(int t) {
  AdamW8bitStep s;
  s.lr = 1e-2f * (1.0f - 0.03f * t);
  s.weight_decay = 0.01f;
  s.t = t;
  s.grad_coef = t % 3 == 0 ? 0.7f : 1.0f;  // clipping on some steps
  return s;
}

std::vector<float> normal(int64_t n, uint64_t seed) {
  Rng r(seed);
  std::vector<float> v(n);
  for (float& x : v) x = r.normal();
  return v;
}

// Number of positions whose bytes differ (so -0.0 vs 0.0 or a NaN payload would count).
template <typename T>
int64_t bit_mismatches(const std::vector<T>& a, const std::vector<T>& b) {
  if (a.size() != b.size()) return -1;
  int64_t k = 0;
  for (size_t i = 0; i < a.size(); ++i) k += std::memcmp(&a[i], &b[i], sizeof(T)) != 0;
  return k;
}

void expect_same_state(const Adam8bitState& a, const Adam8bitState& b) {
  EXPECT_EQ(bit_mismatches(a.m_q, b.m_q), 0);
  EXPECT_EQ(bit_mismatches(a.v_q, b.v_q), 0);
  EXPECT_EQ(bit_mismatches(a.absmax_m, b.absmax_m), 0);
  EXPECT_EQ(bit_mismatches(a.absmax_v, b.absmax_v), 0);
  EXPECT_EQ(bit_mismatches(a.m32, b.m32), 0);
  EXPECT_EQ(bit_mismatches(a.v32, b.v32), 0);
}

// Runs `steps` updates with the CPU state and a GPU optimizer (DeviceAdamW8bit or PagedAdamW8bit)
// from the same start, returning the final CPU and GPU parameters.
template <typename GpuOpt>
void run_both(const cuda::Context& ctx, GpuOpt& gpu, Adam8bitState& cpu, int steps, std::vector<float>& p_cpu,
              std::vector<float>& p_gpu) {
  const int64_t n = cpu.size();
  p_cpu = normal(n, 77);
  cuda::DeviceBuffer dp(n * sizeof(float)), dg(n * sizeof(float));
  FT_CUDA(cudaMemcpyAsync(dp.data(), p_cpu.data(), n * sizeof(float), cudaMemcpyHostToDevice, ctx.stream()));
  for (int t = 1; t <= steps; ++t) {
    const auto g = gradient(n, t);
    FT_CUDA(cudaMemcpyAsync(dg.data(), g.data(), n * sizeof(float), cudaMemcpyHostToDevice, ctx.stream()));
    gpu.step(settings(t), dp.as<float>(), dg.as<float>());
    cpu.step(settings(t), p_cpu.data(), g.data());
    ctx.synchronize();  // g is reused
  }
  p_gpu.resize(n);
  FT_CUDA(cudaMemcpyAsync(p_gpu.data(), dp.data(), n * sizeof(float), cudaMemcpyDeviceToHost, ctx.stream()));
  ctx.synchronize();
}

// The GPU kernel uses explicitly rounded fp32 intrinsics in the CPU's operation order, the same
// host-computed constants, a true division before the code search and an order-free max: every
// parameter bit, code and absmax must match.
TEST(CudaAdamW8bit, BitIdenticalToCpuOver20Steps) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  cuda::Context ctx;
  const int64_t n = 3 * 4096 + 1234;  // not a multiple of 256
  Adam8bitState cpu(n);
  DeviceAdamW8bit gpu(ctx, n);
  ASSERT_TRUE(cpu.is_8bit() && gpu.is_8bit());
  std::vector<float> p_cpu, p_gpu;
  run_both(ctx, gpu, cpu, 20, p_cpu, p_gpu);
  EXPECT_EQ(bit_mismatches(p_gpu, p_cpu), 0);
  expect_same_state(gpu.to_host(), cpu);
  EXPECT_GT(bit_mismatches(p_cpu, normal(n, 77)), n * 9 / 10);  // the parameters did move
  EXPECT_TRUE(std::isfinite(p_cpu[17]) && std::isfinite(p_cpu[n - 1]));
}

TEST(CudaAdamW8bit, Fp32FallbackBitIdenticalToCpu) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  cuda::Context ctx;
  const int64_t n = 1000;  // below min_8bit_size: bnb's 32-bit kernel (NaN steps left out)
  Adam8bitState cpu(n);
  DeviceAdamW8bit gpu(ctx, n);
  ASSERT_FALSE(cpu.is_8bit() || gpu.is_8bit());
  std::vector<float> p_cpu, p_gpu;
  run_both(ctx, gpu, cpu, 4, p_cpu, p_gpu);  // steps 1-4 have finite gradients
  EXPECT_EQ(bit_mismatches(p_gpu, p_cpu), 0);
  expect_same_state(gpu.to_host(), cpu);
}

// Several chunks with a partial last one, double-buffered over the side stream: the same bits as
// the device-resident states and as the CPU.
TEST(CudaAdamW8bit, PagedMatchesDeviceResident) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  cuda::Context ctx;
  const int64_t n = 300123;
  PagedAdamW8bit paged(ctx, n, 128u << 10);  // 128 KiB of state a chunk: 252 blocks = 64512 elements
  DeviceAdamW8bit dev(ctx, n);
  Adam8bitState cpu_a(n), cpu_b(n);
  ASSERT_TRUE(paged.is_8bit());
  EXPECT_EQ(paged.chunk_elems(), 64512);
  EXPECT_EQ(paged.chunks(), 5);
  EXPECT_NE(n % paged.chunk_elems(), 0);
  EXPECT_EQ(paged.host_bytes(), size_t(n) * 2 + size_t(adam8bit_blocks(n)) * 8);
  EXPECT_EQ(paged.device_bytes(), 2 * (64512u * 2 + 252u * 8) + 2048u);
  EXPECT_EQ(dev.device_bytes(), paged.host_bytes() + 2048u);
  std::vector<float> p_paged, p_dev, p_cpu;
  run_both(ctx, paged, cpu_a, 20, p_cpu, p_paged);
  run_both(ctx, dev, cpu_b, 20, p_cpu, p_dev);
  EXPECT_EQ(bit_mismatches(p_paged, p_dev), 0);
  EXPECT_EQ(bit_mismatches(p_paged, p_cpu), 0);
  const Adam8bitState sp = paged.to_host(), sd = dev.to_host();
  expect_same_state(sp, sd);
  expect_same_state(sp, cpu_a);
}

TEST(CudaAdamW8bit, PagedFp32StatesMatchDeviceResident) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  cuda::Context ctx;
  const int64_t n = 1000;
  PagedAdamW8bit paged(ctx, n, 4096);  // 2 blocks of fp32 m, v a chunk: 512, 488 elements
  DeviceAdamW8bit dev(ctx, n);
  Adam8bitState cpu_a(n), cpu_b(n);
  ASSERT_FALSE(paged.is_8bit());
  EXPECT_EQ(paged.chunks(), 2);
  std::vector<float> p_paged, p_dev, p_cpu;
  run_both(ctx, paged, cpu_a, 4, p_cpu, p_paged);
  run_both(ctx, dev, cpu_b, 4, p_cpu, p_dev);
  EXPECT_EQ(bit_mismatches(p_paged, p_dev), 0);
  expect_same_state(paged.to_host(), dev.to_host());
}

TEST(CudaAdamW8bit, LoadRestoresState) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  cuda::Context ctx;
  const int64_t n = 5000;
  Adam8bitState cpu(n);
  DeviceAdamW8bit dev(ctx, n);
  std::vector<float> p_cpu, p_dev;
  run_both(ctx, dev, cpu, 3, p_cpu, p_dev);
  PagedAdamW8bit paged(ctx, n, 4096);
  paged.load(dev.to_host());
  expect_same_state(paged.to_host(), cpu);
  Adam8bitState wrong(n + 1);
  EXPECT_THROW(dev.load(wrong), Error);
}

}  // namespace
}  // namespace ftune

// 8-bit blockwise AdamW kernels. Bit-identical to the CPU twin (optim/adamw8bit.cpp): every fp32
// operation goes through an explicitly rounded intrinsic (__fmul_rn, __fadd_rn, __fdiv_rn,
// __fsqrt_rn), which nvcc never contracts into an FMA, in the CPU code's order; the host computes
// the constants (adam8bit_constants) for both. Two deliberate departures from bnb's kernel, both
// so that CPU and GPU agree: m / absmax is a true division (bnb: __fdividef, approximate), and the
// nearest code is quantize_to_map's (first entry >= x, then the midpoint, ties low) where bnb's
// quantize_2D breaks some ties upwards.
#include <climits>

#include "ops/cuda/adamw8bit.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/storage.cuh"

namespace ftune::cuda {

namespace {

constexpr int kThreads = static_cast<int>(kAdam8bitBlock);  // one thread per element of a block
static_assert(kThreads == 256, "the kernel maps one thread block onto one quantization block");

// std::lower_bound over the 256-entry map: the first index whose entry is not < x (0 for NaN).
__device__ __forceinline__ int map_lower_bound(const float* map, float x) {
  int first = 0, count = 256;
  while (count > 0) {
    const int half = count >> 1;
    if (map[first + half] < x) {
      first += half + 1;
      count -= half + 1;
    } else {
      count = half;
    }
  }
  return first;
}

// quantize_to_map on the device.
__device__ __forceinline__ int map_nearest(const float* map, float x) {
  const int hi = map_lower_bound(map, x);
  if (hi == 0) return 0;
  if (hi == 256) return 255;
  const float mid = __fdiv_rn(__fadd_rn(map[hi - 1], map[hi]), 2.0f);
  return x > mid ? hi : hi - 1;
}

// The CPU's requantize(): x / absmax (x itself when absmax is 0), nearest code, sign fix.
__device__ __forceinline__ uint8_t requantize(const float* map, bool is_signed, float x, float absmax) {
  const float y = absmax > 0.0f ? __fdiv_rn(x, absmax) : x;
  uint8_t c = static_cast<uint8_t>(map_nearest(map, y));
  if (is_signed && signbit(map[c]) != signbit(x)) c = static_cast<uint8_t>(x > 0.0f ? c + 1 : c - 1);
  return c;
}

// Max over the 256 threads (fmaxf: NaN ignored, order-free, so equal to the CPU's serial fmax).
__device__ __forceinline__ float block_max(float a, float* red /* [8] shared */) {
  for (int o = 16; o > 0; o >>= 1) a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, o));
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) red[warp] = a;
  __syncthreads();
  float r = red[0];
  for (int w = 1; w < kThreads / 32; ++w) r = fmaxf(r, red[w]);
  return r;
}

__global__ void __launch_bounds__(kThreads) adam8bit_kernel(float* p, const float* g, uint8_t* m_q, uint8_t* v_q,
                                                            float* absmax_m, float* absmax_v, const float* map_s,
                                                            const float* map_u, int64_t n, Adam8bitConstants c) {
  __shared__ float smap[256], umap[256];
  __shared__ float red_m[kThreads / 32], red_v[kThreads / 32];
  smap[threadIdx.x] = map_s[threadIdx.x];
  umap[threadIdx.x] = map_u[threadIdx.x];
  __syncthreads();
  const int64_t b = blockIdx.x;
  const int64_t i = b * kThreads + threadIdx.x;
  const bool valid = i < n;
  float m = 0.0f, v = 0.0f;
  if (valid) {
    const float graw = g[i];
    if (isfinite(graw)) {
      const float gi = __fmul_rn(graw, c.grad_coef);
      v = __fmul_rn(umap[v_q[i]], absmax_v[b]);
      v = __fadd_rn(__fmul_rn(v, c.beta2), __fmul_rn(__fmul_rn(c.one_minus_beta2, gi), gi));
      m = __fmul_rn(smap[m_q[i]], absmax_m[b]);
      m = __fadd_rn(__fmul_rn(m, c.beta1), __fmul_rn(c.one_minus_beta1, gi));
      float pi = __fadd_rn(p[i], __fmul_rn(c.step_size, __fdiv_rn(m, __fadd_rn(__fsqrt_rn(v), c.c2_eps))));
      if (c.apply_decay) pi = __fmul_rn(pi, c.decay);
      p[i] = pi;
    }
  }
  // Every thread has read absmax_m[b]/absmax_v[b] above; block_max's barrier orders the writes.
  const float am = block_max(fabsf(m), red_m);
  const float av = block_max(fabsf(v), red_v);
  if (threadIdx.x == 0) absmax_m[b] = am, absmax_v[b] = av;
  if (valid) {
    m_q[i] = requantize(smap, true, m, am);
    v_q[i] = requantize(umap, false, v, av);
  }
}

__global__ void adam32_kernel(float* p, const float* g, float* m, float* v, int64_t n, Adam8bitConstants c) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float gi = __fmul_rn(g[i], c.grad_coef);
    const float mi = __fadd_rn(__fmul_rn(m[i], c.beta1), __fmul_rn(c.one_minus_beta1, gi));
    const float vi = __fadd_rn(__fmul_rn(v[i], c.beta2), __fmul_rn(c.one_minus_beta2, __fmul_rn(gi, gi)));
    float pi = __fadd_rn(p[i], __fmul_rn(c.step_size, __fdiv_rn(mi, __fadd_rn(__fsqrt_rn(vi), c.c2_eps))));
    if (c.apply_decay) pi = __fmul_rn(pi, c.decay);
    p[i] = pi, m[i] = mi, v[i] = vi;
  }
}

}  // namespace

void adamw8bit_update(const Context& ctx, const AdamW8bitStep& s, float* p, const float* g, uint8_t* m_q, uint8_t* v_q,
                      float* absmax_m, float* absmax_v, const float* map_signed, const float* map_unsigned, int64_t n) {
  FT_ASSERT(n >= 0 && s.t >= 1);
  if (n == 0) return;
  const int64_t blocks = adam8bit_blocks(n);
  if (blocks > INT_MAX) fail("adamw8bit_update: {} elements exceed one launch", n);
  adam8bit_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, ctx.stream()>>>(
      p, g, m_q, v_q, absmax_m, absmax_v, map_signed, map_unsigned, n, adam8bit_constants(s));
  FT_CUDA_LAUNCH();
}

void adam32_update(const Context& ctx, const AdamW8bitStep& s, float* p, const float* g, float* m, float* v,
                   int64_t n) {
  FT_ASSERT(n >= 0 && s.t >= 1);
  if (n == 0) return;
  adam32_kernel<<<grid_for(n), 256, 0, ctx.stream()>>>(p, g, m, v, n, adam8bit_constants(s));
  FT_CUDA_LAUNCH();
}

}  // namespace ftune::cuda

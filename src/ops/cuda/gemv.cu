// small_m_linear: 8 warps a block, one row of W per warp; each lane loads 8 consecutive weights
// (16 bytes) per step, four steps in flight, and keeps M fp32 partial sums; a warp shuffle adds
// the lanes' sums at the end.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/gemv.h"
#include "ops/cuda/storage.cuh"

namespace ftune::cuda {

namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int kUnroll = 4;

__device__ __forceinline__ void to_float8(const uint4& v, const __nv_bfloat16*, float* f) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&v);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 t = __bfloat1622float2(h[i]);
    f[2 * i] = t.x, f[2 * i + 1] = t.y;
  }
}
__device__ __forceinline__ void to_float8(const uint4& v, const __half*, float* f) {
  const __half2* h = reinterpret_cast<const __half2*>(&v);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 t = __half22float2(h[i]);
    f[2 * i] = t.x, f[2 * i + 1] = t.y;
  }
}

template <typename T, int M>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    gemv_kernel(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y, int in, int out, bool acc) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int row = blockIdx.x * kWarpsPerBlock + warp;
  if (row >= out) return;
  const uint4* wr = reinterpret_cast<const uint4*>(w + static_cast<int64_t>(row) * in);
  const int vecs = in / 8;  // 16-byte vectors per row
  float sum[M];
#pragma unroll
  for (int i = 0; i < M; ++i) sum[i] = 0.0f;
  for (int base = 0; base < vecs; base += 32 * kUnroll) {
    uint4 wv[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int v = base + u * 32 + lane;
      wv[u] = v < vecs ? __ldg(wr + v) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int v = base + u * 32 + lane;
      if (v >= vecs) break;
      float wf[8];
      to_float8(wv[u], static_cast<const T*>(nullptr), wf);
#pragma unroll
      for (int i = 0; i < M; ++i) {
        float xf[8];
        to_float8(__ldg(reinterpret_cast<const uint4*>(x + static_cast<int64_t>(i) * in) + v),
                  static_cast<const T*>(nullptr), xf);
#pragma unroll
        for (int j = 0; j < 8; ++j) sum[i] += wf[j] * xf[j];
      }
    }
  }
#pragma unroll
  for (int i = 0; i < M; ++i) {
    float s = sum[i];
#pragma unroll
    for (int o = 16; o > 0; o /= 2) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) {
      const int64_t at = static_cast<int64_t>(i) * out + row;
      st(y, at, acc ? ld(y, at) + s : s);
    }
  }
}

}  // namespace

bool small_m_linear_supported(Storage s, int64_t m, int64_t in, const void* x, const void* w) {
  return s != Storage::F32 && m >= 1 && m <= kGemvMaxRows && in % 8 == 0 && in < (int64_t{1} << 30) &&
         reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0;
}

void small_m_linear(const Context& ctx, Storage s, const void* x, const void* w, void* y, int64_t m, int64_t in,
                    int64_t out, bool accumulate) {
  FT_ASSERT(small_m_linear_supported(s, m, in, x, w) && out > 0 && out < (int64_t{1} << 30));
  const unsigned blocks = static_cast<unsigned>((out + kWarpsPerBlock - 1) / kWarpsPerBlock);
  dispatch(s, [&](auto* t) {
    using T = std::remove_pointer_t<decltype(t)>;
    if constexpr (!std::is_same_v<T, float>) {
      const T* xx = static_cast<const T*>(x);
      const T* ww = static_cast<const T*>(w);
      T* yy = static_cast<T*>(y);
      const int I = static_cast<int>(in), O = static_cast<int>(out);
      switch (m) {
#define FT_GEMV_CASE(M) \
  case M: gemv_kernel<T, M><<<blocks, kWarpsPerBlock * 32, 0, ctx.stream()>>>(xx, ww, yy, I, O, accumulate); break;
        FT_GEMV_CASE(1)
        FT_GEMV_CASE(2)
        FT_GEMV_CASE(3)
        FT_GEMV_CASE(4)
        FT_GEMV_CASE(5)
        FT_GEMV_CASE(6)
        FT_GEMV_CASE(7)
        FT_GEMV_CASE(8)
#undef FT_GEMV_CASE
      }
    }
  });
  FT_CUDA_LAUNCH();
}

}  // namespace ftune::cuda

// RoPE forward and backward: one thread per (token, head, pair), math in fp32.
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/storage.cuh"
#include "ops/cuda/rope.h"

namespace ftune::cuda {

namespace {

template <typename T>
__global__ void rope_kernel(T* x, const float* cos, const float* sin, int64_t n, int64_t heads, int64_t half,
                            float sign) {
  const int64_t total = n * heads * half;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < total;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = k % half, th = k / half, t = th / heads;
    const int64_t base = th * 2 * half;
    const float c = cos[t * half + i], s = sin[t * half + i];
    const float a = ld(x, base + i), b = ld(x, base + i + half);
    st(x, base + i, a * c - sign * b * s);
    st(x, base + i + half, b * c + sign * a * s);
  }
}

// bf16 with half a multiple of 8: each thread rotates 8 pairs with 16-byte loads and stores, and
// 32-bit index math (the element count fits: checked by the caller).
__global__ void rope_bf16x8_kernel(__nv_bfloat16* x, const float* cos, const float* sin, int32_t rows, int32_t heads,
                                   int32_t half, float sign) {
  const int32_t groups = half / 8;
  const int32_t total = rows * heads * groups;
  for (int32_t k = blockIdx.x * blockDim.x + threadIdx.x; k < total; k += gridDim.x * blockDim.x) {
    const int32_t g = k % groups, th = k / groups, t = th / heads;
    __nv_bfloat16* lo = x + static_cast<int64_t>(th) * 2 * half + g * 8;
    __nv_bfloat16* hi = lo + half;
    uint4 va = *reinterpret_cast<const uint4*>(lo), vb = *reinterpret_cast<const uint4*>(hi);
    __nv_bfloat16* a = reinterpret_cast<__nv_bfloat16*>(&va);
    __nv_bfloat16* b = reinterpret_cast<__nv_bfloat16*>(&vb);
    const float* c = cos + static_cast<int64_t>(t) * half + g * 8;
    const float* s = sin + static_cast<int64_t>(t) * half + g * 8;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const float x0 = __bfloat162float(a[j]), x1 = __bfloat162float(b[j]);
      a[j] = __float2bfloat16(x0 * c[j] - sign * x1 * s[j]);
      b[j] = __float2bfloat16(x1 * c[j] + sign * x0 * s[j]);
    }
    *reinterpret_cast<uint4*>(lo) = va, *reinterpret_cast<uint4*>(hi) = vb;
  }
}

void launch(const Context& ctx, Storage s, void* x, const float* cos, const float* sin, int64_t n, int64_t heads,
            int64_t d, float sign) {
  FT_ASSERT(n >= 0 && heads > 0 && d > 0 && d % 2 == 0);
  const int64_t total = n * heads * (d / 2);
  if (total == 0) return;
  const unsigned blocks = grid_for(total);
  if (s == Storage::BF16 && (d / 2) % 8 == 0 && n * heads * d < (int64_t{1} << 31) &&
      reinterpret_cast<uintptr_t>(x) % 16 == 0) {
    rope_bf16x8_kernel<<<grid_for(total / 8), 256, 0, ctx.stream()>>>(
        static_cast<__nv_bfloat16*>(x), cos, sin, static_cast<int32_t>(n), static_cast<int32_t>(heads),
        static_cast<int32_t>(d / 2), sign);
    FT_CUDA_LAUNCH();
    return;
  }
  dispatch(s, [&](auto* t) {
    using T = std::remove_pointer_t<decltype(t)>;
    rope_kernel<<<blocks, 256, 0, ctx.stream()>>>(static_cast<T*>(x), cos, sin, n, heads, d / 2, sign);
  });
  FT_CUDA_LAUNCH();
}

}  // namespace

void rope_forward(const Context& ctx, Storage s, void* x, const float* cos, const float* sin, int64_t n, int64_t heads,
                  int64_t d) {
  launch(ctx, s, x, cos, sin, n, heads, d, 1.0f);
}

void rope_backward(const Context& ctx, Storage s, void* dx, const float* cos, const float* sin, int64_t n,
                   int64_t heads, int64_t d) {
  launch(ctx, s, dx, cos, sin, n, heads, d, -1.0f);
}

}  // namespace ftune::cuda

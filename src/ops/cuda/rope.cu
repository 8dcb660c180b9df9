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

void launch(const Context& ctx, Storage s, void* x, const float* cos, const float* sin, int64_t n, int64_t heads,
            int64_t d, float sign) {
  FT_ASSERT(n >= 0 && heads > 0 && d > 0 && d % 2 == 0);
  const int64_t total = n * heads * (d / 2);
  if (total == 0) return;
  const unsigned blocks = grid_for(total);
  if (s == Storage::F32)
    rope_kernel<<<blocks, 256, 0, ctx.stream()>>>(static_cast<float*>(x), cos, sin, n, heads, d / 2, sign);
  else
    rope_kernel<<<blocks, 256, 0, ctx.stream()>>>(static_cast<__nv_bfloat16*>(x), cos, sin, n, heads, d / 2, sign);
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

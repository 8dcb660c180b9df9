// RMSNorm forward and backward kernels: one block per row, fp32 accumulation, block reduce.
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/rmsnorm.h"
#include "ops/cuda/storage.cuh"

namespace ftune::cuda {

namespace {

constexpr int kThreads = 256;

__device__ float block_sum(float v) {
  __shared__ float warp_sums[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  v = threadIdx.x < kThreads / 32 ? warp_sums[threadIdx.x] : 0.0f;
  if (warp == 0)
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __shared__ float total;
  if (threadIdx.x == 0) total = v;
  __syncthreads();
  const float r = total;
  __syncthreads();  // warp_sums and total may be reused by the next call
  return r;
}

template <typename T>
__global__ void rmsnorm_forward_kernel(const T* x, const float* w, T* y, float* rstd, int64_t dim, float eps) {
  const int64_t off = blockIdx.x * dim;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += kThreads) {
    const float v = ld(x, off + i);
    ss += v * v;
  }
  const float s = rsqrtf(block_sum(ss) / static_cast<float>(dim) + eps);
  if (threadIdx.x == 0) rstd[blockIdx.x] = s;
  for (int64_t i = threadIdx.x; i < dim; i += kThreads) st(y, off + i, w[i] * (ld(x, off + i) * s));
}

template <typename T>
__global__ void rmsnorm_backward_kernel(const float* dy, const T* x, const float* w, const float* rstd, float* dx,
                                        int64_t dim) {
  const int64_t off = blockIdx.x * dim;
  const float s = rstd[blockIdx.x];
  float dot = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += kThreads) dot += dy[off + i] * w[i] * ld(x, off + i) * s;
  const float m = block_sum(dot) / static_cast<float>(dim);
  for (int64_t i = threadIdx.x; i < dim; i += kThreads)
    dx[off + i] += s * (dy[off + i] * w[i] - ld(x, off + i) * s * m);
}

}  // namespace

void rmsnorm_forward(const Context& ctx, Storage st, const void* x, const float* w, void* y, float* rstd, int64_t rows,
                     int64_t dim, float eps) {
  FT_ASSERT(rows >= 0 && dim > 0);
  if (rows == 0) return;
  const auto grid = static_cast<unsigned>(rows);
  dispatch(st, [&](auto* t) {
    using T = std::remove_pointer_t<decltype(t)>;
    rmsnorm_forward_kernel<<<grid, kThreads, 0, ctx.stream()>>>(static_cast<const T*>(x), w, static_cast<T*>(y), rstd,
                                                                dim, eps);
  });
  FT_CUDA_LAUNCH();
}

void rmsnorm_backward(const Context& ctx, Storage st, const float* dy, const void* x, const float* w, const float* rstd,
                      float* dx, int64_t rows, int64_t dim) {
  FT_ASSERT(rows >= 0 && dim > 0);
  if (rows == 0) return;
  const auto grid = static_cast<unsigned>(rows);
  dispatch(st, [&](auto* t) {
    using T = std::remove_pointer_t<decltype(t)>;
    rmsnorm_backward_kernel<<<grid, kThreads, 0, ctx.stream()>>>(dy, static_cast<const T*>(x), w, rstd, dx, dim);
  });
  FT_CUDA_LAUNCH();
}

}  // namespace ftune::cuda

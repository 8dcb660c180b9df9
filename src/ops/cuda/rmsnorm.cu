// RMSNorm forward and backward kernels: one block per row, fp32 accumulation, block reduce. The
// weight gradient: a thread per column over fixed row chunks, then a thread per column over chunks.
#include <algorithm>

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
                                        T* copy, int64_t dim) {
  const int64_t off = blockIdx.x * dim;
  const float s = rstd[blockIdx.x];
  float dot = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += kThreads) dot += dy[off + i] * w[i] * ld(x, off + i) * s;
  const float m = block_sum(dot) / static_cast<float>(dim);
  for (int64_t i = threadIdx.x; i < dim; i += kThreads) {
    const float v = dx[off + i] + s * (dy[off + i] * w[i] - ld(x, off + i) * s * m);
    dx[off + i] = v;
    if (copy) st(copy, off + i, v);
  }
}

constexpr int64_t kRowsPerChunk = 64;  // rows per partial sum of the weight gradient

int64_t weight_grad_chunks(int64_t rows) { return (rows + kRowsPerChunk - 1) / kRowsPerChunk; }

// Pass 1: part[chunk, i] = sum over the chunk's rows, in row order, of dy[r, i] * x[r, i] * rstd[r].
template <typename T>
__global__ void rmsnorm_weight_grad_partial_kernel(const float* __restrict__ dy, const T* __restrict__ x,
                                                   const float* __restrict__ rstd, int64_t rows, int64_t dim,
                                                   float* __restrict__ part) {
  const int64_t i = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (i >= dim) return;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kRowsPerChunk;
  const int64_t r1 = r0 + kRowsPerChunk < rows ? r0 + kRowsPerChunk : rows;
  float acc = 0.0f;
#pragma unroll 4
  for (int64_t r = r0; r < r1; ++r) acc += dy[r * dim + i] * ld(x, r * dim + i) * rstd[r];
  part[blockIdx.x * dim + i] = acc;
}

// Pass 2: dw[i] += sum over chunks, in chunk order, of part[chunk, i].
__global__ void rmsnorm_weight_grad_reduce_kernel(const float* __restrict__ part, int64_t chunks, int64_t dim,
                                                  float* __restrict__ dw) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= dim) return;
  float acc = 0.0f;
#pragma unroll 4
  for (int64_t k = 0; k < chunks; ++k) acc += part[k * dim + i];
  dw[i] += acc;
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
                      float* dx, int64_t rows, int64_t dim, void* copy) {
  FT_ASSERT(rows >= 0 && dim > 0);
  if (rows == 0) return;
  const auto grid = static_cast<unsigned>(rows);
  dispatch(st, [&](auto* t) {
    using T = std::remove_pointer_t<decltype(t)>;
    rmsnorm_backward_kernel<<<grid, kThreads, 0, ctx.stream()>>>(dy, static_cast<const T*>(x), w, rstd, dx,
                                                                 static_cast<T*>(copy), dim);
  });
  FT_CUDA_LAUNCH();
}

size_t rmsnorm_weight_grad_workspace(int64_t rows, int64_t dim) {
  FT_ASSERT(rows >= 0 && dim > 0);
  return static_cast<size_t>(weight_grad_chunks(rows)) * static_cast<size_t>(dim) * sizeof(float);
}

void rmsnorm_weight_grad(const Context& ctx, Storage st, const float* dy, const void* x, const float* rstd,
                         int64_t rows, int64_t dim, float* dw, float* workspace) {
  FT_ASSERT(rows >= 0 && dim > 0);
  if (rows == 0) return;
  const int64_t chunks = weight_grad_chunks(rows);
  const int64_t threads = std::min<int64_t>(256, (dim + 31) / 32 * 32);
  const int64_t tiles = (dim + threads - 1) / threads;
  FT_ASSERT(chunks <= INT32_MAX && tiles <= 65535);
  const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(tiles));
  dispatch(st, [&](auto* t) {
    using T = std::remove_pointer_t<decltype(t)>;
    rmsnorm_weight_grad_partial_kernel<<<grid, static_cast<unsigned>(threads), 0, ctx.stream()>>>(
        dy, static_cast<const T*>(x), rstd, rows, dim, workspace);
  });
  FT_CUDA_LAUNCH();
  // Few columns per block here, so that a 4096-wide weight still spreads over 32 blocks.
  constexpr int64_t kReduceThreads = 128;
  rmsnorm_weight_grad_reduce_kernel<<<static_cast<unsigned>((dim + kReduceThreads - 1) / kReduceThreads),
                                      kReduceThreads, 0, ctx.stream()>>>(workspace, chunks, dim, dw);
  FT_CUDA_LAUNCH();
}

}  // namespace ftune::cuda

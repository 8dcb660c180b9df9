// Elementwise kernels.
#include "core/dropout_hash.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/elementwise.h"
#include "ops/cuda/storage.cuh"

namespace ftune::cuda {

namespace {
__global__ void add_kernel(float* y, const float* x, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] += x[i];
}
__global__ void dropout_kernel(uint64_t key, float p, const float* x, float* out, int64_t n) {
  const float s = 1.0f / (1.0f - p);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = dropout_keep(key, static_cast<uint64_t>(i), p) ? x[i] * s : 0.0f;
}

__global__ void dropout_backward_kernel(uint64_t key, float p, const float* dxd, float* dx, int64_t n) {
  const float s = 1.0f / (1.0f - p);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    if (dropout_keep(key, static_cast<uint64_t>(i), p)) dx[i] += dxd[i] * s;
}
}  // namespace

void dropout_forward(const Context& ctx, uint64_t key, float p, const float* x, float* out, int64_t n) {
  if (n <= 0) return;
  dropout_kernel<<<grid_for(n), 256, 0, ctx.stream()>>>(key, p, x, out, n);
  FT_CUDA_LAUNCH();
}

void dropout_backward_add(const Context& ctx, uint64_t key, float p, const float* dxd, float* dx, int64_t n) {
  if (n <= 0) return;
  dropout_backward_kernel<<<grid_for(n), 256, 0, ctx.stream()>>>(key, p, dxd, dx, n);
  FT_CUDA_LAUNCH();
}

void add_inplace(const Context& ctx, float* y, const float* x, int64_t n) {
  if (n <= 0) return;
  add_kernel<<<grid_for(n), 256, 0, ctx.stream()>>>(y, x, n);
  FT_CUDA_LAUNCH();
}

}  // namespace ftune::cuda

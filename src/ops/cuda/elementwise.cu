// Elementwise kernels.
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
}  // namespace

void add_inplace(const Context& ctx, float* y, const float* x, int64_t n) {
  if (n <= 0) return;
  add_kernel<<<grid_for(n), 256, 0, ctx.stream()>>>(y, x, n);
  FT_CUDA_LAUNCH();
}

}  // namespace ftune::cuda

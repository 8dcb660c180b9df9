// AdamW update kernel: decoupled decay first, then the moments, bias corrections in double on
// the host.
#include <cmath>

#include "ops/cuda/adamw.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/storage.cuh"

namespace ftune::cuda {

namespace {
__global__ void adamw_kernel(float* p, const float* g, float* m, float* v, int64_t n, float decay, float b1, float b2,
                             float step_size, float bc2_sqrt, float eps, float coef) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float gi = g[i] * coef;
    float pi = p[i] * decay;
    const float mi = b1 * m[i] + (1.0f - b1) * gi;
    const float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
    pi -= step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
    p[i] = pi, m[i] = mi, v[i] = vi;
  }
}
}  // namespace

void adamw_update(const Context& ctx, const AdamWStep& s, float* p, const float* g, float* m, float* v, int64_t n) {
  FT_ASSERT(n >= 0 && s.t >= 1);
  if (n == 0) return;
  const double bc1 = 1.0 - std::pow(static_cast<double>(s.beta1), static_cast<double>(s.t));
  const double bc2 = 1.0 - std::pow(static_cast<double>(s.beta2), static_cast<double>(s.t));
  adamw_kernel<<<grid_for(n), 256, 0, ctx.stream()>>>(p, g, m, v, n, 1.0f - s.lr * s.weight_decay, s.beta1, s.beta2,
                                                      static_cast<float>(s.lr / bc1),
                                                      static_cast<float>(std::sqrt(bc2)), s.eps, s.grad_coef);
  FT_CUDA_LAUNCH();
}

}  // namespace ftune::cuda

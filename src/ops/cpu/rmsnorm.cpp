// RMSNorm forward and backward (fp32, accumulation in double for the row statistics).
#include "ops/cpu/rmsnorm.h"

#include <cmath>

namespace ftune::cpu {

void rmsnorm_forward(const float* x, const float* w, float* y, float* rstd, int64_t rows, int64_t dim, float eps) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dim;
    double ss = 0.0;
    for (int64_t i = 0; i < dim; ++i) ss += static_cast<double>(xr[i]) * xr[i];
    const float s = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(dim) + eps));
    rstd[r] = s;
    float* yr = y + r * dim;
    for (int64_t i = 0; i < dim; ++i) yr[i] = w[i] * (xr[i] * s);
  }
}

void rmsnorm_backward(const float* dy, const float* x, const float* w, const float* rstd, float* dx, int64_t rows,
                      int64_t dim, float* dw) {
  if (dw) {
    // dw[i] = sum_r dy[r, i] * x[r, i] * rstd[r]; columns in parallel, rows in order.
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < dim; ++i) {
      double acc = 0.0;
      for (int64_t r = 0; r < rows; ++r) acc += static_cast<double>(dy[r * dim + i]) * x[r * dim + i] * rstd[r];
      dw[i] += static_cast<float>(acc);
    }
  }
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dim;
    const float* dyr = dy + r * dim;
    const float s = rstd[r];
    // xhat = x*s, g = dy*w: dx = s * (g - xhat * mean(g * xhat))
    double dot = 0.0;
    for (int64_t i = 0; i < dim; ++i) dot += static_cast<double>(dyr[i]) * w[i] * xr[i] * s;
    const float m = static_cast<float>(dot / static_cast<double>(dim));
    float* dxr = dx + r * dim;
    for (int64_t i = 0; i < dim; ++i) dxr[i] += s * (dyr[i] * w[i] - xr[i] * s * m);
  }
}

}  // namespace ftune::cpu

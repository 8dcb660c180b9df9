// RMSNorm as transformers computes it: y = w * (x * rsqrt(mean(x^2) + eps)).
#pragma once
#include <cstdint>

namespace ftune::cpu {

// x, y: [rows, dim]; w: [dim]; rstd: [rows] saved for the backward.
void rmsnorm_forward(const float* x, const float* w, float* y, float* rstd, int64_t rows, int64_t dim, float eps);
// dx[rows, dim] += d/dx of the norm given dy; when dw is not null, dw[dim] += d/dw (the weight
// gradient, summed over rows in row order, so the result does not depend on the thread count).
void rmsnorm_backward(const float* dy, const float* x, const float* w, const float* rstd, float* dx, int64_t rows,
                      int64_t dim, float* dw = nullptr);

}  // namespace ftune::cpu

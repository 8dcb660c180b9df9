// RMSNorm on the GPU (fp32 in this first kernel family; bf16 variants follow the same launcher).
#pragma once
#include <cstdint>

#include "ops/cuda/context.h"

namespace ftune::cuda {

// x, y: [rows, dim]; w: [dim]; rstd: [rows]. Device pointers.
void rmsnorm_forward(const Context& ctx, const float* x, const float* w, float* y, float* rstd, int64_t rows,
                     int64_t dim, float eps);
// dx[rows, dim] += gradient through the norm (weight frozen).
void rmsnorm_backward(const Context& ctx, const float* dy, const float* x, const float* w, const float* rstd,
                      float* dx, int64_t rows, int64_t dim);

}  // namespace ftune::cuda

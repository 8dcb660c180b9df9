// RMSNorm on the GPU: the input and output in fp32 or bf16 storage, the weight, the per-row
// inverse RMS and the gradients in fp32 (the gradient flows on in fp32 along the residual stream).
#pragma once
#include <cstdint>

#include "ops/cuda/context.h"
#include "ops/cuda/storage.h"

namespace ftune::cuda {

// x, y: [rows, dim] (storage s); w: [dim] fp32; rstd: [rows] fp32.
void rmsnorm_forward(const Context& ctx, Storage s, const void* x, const float* w, void* y, float* rstd, int64_t rows,
                     int64_t dim, float eps);
// dx[rows, dim] (fp32) += the gradient through the norm of dy[rows, dim] (fp32); x in storage s.
// The weight is frozen (no weight gradient).
void rmsnorm_backward(const Context& ctx, Storage s, const float* dy, const void* x, const float* w, const float* rstd,
                      float* dx, int64_t rows, int64_t dim);

}  // namespace ftune::cuda

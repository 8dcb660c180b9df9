// RMSNorm on the GPU: the input and output in fp32 or bf16 storage, the weight, the per-row
// inverse RMS and the gradients in fp32 (the gradient flows on in fp32 along the residual stream).
#pragma once
#include <cstddef>
#include <cstdint>

#include "ops/cuda/context.h"
#include "ops/cuda/storage.h"

namespace ftune::cuda {

// x, y: [rows, dim] (storage s); w: [dim] fp32; rstd: [rows] fp32.
void rmsnorm_forward(const Context& ctx, Storage s, const void* x, const float* w, void* y, float* rstd, int64_t rows,
                     int64_t dim, float eps);
// dx[rows, dim] (fp32) += the gradient through the norm of dy[rows, dim] (fp32); x in storage s.
// copy, when not null: dx's new values in storage s as well ([rows, dim]: the next GEMM's operand,
// written here instead of by a conversion pass that reads dx again). The weight's own gradient,
// when it trains, is rmsnorm_weight_grad.
void rmsnorm_backward(const Context& ctx, Storage s, const float* dy, const void* x, const float* w, const float* rstd,
                      float* dx, int64_t rows, int64_t dim, void* copy = nullptr);

// The weight gradient: dw[dim] (fp32) += sum over rows r of dy[r, i] * x[r, i] * rstd[r], with dy
// fp32, x in storage s and rstd the forward's. Two passes and no atomics, so the result is
// bit-identical run to run: fixed chunks of rows, each summed in row order in fp32 into
// workspace[chunks, dim], then the chunks summed in order and added to dw. workspace: device memory
// of rmsnorm_weight_grad_workspace(rows, dim) bytes, overwritten (its contents do not matter).
size_t rmsnorm_weight_grad_workspace(int64_t rows, int64_t dim);
void rmsnorm_weight_grad(const Context& ctx, Storage s, const float* dy, const void* x, const float* rstd, int64_t rows,
                         int64_t dim, float* dw, float* workspace);

}  // namespace ftune::cuda

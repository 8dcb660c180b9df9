// Small elementwise helpers on the GPU (fp32): y += x, and dropout with the shared mask.
#pragma once
#include <cstdint>

#include "ops/cuda/context.h"

namespace ftune::cuda {

void add_inplace(const Context& ctx, float* y, const float* x, int64_t n);

// out = x * mask / (1 - p), the mask from core/dropout_hash.h (same elements as the CPU).
void dropout_forward(const Context& ctx, uint64_t key, float p, const float* x, float* out, int64_t n);
// dx += dxd * mask / (1 - p).
void dropout_backward_add(const Context& ctx, uint64_t key, float p, const float* dxd, float* dx, int64_t n);

}  // namespace ftune::cuda

// Rotary embedding on the GPU, in place, rotate-half convention; cos/sin tables in fp32.
#pragma once
#include <cstdint>

#include "ops/cuda/context.h"
#include "ops/cuda/storage.h"

namespace ftune::cuda {

// x: [n, heads, d] (f32 or bf16); cos/sin: [n, d/2] fp32. backward rotates by -theta.
void rope_forward(const Context& ctx, Storage s, void* x, const float* cos, const float* sin, int64_t n, int64_t heads,
                  int64_t d);
void rope_backward(const Context& ctx, Storage s, void* dx, const float* cos, const float* sin, int64_t n,
                   int64_t heads, int64_t d);

}  // namespace ftune::cuda

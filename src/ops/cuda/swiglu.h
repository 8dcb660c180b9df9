// SwiGLU on the GPU: out = silu(gate) * up, fp32 or bf16 storage, fp32 math.
#pragma once
#include <cstdint>

#include "ops/cuda/context.h"
#include "ops/cuda/storage.h"

namespace ftune::cuda {

// gate, up, out: [n] device pointers of the given storage type.
void swiglu_forward(const Context& ctx, Storage s, const void* gate, const void* up, void* out, int64_t n);
// dgate, dup: [n], overwritten.
void swiglu_backward(const Context& ctx, Storage s, const void* gate, const void* up, const void* dout, void* dgate,
                     void* dup, int64_t n);

}  // namespace ftune::cuda

// SwiGLU: out = silu(gate) * up.
#pragma once
#include <cstdint>

namespace ftune::cpu {

void swiglu_forward(const float* gate, const float* up, float* out, int64_t n);
// dgate, dup: [n], overwritten.
void swiglu_backward(const float* gate, const float* up, const float* dout, float* dgate, float* dup, int64_t n);

}  // namespace ftune::cpu

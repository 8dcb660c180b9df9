// Rotary embedding applied in place (rotate-half convention: dim i pairs with i + d/2).
#pragma once
#include <cstdint>

namespace ftune::cpu {

// x: [n, heads, d]; cos/sin: [n, d/2]. backward applies the inverse (transposed) rotation.
void rope_forward(float* x, const float* cos, const float* sin, int64_t n, int64_t heads, int64_t d);
void rope_backward(float* dx, const float* cos, const float* sin, int64_t n, int64_t heads, int64_t d);

}  // namespace ftune::cpu

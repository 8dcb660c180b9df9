// RoPE forward and backward; the backward rotates by -theta, the transpose of the forward.
#include "ops/cpu/rope.h"

namespace ftune::cpu {

namespace {
void rotate(float* x, const float* cos, const float* sin, int64_t n, int64_t heads, int64_t d, float sign) {
  const int64_t half = d / 2;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; ++t) {
    const float* c = cos + t * half;
    const float* s = sin + t * half;
    for (int64_t h = 0; h < heads; ++h) {
      float* v = x + (t * heads + h) * d;
      for (int64_t i = 0; i < half; ++i) {
        const float a = v[i], b = v[i + half];
        v[i] = a * c[i] - sign * b * s[i];
        v[i + half] = b * c[i] + sign * a * s[i];
      }
    }
  }
}
}  // namespace

void rope_forward(float* x, const float* cos, const float* sin, int64_t n, int64_t heads, int64_t d) {
  rotate(x, cos, sin, n, heads, d, 1.0f);
}
void rope_backward(float* dx, const float* cos, const float* sin, int64_t n, int64_t heads, int64_t d) {
  rotate(dx, cos, sin, n, heads, d, -1.0f);
}

}  // namespace ftune::cpu

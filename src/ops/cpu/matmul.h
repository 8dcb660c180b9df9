// Row-major GEMM on the CPU through OpenBLAS: C = alpha * op(A) @ op(B) + beta * C.
#pragma once
#include <cstdint>

namespace ftune::cpu {

// op(A) is [m, k], op(B) is [k, n], C is [m, n]; trans_a/trans_b say A or B are stored transposed.
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
          const float* b, float beta, float* c);

// y[rows, out] (+)= x[rows, in] @ w[out, in]^T — the nn.Linear forward.
inline void linear(const float* x, const float* w, float* y, int64_t rows, int64_t in, int64_t out,
                   float beta = 0.0f) {
  gemm(false, true, rows, out, in, 1.0f, x, w, beta, y);
}

}  // namespace ftune::cpu

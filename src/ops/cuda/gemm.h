// Row-major GEMM on the GPU through cuBLASLt: D = alpha * op(A) @ op(B) + beta * C, with bf16, fp16 or
// fp32 operands, fp32 accumulation, and C/D in 16 bits or fp32. beta = 1 accumulates (the LoRA
// branch into the base output); a separate C fuses a residual add into the epilogue.
#pragma once
#include <cstdint>

#include "ops/cuda/context.h"
#include "ops/cuda/storage.h"

namespace ftune::cuda {

struct GemmOperand {
  const void* ptr;
  Storage type;
  bool trans;  // stored transposed: op(X) = X^T
};

// op(A): [m, k], op(B): [k, n], C and D: [m, n] of type c_type, all row-major and contiguous.
// A and B share a type; fp32 operands need an fp32 C (cuBLASLt has no fp32 -> bf16 path).
// C may alias D (in-place accumulate); it is only read when beta != 0.
void gemm(const Context& ctx, int64_t m, int64_t n, int64_t k, float alpha, GemmOperand a, GemmOperand b, float beta,
          const void* c, void* d, Storage c_type);

// D = C = c: accumulate in place.
inline void gemm(const Context& ctx, int64_t m, int64_t n, int64_t k, float alpha, GemmOperand a, GemmOperand b,
                 float beta, void* c, Storage c_type) {
  gemm(ctx, m, n, k, alpha, a, b, beta, c, c, c_type);
}

// The GEMM plans of a Context: how many exist, how many were tuned (Context::set_gemm_tuning), and
// how many are still timing their candidates (after reading back the timed calls that finished).
struct GemmTuning {
  int plans = 0, tuned = 0, tuning = 0;
};
GemmTuning gemm_tuning_state(const Context& ctx);

}  // namespace ftune::cuda

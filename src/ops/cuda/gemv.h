// The projections of a few rows (decoding): y[m, out] = x[m, in] W[out, in]^T (+ y), bf16 or fp16,
// fp32 math. At m <= 8 a GEMM is a matrix-vector product bound by reading W once: each warp
// streams one row of W in 16-byte loads (several in flight) and dots it with every row of x
// (small, and hot in L1), which keeps more of the memory bandwidth busy than a GEMM tile
// schedule built for large m (the approach of llama.cpp's and vLLM's decode kernels).
#pragma once
#include <cstdint>

#include "ops/cuda/context.h"
#include "ops/cuda/storage.h"

namespace ftune::cuda {

constexpr int64_t kGemvMaxRows = 8;

// True when small_m_linear handles the shape: m in [1, kGemvMaxRows], in a multiple of 8, bf16 or
// fp16 storage, x, w and y 16-byte aligned.
bool small_m_linear_supported(Storage s, int64_t m, int64_t in, const void* x, const void* w);

// y[m, out] = x[m, in] w[out, in]^T, plus y's own values when `accumulate` (a residual), every
// tensor row-major in storage s.
void small_m_linear(const Context& ctx, Storage s, const void* x, const void* w, void* y, int64_t m, int64_t in,
                    int64_t out, bool accumulate);

}  // namespace ftune::cuda

// Loads and stores of fp32 or bf16 storage with fp32 math, shared by the elementwise kernels.
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

namespace ftune::cuda {

__device__ __forceinline__ float ld(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float ld(const __nv_bfloat16* p, int64_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void st(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void st(__nv_bfloat16* p, int64_t i, float v) { p[i] = __float2bfloat16(v); }

// Grid size for a grid-stride loop over n elements with 256 threads a block.
inline unsigned grid_for(int64_t n) {
  const int64_t b = (n + 255) / 256;
  return static_cast<unsigned>(b < 65535 * 8 ? b : 65535 * 8);
}

}  // namespace ftune::cuda

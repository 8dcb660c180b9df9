// Loads and stores of fp32, bf16 or fp16 storage with fp32 math, shared by the elementwise
// kernels, and the dispatch from a runtime Storage to the element type.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "ops/cuda/storage.h"

namespace ftune::cuda {

__device__ __forceinline__ float ld(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float ld(const __nv_bfloat16* p, int64_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ float ld(const __half* p, int64_t i) { return __half2float(p[i]); }
__device__ __forceinline__ void st(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void st(__nv_bfloat16* p, int64_t i, float v) { p[i] = __float2bfloat16(v); }
__device__ __forceinline__ void st(__half* p, int64_t i, float v) { p[i] = __float2half_rn(v); }

// Calls f with a null pointer of the element type of `s` (float, __nv_bfloat16 or __half), so one
// generic lambda launches the matching kernel instantiation:
//   dispatch(s, [&](auto* t) { using T = std::remove_pointer_t<decltype(t)>; kernel<T><<<...>>>(...); });
template <typename F>
void dispatch(Storage s, F&& f) {
  switch (s) {
    case Storage::F32: f(static_cast<float*>(nullptr)); break;
    case Storage::BF16: f(static_cast<__nv_bfloat16*>(nullptr)); break;
    case Storage::F16: f(static_cast<__half*>(nullptr)); break;
  }
}

// Grid size for a grid-stride loop over n elements with 256 threads a block.
inline unsigned grid_for(int64_t n) {
  const int64_t b = (n + 255) / 256;
  return static_cast<unsigned>(b < 65535 * 8 ? b : 65535 * 8);
}

}  // namespace ftune::cuda

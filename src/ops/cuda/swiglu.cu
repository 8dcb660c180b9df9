// SwiGLU forward and backward kernels: elementwise, grid-stride, math in fp32.
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/storage.cuh"
#include "ops/cuda/swiglu.h"

namespace ftune::cuda {

namespace {

template <typename T>
__global__ void swiglu_forward_kernel(const T* gate, const T* up, T* out, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = ld(gate, i);
    st(out, i, g / (1.0f + __expf(-g)) * ld(up, i));
  }
}

template <typename T>
__global__ void swiglu_backward_kernel(const T* gate, const T* up, const T* dout, T* dgate, T* dup, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = ld(gate, i), u = ld(up, i), d = ld(dout, i);
    const float sig = 1.0f / (1.0f + __expf(-g));
    st(dup, i, d * g * sig);
    st(dgate, i, d * u * sig * (1.0f + g * (1.0f - sig)));
  }
}

}  // namespace

void swiglu_forward(const Context& ctx, Storage s, const void* gate, const void* up, void* out, int64_t n) {
  FT_ASSERT(n >= 0);
  if (n == 0) return;
  if (s == Storage::F32)
    swiglu_forward_kernel<<<grid_for(n), 256, 0, ctx.stream()>>>(static_cast<const float*>(gate),
                                                                    static_cast<const float*>(up),
                                                                    static_cast<float*>(out), n);
  else
    swiglu_forward_kernel<<<grid_for(n), 256, 0, ctx.stream()>>>(static_cast<const __nv_bfloat16*>(gate),
                                                                    static_cast<const __nv_bfloat16*>(up),
                                                                    static_cast<__nv_bfloat16*>(out), n);
  FT_CUDA_LAUNCH();
}

void swiglu_backward(const Context& ctx, Storage s, const void* gate, const void* up, const void* dout, void* dgate,
                     void* dup, int64_t n) {
  FT_ASSERT(n >= 0);
  if (n == 0) return;
  if (s == Storage::F32)
    swiglu_backward_kernel<<<grid_for(n), 256, 0, ctx.stream()>>>(
        static_cast<const float*>(gate), static_cast<const float*>(up), static_cast<const float*>(dout),
        static_cast<float*>(dgate), static_cast<float*>(dup), n);
  else
    swiglu_backward_kernel<<<grid_for(n), 256, 0, ctx.stream()>>>(
        static_cast<const __nv_bfloat16*>(gate), static_cast<const __nv_bfloat16*>(up),
        static_cast<const __nv_bfloat16*>(dout), static_cast<__nv_bfloat16*>(dgate), static_cast<__nv_bfloat16*>(dup), n);
  FT_CUDA_LAUNCH();
}

}  // namespace ftune::cuda

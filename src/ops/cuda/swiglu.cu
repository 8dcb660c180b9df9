// SwiGLU forward and backward kernels: elementwise, grid-stride, math in fp32.
#include <initializer_list>

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

// bf16, n a multiple of 8, 16-byte aligned: 8 elements a thread with 16-byte accesses.
__global__ void swiglu_forward_bf16x8(const uint4* gate, const uint4* up, uint4* out, int64_t n8) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n8;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    uint4 g = gate[i], u = up[i], o;
    const auto* gb = reinterpret_cast<const __nv_bfloat16*>(&g);
    const auto* ub = reinterpret_cast<const __nv_bfloat16*>(&u);
    auto* ob = reinterpret_cast<__nv_bfloat16*>(&o);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const float x = __bfloat162float(gb[j]);
      ob[j] = __float2bfloat16(x / (1.0f + __expf(-x)) * __bfloat162float(ub[j]));
    }
    out[i] = o;
  }
}

__global__ void swiglu_backward_bf16x8(const uint4* gate, const uint4* up, const uint4* dout, uint4* dgate, uint4* dup,
                                       int64_t n8) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n8;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    uint4 g = gate[i], u = up[i], d = dout[i], dg, du;
    const auto* gb = reinterpret_cast<const __nv_bfloat16*>(&g);
    const auto* ub = reinterpret_cast<const __nv_bfloat16*>(&u);
    const auto* db = reinterpret_cast<const __nv_bfloat16*>(&d);
    auto* dgb = reinterpret_cast<__nv_bfloat16*>(&dg);
    auto* dub = reinterpret_cast<__nv_bfloat16*>(&du);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const float x = __bfloat162float(gb[j]), y = __bfloat162float(ub[j]), dy = __bfloat162float(db[j]);
      const float sig = 1.0f / (1.0f + __expf(-x));
      dub[j] = __float2bfloat16(dy * x * sig);
      dgb[j] = __float2bfloat16(dy * y * sig * (1.0f + x * (1.0f - sig)));
    }
    dgate[i] = dg, dup[i] = du;
  }
}

bool vec8(int64_t n, std::initializer_list<const void*> ptrs) {
  if (n % 8) return false;
  for (const void* p : ptrs)
    if (reinterpret_cast<uintptr_t>(p) % 16) return false;
  return true;
}

}  // namespace

void swiglu_forward(const Context& ctx, Storage s, const void* gate, const void* up, void* out, int64_t n) {
  FT_ASSERT(n >= 0);
  if (n == 0) return;
  if (s == Storage::BF16 && vec8(n, {gate, up, out})) {
    swiglu_forward_bf16x8<<<grid_for(n / 8), 256, 0, ctx.stream()>>>(
        static_cast<const uint4*>(gate), static_cast<const uint4*>(up), static_cast<uint4*>(out), n / 8);
    FT_CUDA_LAUNCH();
    return;
  }
  dispatch(s, [&](auto* t) {
    using T = std::remove_pointer_t<decltype(t)>;
    swiglu_forward_kernel<<<grid_for(n), 256, 0, ctx.stream()>>>(static_cast<const T*>(gate), static_cast<const T*>(up),
                                                                    static_cast<T*>(out), n);
  });
  FT_CUDA_LAUNCH();
}

void swiglu_backward(const Context& ctx, Storage s, const void* gate, const void* up, const void* dout, void* dgate,
                     void* dup, int64_t n) {
  FT_ASSERT(n >= 0);
  if (n == 0) return;
  if (s == Storage::BF16 && vec8(n, {gate, up, dout, dgate, dup})) {
    swiglu_backward_bf16x8<<<grid_for(n / 8), 256, 0, ctx.stream()>>>(
        static_cast<const uint4*>(gate), static_cast<const uint4*>(up), static_cast<const uint4*>(dout),
        static_cast<uint4*>(dgate), static_cast<uint4*>(dup), n / 8);
    FT_CUDA_LAUNCH();
    return;
  }
  dispatch(s, [&](auto* t) {
    using T = std::remove_pointer_t<decltype(t)>;
    swiglu_backward_kernel<<<grid_for(n), 256, 0, ctx.stream()>>>(static_cast<const T*>(gate), static_cast<const T*>(up),
                                                                     static_cast<const T*>(dout), static_cast<T*>(dgate),
                                                                     static_cast<T*>(dup), n);
  });
  FT_CUDA_LAUNCH();
}

}  // namespace ftune::cuda

// Elementwise kernels: grid-stride loops, fp32 math on fp32, bf16 or fp16 storage.
#include <algorithm>

#include "core/dropout_hash.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/elementwise.h"
#include "ops/cuda/storage.cuh"

namespace ftune::cuda {

namespace {

#define FT_GRID_STRIDE(i, n)                                                                \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

template <typename X, typename Y>
__global__ void convert_kernel(const X* x, Y* y, int64_t n) {
  FT_GRID_STRIDE(i, n) st(y, i, ld(x, i));
}

// fp32 -> bf16, 8 elements a thread (two 16-byte loads, one 16-byte store).
__global__ void f32_to_bf16x8_kernel(const float4* x, uint4* y, int64_t n8) {
  FT_GRID_STRIDE(i, n8) {
    const float4 a = x[2 * i], b = x[2 * i + 1];
    uint4 o;
    auto* ob = reinterpret_cast<__nv_bfloat162*>(&o);
    ob[0] = __floats2bfloat162_rn(a.x, a.y), ob[1] = __floats2bfloat162_rn(a.z, a.w);
    ob[2] = __floats2bfloat162_rn(b.x, b.y), ob[3] = __floats2bfloat162_rn(b.z, b.w);
    y[i] = o;
  }
}

template <typename T>
__global__ void dropout_kernel(uint64_t key, float p, const T* x, T* out, int64_t n, int64_t first) {
  const float s = 1.0f / (1.0f - p);
  FT_GRID_STRIDE(i, n) st(out, i, dropout_keep(key, static_cast<uint64_t>(first + i), p) ? ld(x, i) * s : 0.0f);
}

template <typename T>
__global__ void dropout_backward_kernel(uint64_t key, float p, const float* dxd, T* dx, int64_t n, int64_t first) {
  const float s = 1.0f / (1.0f - p);
  FT_GRID_STRIDE(i, n) {
    if (dropout_keep(key, static_cast<uint64_t>(first + i), p)) st(dx, i, ld(dx, i) + dxd[i] * s);
  }
}

__device__ __forceinline__ uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

template <typename T>
__global__ void fill_normal_kernel(T* p, int64_t n, uint64_t seed, float mean, float std, int64_t first) {
  FT_GRID_STRIDE(i, n) {  // Box-Muller on two 24-bit uniforms from one 64-bit hash
    const uint64_t z = mix64(seed + (static_cast<uint64_t>(i + first) + 1) * 0x9E3779B97F4A7C15ull);
    const float u1 = (static_cast<float>(z >> 40) + 1.0f) * (1.0f / 16777217.0f);
    const float u2 = static_cast<float>((z >> 16) & 0xFFFFFFu) * (1.0f / 16777216.0f);
    st(p, i, mean + std * sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2));
  }
}

__global__ void add_into_kernel(const float* x, float* acc, int64_t n) {
  FT_GRID_STRIDE(i, n) acc[i] += x[i];
}

__global__ void gather_rows_kernel(const float* table, const int32_t* idx, int64_t n, int64_t width, float* out) {
  FT_GRID_STRIDE(i, n * width) out[i] = table[static_cast<int64_t>(idx[i / width]) * width + i % width];
}

// One fp64 atomic add per block (a block reduce first), over at most kSumBlocks blocks: an atomic
// per warp of a grid as wide as the data serialised ~10^6 adds on one address (2 ms for a 7B
// adapter's 40M gradients on an H100; now ~0.05 ms, the read of the data).
constexpr unsigned kSumBlocks = 1024, kSumThreads = 256;

__global__ void sum_squares_kernel(const float* x, int64_t n, double* acc) {
  __shared__ double warp_sums[kSumThreads / 32];
  double s = 0.0;
  FT_GRID_STRIDE(i, n) s += static_cast<double>(x[i]) * static_cast<double>(x[i]);
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    double b = 0.0;
    for (unsigned w = 0; w < kSumThreads / 32; ++w) b += warp_sums[w];
    atomicAdd(acc, b);
  }
}

template <typename T>
__global__ void count_nonfinite_kernel(const T* x, int64_t n, int* count) {
  int c = 0;
  FT_GRID_STRIDE(i, n) c += isfinite(ld(x, i)) ? 0 : 1;
  for (int o = 16; o > 0; o >>= 1) c += __shfl_xor_sync(0xffffffffu, c, o);
  if (threadIdx.x % 32 == 0 && c) atomicAdd(count, c);
}

}  // namespace

void convert(const Context& ctx, Storage xs, const void* x, Storage ys, void* y, int64_t n) {
  if (n <= 0) return;
  const unsigned g = grid_for(n);
  if (xs == Storage::F32 && ys == Storage::BF16 && n % 8 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
      reinterpret_cast<uintptr_t>(y) % 16 == 0) {
    f32_to_bf16x8_kernel<<<grid_for(n / 8), 256, 0, ctx.stream()>>>(static_cast<const float4*>(x),
                                                                      static_cast<uint4*>(y), n / 8);
    FT_CUDA_LAUNCH();
    return;
  }
  if (xs == ys) return ctx.copy(y, x, static_cast<size_t>(n) * storage_bytes(xs));
  dispatch(xs, [&](auto* tx) {
    dispatch(ys, [&](auto* ty) {
      using X = std::remove_pointer_t<decltype(tx)>;
      using Y = std::remove_pointer_t<decltype(ty)>;
      convert_kernel<<<g, 256, 0, ctx.stream()>>>(static_cast<const X*>(x), static_cast<Y*>(y), n);
    });
  });
  FT_CUDA_LAUNCH();
}

void dropout_forward(const Context& ctx, Storage s, uint64_t key, float p, const void* x, void* out, int64_t n,
                     int64_t first) {
  if (n <= 0) return;
  dispatch(s, [&](auto* t) {
    using T = std::remove_pointer_t<decltype(t)>;
    dropout_kernel<<<grid_for(n), 256, 0, ctx.stream()>>>(key, p, static_cast<const T*>(x), static_cast<T*>(out), n,
                                                               first);
  });
  FT_CUDA_LAUNCH();
}

void dropout_backward_add(const Context& ctx, uint64_t key, float p, const float* dxd, Storage dxs, void* dx,
                          int64_t n, int64_t first) {
  if (n <= 0) return;
  dispatch(dxs, [&](auto* t) {
    using T = std::remove_pointer_t<decltype(t)>;
    dropout_backward_kernel<<<grid_for(n), 256, 0, ctx.stream()>>>(key, p, dxd, static_cast<T*>(dx), n, first);
  });
  FT_CUDA_LAUNCH();
}

void fill_normal(const Context& ctx, Storage s, void* p, int64_t n, uint64_t seed, float mean, float std,
                 int64_t first) {
  if (n <= 0) return;
  dispatch(s, [&](auto* t) {
    using T = std::remove_pointer_t<decltype(t)>;
    fill_normal_kernel<<<grid_for(n), 256, 0, ctx.stream()>>>(static_cast<T*>(p), n, seed, mean, std, first);
  });
  FT_CUDA_LAUNCH();
}

void add_into(const Context& ctx, const float* x, float* acc, int64_t n) {
  if (n <= 0) return;
  add_into_kernel<<<grid_for(n), 256, 0, ctx.stream()>>>(x, acc, n);
  FT_CUDA_LAUNCH();
}

void gather_rows(const Context& ctx, const float* table, const int32_t* idx, int64_t n, int64_t width, float* out) {
  if (n <= 0 || width <= 0) return;
  gather_rows_kernel<<<grid_for(n * width), 256, 0, ctx.stream()>>>(table, idx, n, width, out);
  FT_CUDA_LAUNCH();
}

void sum_squares(const Context& ctx, const float* x, int64_t n, double* acc) {
  if (n <= 0) return;
  sum_squares_kernel<<<std::min(grid_for(n), kSumBlocks), kSumThreads, 0, ctx.stream()>>>(x, n, acc);
  FT_CUDA_LAUNCH();
}

void count_nonfinite(const Context& ctx, Storage s, const void* x, int64_t n, int* count) {
  if (n <= 0) return;
  dispatch(s, [&](auto* t) {
    using T = std::remove_pointer_t<decltype(t)>;
    count_nonfinite_kernel<<<grid_for(n), 256, 0, ctx.stream()>>>(static_cast<const T*>(x), n, count);
  });
  FT_CUDA_LAUNCH();
}

}  // namespace ftune::cuda

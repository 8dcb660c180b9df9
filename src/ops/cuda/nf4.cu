// NF4 kernels: quantization (one warp per block, the CPU reference's operations in the same
// order), double quantization of the block scales, the vectorized dequantization to bf16 or fp16, and a
// random fill. The NF4 table and thresholds are repeated here from quant/nf4.cpp (ftune_cuda cannot
// link against ftune_lib); the GPU tests compare both bit for bit.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cfloat>
#include <cstdint>

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/nf4.h"
#include "ops/cuda/storage.cuh"

namespace ftune::cuda {

namespace {

// Passed by value: kernel parameters live in constant memory, so the unrolled comparisons read
// them as constant operands.
struct Nf4Thresholds {
  float t[15];  // [15] bitsandbytes' float32 midpoints, ascending
};
struct Nf4Table {
  float v[16];  // [16] NF4 code values
};

Nf4Thresholds nf4_thresholds() {
  return {{-0.8480964004993439f, -0.6106329262256622f, -0.4599952697753906f, -0.33967943489551544f,
           -0.23460740596055984f, -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f,
           0.1202552504837513f, 0.2035212516784668f, 0.2920137718319893f, 0.3893125355243683f,
           0.5016634166240692f, 0.6427869200706482f, 0.8614784181118011f}};
}

Nf4Table nf4_table() {
  return {{-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f, -0.28444138169288635f,
           -0.18477343022823334f, -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f,
           0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,
           0.7229568362236023f, 1.0f}};
}

void check_blocksize(const char* who, int64_t bs, int64_t n) {
  if (bs < 32 || bs > 4096 || (bs & (bs - 1)) != 0)
    fail("cuda::{}: blocksize {} is not one of 32, 64, ..., 4096", who, bs);
  if (n < 0) fail("cuda::{}: negative element count {}", who, n);
}

void check_half_storage(Storage s) {
  if (s != Storage::BF16 && s != Storage::F16) fail("cuda::nf4_dequantize: the output must be bf16 or fp16");
}

__device__ __forceinline__ float reciprocal(float m, Nf4Reciprocal r) {
  if (r == Nf4Reciprocal::BnbFastMath) {
    float y;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(m));
    return y;
  }
  return __frcp_rn(m);
}

// Number of thresholds strictly below y: bitsandbytes' dQuantizeNF4 tree (NaN -> 0).
__device__ __forceinline__ uint32_t nf4_encode(float y, const Nf4Thresholds& th) {
  uint32_t c = 0;
#pragma unroll
  for (int k = 0; k < 15; ++k) c += y > th.t[k] ? 1u : 0u;
  return c;
}

// bitsandbytes' dQuantize<0> over a 256-entry ascending map in shared memory.
__device__ __forceinline__ uint8_t quantize_dynamic(const float* code, float y) {
  int pivot = 127, upper_pivot = 255, lower_pivot = 0;
  float lower = -1.0f, upper = 1.0f, val = code[pivot];
#pragma unroll
  for (int step = 64; step > 0; step >>= 1) {
    if (y > val) {
      lower_pivot = pivot, lower = val, pivot += step;
    } else {
      upper_pivot = pivot, upper = val, pivot -= step;
    }
    val = code[pivot];
  }
  if (upper_pivot == 255) upper = code[255];
  if (lower_pivot == 0) lower = code[0];
  if (y > val) return static_cast<uint8_t>(y > __fmul_rn(__fadd_rn(upper, val), 0.5f) ? upper_pivot : pivot);
  return static_cast<uint8_t>(y < __fmul_rn(__fadd_rn(lower, val), 0.5f) ? lower_pivot : pivot);
}

__device__ __forceinline__ float warp_max(float m) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  return m;
}

// One warp per block of `blocksize` elements.
template <typename T>
__global__ void nf4_quantize_kernel(const T* x, int64_t n, int64_t blocksize, int64_t nblocks, uint8_t* packed,
                                    float* absmax, Nf4Reciprocal rcp, Nf4Thresholds th) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (b >= nblocks) return;  // uniform across the warp
  const int64_t begin = b * blocksize, count = n - begin < blocksize ? n - begin : blocksize;
  float m = -FLT_MAX;
  for (int64_t i = lane; i < count; i += 32) m = fmaxf(m, fabsf(ld(x, begin + i)));
  m = warp_max(m);
  if (count < blocksize) m = fmaxf(m, 0.0f);  // the kernel's zero padding of a cut block
  if (lane == 0) absmax[b] = m;
  const float inv = reciprocal(m, rcp);
  for (int64_t p = lane; 2 * p < count; p += 32) {
    const float hi = __fmul_rn(ld(x, begin + 2 * p), inv);
    const float lo = __fmul_rn(2 * p + 1 < count ? ld(x, begin + 2 * p + 1) : 0.0f, inv);
    packed[begin / 2 + p] = static_cast<uint8_t>(nf4_encode(hi, th) << 4 | nf4_encode(lo, th));
  }
}

// One warp per 256 absmax values: quantize_blockwise(absmax - offset, 256) with the dynamic map.
__global__ void nf4_quantize_absmax_kernel(const float* absmax, int64_t nblocks, float offset, const float* code2,
                                           uint8_t* absmax_q, float* absmax2, Nf4Reciprocal rcp) {
  __shared__ float code[256];
  for (int i = threadIdx.x; i < 256; i += blockDim.x) code[i] = code2[i];
  __syncthreads();
  const int64_t j = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int64_t nb2 = (nblocks + 255) / 256;
  if (j >= nb2) return;
  const int64_t begin = j * 256, count = nblocks - begin < 256 ? nblocks - begin : 256;
  float d[8];
  float m = -FLT_MAX;
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    const int64_t i = lane + 32 * k;
    d[k] = i < count ? __fsub_rn(absmax[begin + i], offset) : 0.0f;
    if (i < count) m = fmaxf(m, fabsf(d[k]));
  }
  m = warp_max(m);
  if (count < 256) m = fmaxf(m, 0.0f);
  if (lane == 0) absmax2[j] = m;
  const float inv = reciprocal(m, rcp);
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    const int64_t i = lane + 32 * k;
    if (i < count) absmax_q[begin + i] = quantize_dynamic(code, __fmul_rn(d[k], inv));
  }
}

// Block scale of a nested weight: code2[q] * absmax2 + offset, rounded after each step like
// bitsandbytes' dequantize_blockwise followed by torch's `absmax += offset`.
struct NestedScale {
  const uint8_t* absmax_q;  // [nblocks]
  const float* absmax2;     // [ceil(nblocks/256)]
  const float* code2;       // [256]
  float offset;
  const float* offset_at;   // [1] on the device, read instead of `offset` when set
  __device__ __forceinline__ float operator()(int64_t b) const {
    const float o = offset_at ? __ldg(offset_at) : offset;
    return __fadd_rn(__fmul_rn(__ldg(code2 + __ldg(absmax_q + b)), __ldg(absmax2 + (b >> 8))), o);
  }
};

struct PlainScale {
  const float* absmax;  // [nblocks]
  __device__ __forceinline__ float operator()(int64_t b) const { return __ldg(absmax + b); }
};

constexpr int kDequantThreads = 256;
constexpr int kDequantItems = 4;  // 32-bit words (8 elements each) per thread

// Thread t of a tile handles words tile + k*256 + t, so every load (128 B a warp) and every
// 16-byte store (512 B a warp) is contiguous across the warp. A word's 8 elements share a block
// because blocksize >= 32.
// Two values rounded to the output storage (bf16 or fp16: the T4 path), packed in 32 bits.
template <bool kHalf>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  if constexpr (kHalf) {
    const __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  } else {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
}

template <class Scale, bool kHalf>
__global__ void __launch_bounds__(kDequantThreads)
    nf4_dequant_kernel(const uint32_t* packed, int64_t nwords, int log2_bs, Scale scale, Nf4Table table, uint4* out) {
  __shared__ float lut[16];  // 16 words in 16 banks: lookups never conflict
  if (threadIdx.x < 16) lut[threadIdx.x] = table.v[threadIdx.x];
  __syncthreads();
  const int64_t tile = static_cast<int64_t>(blockIdx.x) * kDequantThreads * kDequantItems + threadIdx.x;
  uint32_t w[kDequantItems];
#pragma unroll
  for (int k = 0; k < kDequantItems; ++k) {
    const int64_t i = tile + k * kDequantThreads;
    w[k] = i < nwords ? __ldg(packed + i) : 0u;
  }
  float a[kDequantItems];  // all scale loads in flight before any use
#pragma unroll
  for (int k = 0; k < kDequantItems; ++k) {
    const int64_t i = tile + k * kDequantThreads;
    a[k] = i < nwords ? scale((i * 8) >> log2_bs) : 0.0f;
  }
#pragma unroll
  for (int k = 0; k < kDequantItems; ++k) {
    const int64_t i = tile + k * kDequantThreads;
    if (i >= nwords) break;
    uint32_t o[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {  // byte j (lowest address first) = elements 2j (high nibble), 2j+1
      const uint32_t byte = (w[k] >> (8 * j)) & 0xffu;
      o[j] = pack2<kHalf>(__fmul_rn(lut[byte >> 4], a[k]), __fmul_rn(lut[byte & 15u], a[k]));
    }
    out[i] = make_uint4(o[0], o[1], o[2], o[3]);
  }
}

// Elements [begin, n), one a thread: the tail after the vectorized part, or everything when the
// pointers are not aligned for it.
template <class Scale, bool kHalf>
__global__ void nf4_dequant_scalar_kernel(const uint8_t* packed, int64_t begin, int64_t n, int log2_bs, Scale scale,
                                          Nf4Table table, uint16_t* out) {
  for (int64_t e = begin + blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint32_t byte = packed[e >> 1];
    const uint32_t nib = (e & 1) ? byte & 15u : byte >> 4;
    const float v = __fmul_rn(table.v[nib], scale(e >> log2_bs));
    if constexpr (kHalf)
      out[e] = __half_as_ushort(__float2half_rn(v));
    else
      out[e] = __bfloat16_as_ushort(__float2bfloat16_rn(v));
  }
}

template <bool kHalf, class Scale>
void launch_dequant(const Context& ctx, const uint8_t* packed, int64_t n, int64_t blocksize, Scale scale, void* out) {
  if (n == 0) return;
  const int log2_bs = __builtin_ctzll(static_cast<unsigned long long>(blocksize));
  const bool aligned = reinterpret_cast<uintptr_t>(packed) % 4 == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0;
  const int64_t nwords = aligned ? n / 8 : 0;
  if (nwords > 0) {
    const int64_t per_cta = int64_t{kDequantThreads} * kDequantItems;
    const auto grid = static_cast<unsigned>((nwords + per_cta - 1) / per_cta);
    nf4_dequant_kernel<Scale, kHalf><<<grid, kDequantThreads, 0, ctx.stream()>>>(
        reinterpret_cast<const uint32_t*>(packed), nwords, log2_bs, scale, nf4_table(), static_cast<uint4*>(out));
    FT_CUDA_LAUNCH();
  }
  if (nwords * 8 < n) {
    nf4_dequant_scalar_kernel<Scale, kHalf><<<grid_for(n - nwords * 8), 256, 0, ctx.stream()>>>(
        packed, nwords * 8, n, log2_bs, scale, nf4_table(), static_cast<uint16_t*>(out));
    FT_CUDA_LAUNCH();
  }
}

__device__ __forceinline__ uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

__global__ void nf4_fill_random_kernel(uint8_t* packed, int64_t nbytes, uint8_t* absmax_q, int64_t nblocks,
                                       float* absmax2, int64_t nb2, uint64_t seed, float scale2) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const uint64_t s1 = mix64(seed ^ 0x6E66345F636F6465ull), s2 = mix64(seed ^ 0x6E66345F61627378ull);
  for (int64_t i = first; i < nbytes; i += stride)
    packed[i] = static_cast<uint8_t>(mix64(s1 + static_cast<uint64_t>(i) * 0x9E3779B97F4A7C15ull) >> 56);
  for (int64_t i = first; i < nblocks; i += stride)
    absmax_q[i] = static_cast<uint8_t>(mix64(s2 + static_cast<uint64_t>(i) * 0x9E3779B97F4A7C15ull) >> 56);
  for (int64_t i = first; i < nb2; i += stride) absmax2[i] = scale2;
}

}  // namespace

void nf4_quantize(const Context& ctx, Storage s, const void* x, int64_t n, int64_t blocksize, uint8_t* packed,
                  float* absmax, Nf4Reciprocal rcp) {
  check_blocksize("nf4_quantize", blocksize, n);
  const int64_t nblocks = (n + blocksize - 1) / blocksize;
  if (nblocks == 0) return;
  const auto grid = static_cast<unsigned>((nblocks + 7) / 8);  // 8 warps a CTA
  if (s == Storage::F32)
    nf4_quantize_kernel<<<grid, 256, 0, ctx.stream()>>>(static_cast<const float*>(x), n, blocksize, nblocks, packed,
                                                        absmax, rcp, nf4_thresholds());
  else
    nf4_quantize_kernel<<<grid, 256, 0, ctx.stream()>>>(static_cast<const __nv_bfloat16*>(x), n, blocksize, nblocks,
                                                        packed, absmax, rcp, nf4_thresholds());
  FT_CUDA_LAUNCH();
}

void nf4_quantize_absmax(const Context& ctx, const float* absmax, int64_t nblocks, float offset, const float* code2,
                         uint8_t* absmax_q, float* absmax2, Nf4Reciprocal rcp) {
  if (nblocks < 0) fail("cuda::nf4_quantize_absmax: negative block count {}", nblocks);
  const int64_t nb2 = (nblocks + 255) / 256;
  if (nb2 == 0) return;
  const auto grid = static_cast<unsigned>((nb2 + 7) / 8);
  nf4_quantize_absmax_kernel<<<grid, 256, 0, ctx.stream()>>>(absmax, nblocks, offset, code2, absmax_q, absmax2, rcp);
  FT_CUDA_LAUNCH();
}

void nf4_dequantize_bf16(const Context& ctx, const uint8_t* packed, const uint8_t* absmax_q, const float* absmax2,
                         float offset, const float* code2, int64_t n, int64_t blocksize, void* out_bf16) {
  nf4_dequantize(ctx, Storage::BF16, packed, absmax_q, absmax2, offset, code2, n, blocksize, out_bf16);
}

void nf4_dequantize_bf16(const Context& ctx, const uint8_t* packed, const float* absmax, int64_t n, int64_t blocksize,
                         void* out_bf16) {
  nf4_dequantize(ctx, Storage::BF16, packed, absmax, n, blocksize, out_bf16);
}

void nf4_dequantize(const Context& ctx, Storage out_storage, const uint8_t* packed, const uint8_t* absmax_q,
                    const float* absmax2, float offset, const float* code2, int64_t n, int64_t blocksize, void* out) {
  check_blocksize("nf4_dequantize", blocksize, n);
  check_half_storage(out_storage);
  const NestedScale sc{absmax_q, absmax2, code2, offset, nullptr};
  if (out_storage == Storage::F16)
    launch_dequant<true>(ctx, packed, n, blocksize, sc, out);
  else
    launch_dequant<false>(ctx, packed, n, blocksize, sc, out);
}

void nf4_dequantize(const Context& ctx, Storage out_storage, const uint8_t* packed, const uint8_t* absmax_q,
                    const float* absmax2, const float* offset_at, const float* code2, int64_t n, int64_t blocksize,
                    void* out) {
  check_blocksize("nf4_dequantize", blocksize, n);
  check_half_storage(out_storage);
  const NestedScale sc{absmax_q, absmax2, code2, 0.0f, offset_at};
  if (out_storage == Storage::F16)
    launch_dequant<true>(ctx, packed, n, blocksize, sc, out);
  else
    launch_dequant<false>(ctx, packed, n, blocksize, sc, out);
}

void nf4_dequantize(const Context& ctx, Storage out_storage, const uint8_t* packed, const float* absmax, int64_t n,
                    int64_t blocksize, void* out) {
  check_blocksize("nf4_dequantize", blocksize, n);
  check_half_storage(out_storage);
  if (out_storage == Storage::F16)
    launch_dequant<true>(ctx, packed, n, blocksize, PlainScale{absmax}, out);
  else
    launch_dequant<false>(ctx, packed, n, blocksize, PlainScale{absmax}, out);
}

void nf4_fill_random(const Context& ctx, uint8_t* packed, uint8_t* absmax_q, float* absmax2, int64_t n,
                     int64_t blocksize, uint64_t seed, float absmax_mean) {
  check_blocksize("nf4_fill_random", blocksize, n);
  const int64_t nblocks = (n + blocksize - 1) / blocksize, nb2 = (nblocks + 255) / 256;
  if (n == 0) return;
  nf4_fill_random_kernel<<<grid_for((n + 1) / 2), 256, 0, ctx.stream()>>>(packed, (n + 1) / 2, absmax_q, nblocks,
                                                                           absmax2, nb2, seed, 0.2f * absmax_mean);
  FT_CUDA_LAUNCH();
}

}  // namespace ftune::cuda

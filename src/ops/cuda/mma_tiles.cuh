// Tensor-core building blocks of the flash attention kernels on sm_75 and sm_80+: PTX wrappers for
// cp.async, ldmatrix, mma.sync (m16n8k16 bf16/fp16, or two m16n8k8 fp16 on sm_75) and vector
// reductions, fragment helpers, and swizzled shared-memory tiles. Device-only, inline.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace ftune::cuda::mma_tiles {

using bf16 = __nv_bfloat16;
using fp16 = __half;

// Whether this compilation pass may emit a path's instructions: the Turing path needs sm_75
// (ldmatrix, mma m16n8k8 fp16), the other sm_80 (cp.async, mma m16n8k16, bf16). False on the host.
template <bool kTuring>
__host__ __device__ constexpr bool arch_has_path() {
#if defined(__CUDA_ARCH__)
  return __CUDA_ARCH__ >= (kTuring ? 750 : 800);
#else
  return false;
#endif
}

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, zero-filled when !valid (src must still be a mapped address).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(valid ? 16 : 0));
#else
  __trap();  // unreachable: only kernels of the sm_80 path call it, compiled where arch_has_path<false>()
#endif
}
__device__ __forceinline__ void cp_async4(void* dst, const void* src, bool valid) {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(valid ? 4 : 0));
#else
  __trap();
#endif
}
__device__ __forceinline__ void cp_commit() {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}
template <int N>
__device__ __forceinline__ void cp_wait() {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

// 4 bytes global -> shared, zero when !valid: by cp.async (kAsync, sm_80+), else a plain load and
// store, which the next __syncthreads() publishes.
template <bool kAsync, typename T>
__device__ __forceinline__ void copy4(T* dst, const T* src, bool valid) {
  static_assert(sizeof(T) == 4);
  if constexpr (kAsync) cp_async4(dst, src, valid);
  else *dst = valid ? __ldg(src) : T{};
}

__device__ __forceinline__ void ldsm(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldsm_t(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}

// c[16x8] += a[16x16] (row) * b[16x8] (col), fp32 accumulate, E (bf16 or fp16) inputs; fragment
// layouts as in the PTX ISA, g = lane / 4, t = lane % 4: a[0] = A[g][2t..2t+1], a[1] = A[g+8][2t..],
// a[2] = A[g][8+2t..], a[3] = A[g+8][8+2t..]; b0 = B[2t..2t+1][g], b1 = B[8+2t..][g]; c = C[g][2t..],
// C[g+8][2t..]. kTuring: sm_75 has no k16 shape, so two m16n8k8 (A = {A[g][2t..], A[g+8][2t..]},
// B = B[2t..][g], C as above) over k 0..7 ({a[0], a[1]}, b0) and k 8..15 ({a[2], a[3]}, b1).
template <typename E, bool kTuring>
__device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (kTuring) {
    static_assert(std::is_same_v<E, fp16>, "sm_75 tensor cores have no bf16 mma");
    asm("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(b0));
    asm("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[2]), "r"(a[3]), "r"(b1));
  } else if constexpr (std::is_same_v<E, bf16>) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    static_assert(std::is_same_v<E, fp16>);
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Two floats rounded to E (lo in the low half), and back.
template <typename E>
__device__ __forceinline__ uint32_t pack(float lo, float hi) {
  if constexpr (std::is_same_v<E, bf16>) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  } else {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
}
template <typename E>
__device__ __forceinline__ float2 unpack(uint32_t x) {
  if constexpr (std::is_same_v<E, bf16>) {
    __nv_bfloat162 v;
    __builtin_memcpy(&v, &x, 4);
    return __bfloat1622float2(v);
  } else {
    __half2 v;
    __builtin_memcpy(&v, &x, 4);
    return __half22float2(v);
  }
}

// Two fp32 adds into global memory (one vector reduction on sm_90).
__device__ __forceinline__ void red_add2(float* p, float a, float b) {
#if __CUDA_ARCH__ >= 900
  asm volatile("red.global.add.v2.f32 [%0], {%1, %2};\n" ::"l"(p), "f"(a), "f"(b) : "memory");
#else
  atomicAdd(p, a);
  atomicAdd(p + 1, b);
#endif
}

// C fragments of two adjacent n-tiles (keys 16kk..16kk+15) as the A fragment of the next mma.
template <typename E>
__device__ __forceinline__ void c_to_a(uint32_t (&a)[4], const float (&c0)[4], const float (&c1)[4]) {
  a[0] = pack<E>(c0[0], c0[1]);
  a[1] = pack<E>(c0[2], c0[3]);
  a[2] = pack<E>(c1[0], c1[1]);
  a[3] = pack<E>(c1[2], c1[3]);
}

__device__ __forceinline__ int warp_min(int x) {
  for (int o = 16; o > 0; o >>= 1) x = min(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
__device__ __forceinline__ int warp_max(int x) {
  for (int o = 16; o > 0; o >>= 1) x = max(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

// Element offset of (row, col) in a [rows, kCols] 16-bit tile whose 16-byte chunks are XOR-swizzled
// so that the 8 rows one ldmatrix reads at a fixed column hit the 8 different 16-byte bank groups of
// 128 bytes: by row % 8 when a row has 8 or more chunks, by (row / 2) % 4 when it has 4 (two rows
// share 128 bytes, row parity already picks the half).
template <int kCols>
__device__ __forceinline__ int swz(int row, int col) {
  constexpr int kChunks = kCols / 8;
  static_assert(kCols % 8 == 0 && kChunks >= 4 && (kChunks & (kChunks - 1)) == 0);
  const int x = kChunks >= 8 ? (row & 7) : ((row >> 1) & (kChunks - 1));
  return row * kCols + (((col >> 3) ^ x) << 3) + (col & 7);
}

// Loads a [kRows, kCols] tile whose row r is g + r * ld (rows >= valid zero-filled) into swizzled
// shared memory: by cp.async (kAsync), else through registers, all of a thread's loads issued before
// its first store so that their latencies overlap.
template <bool kAsync, int kRows, int kCols, int kThreads, typename E>
__device__ __forceinline__ void load_tile(E* s, const E* g, int64_t ld, int valid, int tid) {
  static_assert(sizeof(E) == 2);
  constexpr int kChunks = kRows * kCols / 8, kPerRow = kCols / 8, kPer = kChunks / kThreads;
  static_assert(kChunks % kThreads == 0);
  if constexpr (kAsync) {
    // A trip count unknown to the compiler keeps this loop compact: unrolled, it costs the sm_80
    // kernels registers that they then spill.
#pragma unroll
    for (int c = tid; c < kChunks; c += kThreads) {
      const int r = c / kPerRow, ch = c % kPerRow;
      const bool ok = r < valid;
      cp_async16(s + swz<kCols>(r, ch * 8), g + (ok ? r : 0) * ld + ch * 8, ok);
    }
  } else {
    uint4 v[kPer];
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const int c = tid + i * kThreads, r = c / kPerRow, ch = c % kPerRow;
      v[i] = r < valid ? __ldg(reinterpret_cast<const uint4*>(g + r * ld + ch * 8)) : make_uint4(0u, 0u, 0u, 0u);
    }
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const int c = tid + i * kThreads, r = c / kPerRow, ch = c % kPerRow;
      *reinterpret_cast<uint4*>(s + swz<kCols>(r, ch * 8)) = v[i];
    }
  }
}

}  // namespace ftune::cuda::mma_tiles

// NF4 on the GPU: quantization bit-identical to quant/nf4.cpp (and so to bitsandbytes), the
// bandwidth-bound dequantization into bf16 that QLoRA runs before every base-weight GEMM, and a
// random NF4 fill for benchmarks of models that have no file here.
#pragma once
#include <cstdint>

#include "ops/cuda/context.h"
#include "ops/cuda/storage.h"

namespace ftune::cuda {

// How 1/absmax is computed. Ieee (default) is the correctly rounded reciprocal that the CPU
// reference uses. BnbFastMath is rcp.approx.ftz.f32, which bitsandbytes' --use_fast_math build
// emits for `1.0f / absmax`: it matches bitsandbytes' own CUDA output, not the CPU reference.
enum class Nf4Reciprocal { Ieee, BnbFastMath };

// First stage: x [n] (F32 or BF16 storage) -> packed [(n+1)/2] codes, absmax [ceil(n/blocksize)]
// fp32. blocksize: a power of two in [32, 4096].
void nf4_quantize(const Context& ctx, Storage s, const void* x, int64_t n, int64_t blocksize, uint8_t* packed,
                  float* absmax, Nf4Reciprocal rcp = Nf4Reciprocal::Ieee);

// Double quantization with a given offset (nf4_absmax_mean on the host, so that the mean is the
// CPU's): absmax [nblocks] fp32, code2 [256] fp32 (dynamic_map(true)) -> absmax_q [nblocks],
// absmax2 [ceil(nblocks/256)].
void nf4_quantize_absmax(const Context& ctx, const float* absmax, int64_t nblocks, float offset, const float* code2,
                         uint8_t* absmax_q, float* absmax2, Nf4Reciprocal rcp = Nf4Reciprocal::Ieee);

// out_bf16 [n] = bf16(nf4[nibble] * absmax_f32[block]) with the nested absmax rebuilt as
// code2[absmax_q[b]] * absmax2[b/256] + offset (two rounded fp32 operations, never an FMA).
// packed [(n+1)/2], absmax_q [nblocks], absmax2 [ceil(nblocks/256)], code2 [256]: device pointers.
void nf4_dequantize_bf16(const Context& ctx, const uint8_t* packed, const uint8_t* absmax_q, const float* absmax2,
                         float offset, const float* code2, int64_t n, int64_t blocksize, void* out_bf16);

// The same with fp32 absmax [nblocks] (a weight saved without double quantization).
void nf4_dequantize_bf16(const Context& ctx, const uint8_t* packed, const float* absmax, int64_t n, int64_t blocksize,
                         void* out_bf16);

// The same two into bf16 or fp16 (out_storage): fp16 is the T4's QLoRA (bitsandbytes dequantizes
// into the compute dtype, torch_dtype=float16 there); the values are the same fp32 products, rounded
// to the output's format.
void nf4_dequantize(const Context& ctx, Storage out_storage, const uint8_t* packed, const uint8_t* absmax_q,
                    const float* absmax2, float offset, const float* code2, int64_t n, int64_t blocksize, void* out);
void nf4_dequantize(const Context& ctx, Storage out_storage, const uint8_t* packed, const float* absmax, int64_t n,
                    int64_t blocksize, void* out);
// The nested form with the offset read from device memory (offset_at [1]): a sharded base keeps
// each weight's offset beside its codes, so a rank that did not quantize it need not know it.
void nf4_dequantize(const Context& ctx, Storage out_storage, const uint8_t* packed, const uint8_t* absmax_q,
                    const float* absmax2, const float* offset_at, const float* code2, int64_t n, int64_t blocksize,
                    void* out);

// Random nested NF4 data made on the device from `seed`: packed [(n+1)/2] codes uniform over the
// 16 values (NF4 bins hold equal mass of a normal, so real weights look the same), absmax_q
// [nblocks] uniform bytes, absmax2 [ceil(nblocks/256)] = 0.2 * absmax_mean. Dequantize with
// offset = absmax_mean and code2 = dynamic_map(true): block scales then lie in
// [0.8, 1.2] * absmax_mean and values have a standard deviation of about 0.52 * absmax_mean
// (0.05 gives N(0, 0.026)-like weights).
void nf4_fill_random(const Context& ctx, uint8_t* packed, uint8_t* absmax_q, float* absmax2, int64_t n,
                     int64_t blocksize, uint64_t seed, float absmax_mean = 0.05f);

}  // namespace ftune::cuda

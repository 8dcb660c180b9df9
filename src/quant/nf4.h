// NF4 4-bit blockwise quantization with double quantization of the block scales, bit-compatible
// with bitsandbytes' quantize_4bit(quant_type="nf4") (Dettmers et al., "QLoRA", arXiv:2305.14314;
// bitsandbytes functional.py quantize_4bit and csrc/kernels.cu kQuantizeBlockwise). The CPU version is
// the reference that the CUDA kernels (ops/cuda/nf4.cu) are tested against.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "quant/dynamic_map.h"

namespace ftune {

// Values per block of the second (8-bit) quantization of the absmax values; bitsandbytes fixes it.
constexpr int64_t kNf4NestedBlocksize = 256;

// The 16 NF4 code values, ascending, index 7 exactly 0 (bitsandbytes' get_4bit_type("nf4")).
const std::array<float, 16>& nf4_code();

// dQuantizeNF4's 15 thresholds, ascending, as the compiler rounds bitsandbytes' float literals: each
// decimal (a midpoint of adjacent codes, computed in double) rounded directly to float32. For
// indexes 0, 8, 12 and 14 that is not float(double(literal)), which a double-rounding reimplementation
// (numpy, torch) would get wrong on exact thresholds.
const std::array<float, 15>& nf4_thresholds();

// A quantized tensor. Element i lives in block i / blocksize; its value is
// nf4_code()[nibble(i)] * absmax_f32[block], where absmax_f32 is `absmax` or, when nested,
// code2[absmax_q[b]] * absmax2[b / 256] + offset (fp32 multiply, then fp32 add).
struct Nf4Tensor {
  std::vector<int64_t> shape;     // logical shape, e.g. [out, in] of a Linear weight
  int64_t numel = 0;              // product of shape
  int64_t blocksize = 64;         // elements per absmax block: a power of two in [32, 4096]
  std::string dtype = "float32";  // what the weight was and dequantizes to (bnb quant_state.dtype):
                                  // "bfloat16", "float16" or "float32"
  std::vector<uint8_t> packed;    // [(numel+1)/2] element 2j in the high nibble, 2j+1 in the low;
                                  // an odd numel pads the last low nibble with the code of 0.0
  bool nested = true;             // absmax double-quantized (bnb compress_statistics=True)
  std::vector<float> absmax;      // [nblocks()] fp32 max |x| per block; empty when nested
  std::vector<uint8_t> absmax_q;  // [nblocks()] indexes into code2; empty when !nested
  std::vector<float> absmax2;     // [nblocks2()] fp32 max |absmax - offset| per 256-block; nested only
  QuantMap code2{};               // [256] map absmax_q indexes: dynamic_map(true), or a file's
                                  // nested_quant_map; nested only
  float offset = 0.0f;            // mean of the fp32 absmax (nested only)

  int64_t nblocks() const { return (numel + blocksize - 1) / blocksize; }
  int64_t nblocks2() const { return nested ? (nblocks() + kNf4NestedBlocksize - 1) / kNf4NestedBlocksize : 0; }
};

// Quantizes x[numel(shape)] (row-major) the way bitsandbytes' CUDA kernel does: absmax per block
// (NaN ignored; a partial last block also counts its zero padding), y = x * (1.0f / absmax) with an
// IEEE float32 reciprocal, code = number of NF4 midpoints strictly below y (NaN -> 0), nibbles
// packed high-first. With double_quant the absmax values are then quantized by
// nf4_double_quantize with offset = nf4_absmax_mean(absmax). `dtype` is recorded as "float32".
Nf4Tensor nf4_quantize(const float* x, std::vector<int64_t> shape, int64_t blocksize = 64, bool double_quant = true);

// out: [t.numel] fp32 values (bf16 = round-to-nearest-even of these).
void nf4_dequantize(const Nf4Tensor& t, float* out);

// Checks every size against shape/blocksize/nested; `label` names the tensor in the one-line error.
void nf4_validate(const Nf4Tensor& t, const std::string& label);

// ---- the pieces, shared with the GPU path and the tests ----

// True for the blocksizes bitsandbytes accepts: 32, 64, ..., 4096.
bool nf4_valid_blocksize(int64_t blocksize);

// NF4 code of y = x * (1/absmax): the number of nf4_thresholds() strictly below y.
uint8_t nf4_encode(float y);

// First stage over x[n]: packed [(n+1)/2], absmax [ceil(n/blocksize)] fp32.
void nf4_quantize_blocks(const float* x, int64_t n, int64_t blocksize, uint8_t* packed, float* absmax);

// The double-quantization offset: the fp32 sum of absmax[nblocks] (accumulated in double, which is
// exact for any realistic range of block scales, then rounded once), divided in fp32 by nblocks.
// bitsandbytes takes torch's mean, whose summation order depends on the device (CPU: float cascade
// sum then / n; CUDA: tree sum times 1/n); both land within an ulp of this value (the fixtures
// record them), and a file's nested_offset is always read, never recomputed. 0 when nblocks == 0.
float nf4_absmax_mean(const float* absmax, int64_t nblocks);

// bitsandbytes quantize_blockwise(absmax - offset, blocksize=256) with the signed dynamic map:
// absmax_q [nblocks], absmax2 [ceil(nblocks/256)].
void nf4_double_quantize(const float* absmax, int64_t nblocks, float offset, const QuantMap& code2, uint8_t* absmax_q,
                         float* absmax2);

// absmax [nblocks] = code2[absmax_q[b]] * absmax2[b/256] + offset, rounded after each operation.
void nf4_absmax_dequantize(const uint8_t* absmax_q, const float* absmax2, float offset, const QuantMap& code2,
                           int64_t nblocks, float* absmax);

// bitsandbytes' non-stochastic 8-bit search (dQuantize<0>): a 7-step bisection from index 127, then
// the midpoint between the bracketing entries decides. It differs from quantize_to_map only on exact
// midpoints, where the tie goes toward the last bisection pivot instead of always down.
uint8_t quantize_dynamic_bnb(const QuantMap& code, float y);

}  // namespace ftune

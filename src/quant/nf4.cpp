// NF4 quantization on the CPU, mirroring bitsandbytes' kQuantizeBlockwise / dQuantizeNF4 /
// dQuantize<0> operation by operation so that codes and scales come out bit-identical.
// Every float operation below is a single IEEE fp32 operation; nothing may be fused into an FMA
// (the default x86-64 target has none, so GCC cannot contract).
#include "quant/nf4.h"

#include <algorithm>
#include <cfloat>
#include <cmath>

#include "core/error.h"

namespace ftune {

namespace {

// max |x| over [x, x+count) as the kernel reduces it: fmaxf from -FLT_MAX (NaN ignored); a block cut
// short by the end of the tensor also sees the zeros the kernel pads it with.
float block_absmax(const float* x, int64_t count, bool padded) {
  float m = -FLT_MAX;
  for (int64_t i = 0; i < count; ++i) m = std::fmax(m, std::fabs(x[i]));
  return padded ? std::fmax(m, 0.0f) : m;
}

}  // namespace

const std::array<float, 16>& nf4_code() {
  static const std::array<float, 16> kCode = {
      -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f, -0.28444138169288635f,
      -0.18477343022823334f, -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f,
      0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,
      0.7229568362236023f, 1.0f};
  return kCode;
}

const std::array<float, 15>& nf4_thresholds() {
  static const std::array<float, 15> kT = {
      -0.8480964004993439f, -0.6106329262256622f, -0.4599952697753906f, -0.33967943489551544f,
      -0.23460740596055984f, -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f,
      0.1202552504837513f, 0.2035212516784668f, 0.2920137718319893f, 0.3893125355243683f,
      0.5016634166240692f, 0.6427869200706482f, 0.8614784181118011f};
  return kT;
}

bool nf4_valid_blocksize(int64_t bs) { return bs >= 32 && bs <= 4096 && (bs & (bs - 1)) == 0; }

uint8_t nf4_encode(float y) {
  // The kernel's decision tree with strict '>' returns exactly this count; NaN compares false
  // everywhere and lands on code 0.
  uint8_t c = 0;
  for (float t : nf4_thresholds()) c += y > t ? 1 : 0;
  return c;
}

void nf4_quantize_blocks(const float* x, int64_t n, int64_t blocksize, uint8_t* packed, float* absmax) {
  FT_ASSERT(nf4_valid_blocksize(blocksize) && n >= 0);
  const int64_t nblocks = (n + blocksize - 1) / blocksize;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < nblocks; ++b) {
    const int64_t begin = b * blocksize, count = std::min(blocksize, n - begin);
    const float m = block_absmax(x + begin, count, count < blocksize);
    absmax[b] = m;
    const float inv = 1.0f / m;
    // blocksize is even, so a block owns whole bytes; the element past an odd n is the 0.0 padding.
    for (int64_t i = 0; i < count; i += 2) {
      const float hi = x[begin + i] * inv;
      const float lo = (i + 1 < count ? x[begin + i + 1] : 0.0f) * inv;
      packed[(begin + i) / 2] = static_cast<uint8_t>(nf4_encode(hi) << 4 | nf4_encode(lo));
    }
  }
}

float nf4_absmax_mean(const float* absmax, int64_t nblocks) {
  if (nblocks == 0) return 0.0f;
  double s = 0;
  for (int64_t i = 0; i < nblocks; ++i) s += absmax[i];
  return static_cast<float>(s) / static_cast<float>(nblocks);
}

uint8_t quantize_dynamic_bnb(const QuantMap& code, float y) {
  int pivot = 127, upper_pivot = 255, lower_pivot = 0;
  float lower = -1.0f, upper = 1.0f, val = code[pivot];
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
  if (y > val) return static_cast<uint8_t>(y > (upper + val) * 0.5f ? upper_pivot : pivot);
  return static_cast<uint8_t>(y < (lower + val) * 0.5f ? lower_pivot : pivot);
}

void nf4_double_quantize(const float* absmax, int64_t nblocks, float offset, const QuantMap& code2, uint8_t* absmax_q,
                         float* absmax2) {
  const int64_t bs = kNf4NestedBlocksize, nb2 = (nblocks + bs - 1) / bs;
#pragma omp parallel for schedule(static)
  for (int64_t j = 0; j < nb2; ++j) {
    const int64_t begin = j * bs, count = std::min(bs, nblocks - begin);
    float d[kNf4NestedBlocksize];
    for (int64_t i = 0; i < count; ++i) d[i] = absmax[begin + i] - offset;
    const float m = block_absmax(d, count, count < bs);
    absmax2[j] = m;
    const float inv = 1.0f / m;
    for (int64_t i = 0; i < count; ++i) absmax_q[begin + i] = quantize_dynamic_bnb(code2, d[i] * inv);
  }
}

void nf4_absmax_dequantize(const uint8_t* absmax_q, const float* absmax2, float offset, const QuantMap& code2,
                           int64_t nblocks, float* absmax) {
  for (int64_t b = 0; b < nblocks; ++b) {
    const float scaled = code2[absmax_q[b]] * absmax2[b / kNf4NestedBlocksize];
    absmax[b] = scaled + offset;
  }
}

Nf4Tensor nf4_quantize(const float* x, std::vector<int64_t> shape, int64_t blocksize, bool double_quant) {
  if (!nf4_valid_blocksize(blocksize))
    fail("nf4_quantize: blocksize {} is not one of 32, 64, ..., 4096", blocksize);
  Nf4Tensor t;
  t.numel = 1;
  for (int64_t d : shape) {
    if (d < 0) fail("nf4_quantize: negative dimension {} in the shape", d);
    t.numel *= d;
  }
  t.shape = std::move(shape);
  t.blocksize = blocksize;
  t.nested = double_quant;
  const int64_t nb = t.nblocks();
  t.packed.resize((t.numel + 1) / 2);
  std::vector<float> absmax(nb);
  nf4_quantize_blocks(x, t.numel, blocksize, t.packed.data(), absmax.data());
  if (!double_quant) {
    t.absmax = std::move(absmax);
    return t;
  }
  t.code2 = dynamic_map(true);
  t.offset = nf4_absmax_mean(absmax.data(), nb);
  t.absmax_q.resize(nb);
  t.absmax2.resize(t.nblocks2());
  nf4_double_quantize(absmax.data(), nb, t.offset, t.code2, t.absmax_q.data(), t.absmax2.data());
  return t;
}

void nf4_validate(const Nf4Tensor& t, const std::string& label) {
  int64_t n = 1;
  for (int64_t d : t.shape) n = d < 0 ? -1 : n * d;
  if (n != t.numel) fail("{}: numel {} does not match the shape's product {}", label, t.numel, n);
  if (!nf4_valid_blocksize(t.blocksize)) fail("{}: blocksize {} is not one of 32, 64, ..., 4096", label, t.blocksize);
  const auto want_packed = static_cast<size_t>((t.numel + 1) / 2), nb = static_cast<size_t>(t.nblocks());
  if (t.packed.size() != want_packed)
    fail("{}: {} packed bytes, expected {} for {} elements", label, t.packed.size(), want_packed, t.numel);
  if (!t.nested && t.absmax.size() != nb)
    fail("{}: {} absmax values, expected {} blocks of {}", label, t.absmax.size(), nb, t.blocksize);
  if (t.nested && t.absmax_q.size() != nb)
    fail("{}: {} quantized absmax values, expected {} blocks of {}", label, t.absmax_q.size(), nb, t.blocksize);
  if (t.nested && t.absmax2.size() != static_cast<size_t>(t.nblocks2()))
    fail("{}: {} nested absmax values, expected {}", label, t.absmax2.size(), t.nblocks2());
}

void nf4_dequantize(const Nf4Tensor& t, float* out) {
  nf4_validate(t, "nf4_dequantize");
  const int64_t nb = t.nblocks();
  std::vector<float> rebuilt;
  const float* absmax = t.absmax.data();
  if (t.nested) {
    rebuilt.resize(nb);
    nf4_absmax_dequantize(t.absmax_q.data(), t.absmax2.data(), t.offset, t.code2, nb, rebuilt.data());
    absmax = rebuilt.data();
  }
  const auto& code = nf4_code();
  const int64_t n = t.numel;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t begin = b * t.blocksize, end = std::min(begin + t.blocksize, n);
    for (int64_t i = begin; i < end; ++i) {
      const uint8_t byte = t.packed[i / 2];
      out[i] = code[i % 2 == 0 ? byte >> 4 : byte & 15] * absmax[b];
    }
  }
}

}  // namespace ftune

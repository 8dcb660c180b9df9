// CPU 8-bit blockwise AdamW. Every fp32 operation is written in the kernel's order and nothing may
// be fused: the CUDA twin (ops/cuda/adamw8bit.cu) uses explicitly rounded intrinsics, and here
// floating-point contraction into FMA is switched off for this file (x86-64 without -mfma has no
// FMA anyway; this keeps -march=native and aarch64 builds bit-identical too).
#include "ops/cpu/adamw8bit.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace ftune {

namespace {

// Max |x| over a block, NaN ignored (fmax semantics, as fmaxf in the kernel), starting from 0.
float block_absmax(const float* x, int64_t len) {
  float a = 0.0f;
  for (int64_t i = 0; i < len; ++i) a = std::fmax(a, std::fabs(x[i]));
  return a;
}

// The code of x in a block with the given absmax; the sign fix only with a signed map.
uint8_t requantize(const QuantMap& map, bool is_signed, float x, float absmax) {
  const float y = absmax > 0.0f ? x / absmax : x;  // absmax 0: x is +-0 (or NaN)
  uint8_t c = quantize_to_map(map, y);
  if (is_signed && std::signbit(map[c]) != std::signbit(x)) c = static_cast<uint8_t>(x > 0.0f ? c + 1 : c - 1);
  return c;
}

void quantize_block(const QuantMap& map, bool is_signed, const float* x, int64_t len, uint8_t* codes, float* absmax) {
  const float a = block_absmax(x, len);
  *absmax = a;
  for (int64_t i = 0; i < len; ++i) codes[i] = requantize(map, is_signed, x[i], a);
}

}  // namespace

void quantize_blockwise(const QuantMap& map, const float* x, int64_t n, uint8_t* codes, float* absmax) {
  FT_ASSERT(n >= 0);
  const bool is_signed = map[0] < 0.0f;
  const int64_t nb = adam8bit_blocks(n);
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t lo = b * kAdam8bitBlock, len = std::min(kAdam8bitBlock, n - lo);
    quantize_block(map, is_signed, x + lo, len, codes + lo, absmax + b);
  }
}

void dequantize_blockwise(const QuantMap& map, const uint8_t* codes, const float* absmax, int64_t n, float* out) {
  FT_ASSERT(n >= 0);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = map[codes[i]] * absmax[i / kAdam8bitBlock];
}

void adamw8bit_update(const AdamW8bitStep& s, float* p, const float* g, uint8_t* m_q, uint8_t* v_q, float* absmax_m,
                      float* absmax_v, int64_t n) {
  FT_ASSERT(n >= 0 && s.t >= 1);
  const Adam8bitConstants c = adam8bit_constants(s);
  const QuantMap& smap = dynamic_map(true);
  const QuantMap& umap = dynamic_map(false);
  const int64_t nb = adam8bit_blocks(n);
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t lo = b * kAdam8bitBlock, len = std::min(kAdam8bitBlock, n - lo);
    float m[kAdam8bitBlock], v[kAdam8bitBlock];
    const float am = absmax_m[b], av = absmax_v[b];
    for (int64_t j = 0; j < len; ++j) {
      const int64_t i = lo + j;
      if (!std::isfinite(g[i])) {
        m[j] = 0.0f, v[j] = 0.0f;
        continue;
      }
      const float gi = g[i] * c.grad_coef;
      float vi = umap[v_q[i]] * av;
      vi = vi * c.beta2 + (c.one_minus_beta2 * gi) * gi;
      float mi = smap[m_q[i]] * am;
      mi = mi * c.beta1 + c.one_minus_beta1 * gi;
      float pi = p[i] + c.step_size * (mi / (std::sqrt(vi) + c.c2_eps));
      if (c.apply_decay) pi = pi * c.decay;
      p[i] = pi, m[j] = mi, v[j] = vi;
    }
    quantize_block(smap, true, m, len, m_q + lo, absmax_m + b);
    quantize_block(umap, false, v, len, v_q + lo, absmax_v + b);
  }
}

void adam32_update(const AdamW8bitStep& s, float* p, const float* g, float* m, float* v, int64_t n) {
  FT_ASSERT(n >= 0 && s.t >= 1);
  const Adam8bitConstants c = adam8bit_constants(s);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i] * c.grad_coef;
    const float mi = m[i] * c.beta1 + c.one_minus_beta1 * gi;
    const float vi = v[i] * c.beta2 + c.one_minus_beta2 * (gi * gi);
    float pi = p[i] + c.step_size * (mi / (std::sqrt(vi) + c.c2_eps));
    if (c.apply_decay) pi = pi * c.decay;
    p[i] = pi, m[i] = mi, v[i] = vi;
  }
}

}  // namespace ftune

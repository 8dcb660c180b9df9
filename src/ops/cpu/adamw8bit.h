// bitsandbytes' 8-bit blockwise AdamW (Adam8bit/AdamW8bit) update over one flat fp32 vector, on the
// CPU: the reference twin of ops/cuda/adamw8bit.cu, bit for bit. The optimizer state that uses it
// is optim/adamw8bit.h. Formulas: Dettmers et al.,
// "8-bit Optimizers via Block-wise Quantization" (arXiv:2110.02861); bitsandbytes csrc/kernels.cu
// kOptimizer32bit2State / kOptimizerStatic8bit2StateBlockwise.
// This header is also compiled by nvcc (C++17), so it stays C++17.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "quant/dynamic_map.h"

namespace ftune {

inline constexpr int64_t kAdam8bitBlock = 256;    // elements per absmax (bnb's BLOCKSIZE_2STATE)
inline constexpr int64_t kMin8bitSize = 4096;     // smaller tensors keep fp32 states (bnb's min_8bit_size)

inline int64_t adam8bit_blocks(int64_t n) { return (n + kAdam8bitBlock - 1) / kAdam8bitBlock; }

// One update's settings; defaults are bnb's AdamW8bit (Adam8bit is the same with weight_decay 0).
struct AdamW8bitStep {
  float lr = 1e-3f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 1e-2f;
  int64_t t = 1;           // 1-based step, for the bias corrections
  float grad_coef = 1.0f;  // the gradient is read multiplied by this (global-norm clipping)
};

// The float constants of one update, computed once on the host and used unchanged by the CPU
// loop and the CUDA kernel, so both round identically. bnb computes c1, c2 in fp32 with __powf;
// here they come from double and are rounded once (within an ulp or so of bnb's).
struct Adam8bitConstants {
  float beta1, beta2;
  float one_minus_beta1, one_minus_beta2;  // 1 - beta in fp32, as bnb writes (1.0f - beta)
  float step_size;                         // -lr * c2 / c1, c1 = 1 - beta1^t, c2 = sqrt(1 - beta2^t)
  float c2_eps;                            // c2 * eps: the update is step_size * m / (sqrt(v) + c2_eps)
  float decay;                             // 1 - lr * weight_decay, applied after the step
  int apply_decay;                         // weight_decay > 0
  float grad_coef;
};

inline Adam8bitConstants adam8bit_constants(const AdamW8bitStep& s) {
  const double t = static_cast<double>(s.t);
  const double c1 = 1.0 - std::pow(static_cast<double>(s.beta1), t);
  const double c2 = std::sqrt(1.0 - std::pow(static_cast<double>(s.beta2), t));
  Adam8bitConstants c{};
  c.beta1 = s.beta1;
  c.beta2 = s.beta2;
  c.one_minus_beta1 = 1.0f - s.beta1;
  c.one_minus_beta2 = 1.0f - s.beta2;
  c.step_size = static_cast<float>(-static_cast<double>(s.lr) * c2 / c1);
  c.c2_eps = static_cast<float>(c2) * s.eps;
  // fma: one rounding whatever the compiler's contraction setting in the including file.
  c.decay = static_cast<float>(std::fma(-static_cast<double>(s.lr), static_cast<double>(s.weight_decay), 1.0));
  c.apply_decay = s.weight_decay > 0.0f ? 1 : 0;
  c.grad_coef = s.grad_coef;
  return c;
}

// Blockwise quantization as the optimizer requantizes its states: per block of 256, absmax[b] =
// max|x| (NaN ignored), then each x / absmax (a true fp32 division; bnb's standalone
// quantize_blockwise multiplies by 1/absmax instead) goes to the nearest map code
// (quantize_to_map). With a signed map, bnb's sign fix follows: if the code's sign bit differs from
// x's, the index moves one step towards x's sign, so m never flips sign (a small negative m that
// rounds to the zero code becomes the smallest negative code). A block of zeros gets absmax 0 and
// the zero code. x, codes: [n]; absmax: [ceil(n/256)].
void quantize_blockwise(const QuantMap& map, const float* x, int64_t n, uint8_t* codes, float* absmax);
// out[i] = map[codes[i]] * absmax[i / 256]. codes, out: [n]; absmax: [ceil(n/256)].
void dequantize_blockwise(const QuantMap& map, const uint8_t* codes, const float* absmax, int64_t n, float* out);

// One 8-bit step in place (bnb's kOptimizerStatic8bit2StateBlockwise), per element:
//   v = umap[v_q]*absmax_v*beta2 + ((1-beta2)*g)*g,  m = smap[m_q]*absmax_m*beta1 + (1-beta1)*g
//   p = p + step_size * (m / (sqrt(v) + c2*eps)),    then p *= 1 - lr*wd when wd > 0
// with g = grad * grad_coef; a NaN/Inf grad sets m = v = 0 and leaves p alone. Then each block's
// states are requantized with their new absmax (quantize_blockwise). p, g, m_q, v_q: [n];
// absmax_m, absmax_v: [ceil(n/256)].
void adamw8bit_update(const AdamW8bitStep& s, float* p, const float* g, uint8_t* m_q, uint8_t* v_q, float* absmax_m,
                      float* absmax_v, int64_t n);

// bnb's 32-bit Adam kernel (kOptimizer32bit2State, ADAM), used below min_8bit_size:
//   m = m*beta1 + (1-beta1)*g,  v = v*beta2 + (1-beta2)*(g*g),  p += step_size * (m / (sqrt(v) + c2*eps)),
//   then the decay. As in bnb, no NaN/Inf guard here: a bad gradient reaches p.
// p, g, m, v: [n].
void adam32_update(const AdamW8bitStep& s, float* p, const float* g, float* m, float* v, int64_t n);

}  // namespace ftune

// AdamW over a flat range of fp32 master weights, exactly as torch.optim.AdamW (decoupled weight
// decay applied before the moment update, bias corrections in double), with weight decay only on
// the given ranges (transformers' Trainer decays matrices, not norms). The optimizer owns the
// moments of its range; the parameters and gradients are the caller's, in the same flat layout.
// Not typed on any model: a range is a range (the whole buffer now, one rank's shard under ZeRO).
#pragma once
#include <cstdint>
#include <utility>
#include <vector>

#include "optim/adamw.h"

namespace ftune {

// The float constants of one AdamW update at step t (1-based), as torch computes them: bias
// corrections in double, rounded once.
struct AdamWConstants {
  float b1, b2, eps;
  float step_size;  // lr / (1 - beta1^t)
  float bc2_sqrt;   // sqrt(1 - beta2^t)
  float decay;      // 1 - lr * weight_decay (1 where the range is not decayed)
  float coef;       // the gradient is read multiplied by this (clipping, loss-scale removal)
};
AdamWConstants adamw_constants(const AdamWSettings& s, int64_t t, double lr, float grad_coef, bool decayed);
// One update of p, m, v [n] from g [n], in place, over the OpenMP threads:
//   p *= decay; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p -= step_size m / (sqrt(v)/bc2_sqrt + eps)
void adamw_apply(const AdamWConstants& c, float* p, const float* g, float* m, float* v, int64_t n);

class FlatAdamW {
 public:
  // n elements; decay_ranges: [begin, end) element ranges that get weight decay, sorted.
  FlatAdamW(int64_t n, const AdamWSettings& s, std::vector<std::pair<int64_t, int64_t>> decay_ranges);
  // One update: p[n] -= AdamW(grad_coef * g[n]) at learning rate lr. grad_coef carries clipping.
  void step(float* p, const float* g, double lr, float grad_coef = 1.0f);
  int64_t steps() const { return t_; }
  const std::vector<float>& first_moment() const { return m_; }   // [n]
  const std::vector<float>& second_moment() const { return v_; }  // [n]
  // A checkpoint's state back: moments [n] and the step count.
  void restore(std::vector<float> m, std::vector<float> v, int64_t steps);

 private:
  AdamWSettings s_;
  std::vector<std::pair<int64_t, int64_t>> decay_;
  std::vector<float> m_, v_;  // [n] each
  int64_t t_ = 0;
};

// Global L2 norm of g[n], accumulated in double: per chunk of kGradNormChunk elements in order,
// then the chunks in order (the same bits whatever the thread count).
inline constexpr int64_t kGradNormChunk = int64_t{1} << 16;
double flat_grad_norm(const float* g, int64_t n);
// Its square: the sum of squares of g[n] in the same chunks and order.
double flat_sum_of_squares(const float* g, int64_t n);
// The sums of squares of chunks [c0, c1) of a vector of n elements into part[c0, c1); `g` points at
// element c0 * kGradNormChunk. Adding all chunks' partials in order gives flat_grad_norm's square.
void grad_norm_partials(const float* g, int64_t n, int64_t c0, int64_t c1, double* part);

}  // namespace ftune

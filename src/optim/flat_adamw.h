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
  void update(float* p, const float* g, int64_t begin, int64_t end, float decay, float coef, float step_size,
              float bc2_sqrt);
  AdamWSettings s_;
  std::vector<std::pair<int64_t, int64_t>> decay_;
  std::vector<float> m_, v_;  // [n] each
  int64_t t_ = 0;
};

// Global L2 norm of g[n], accumulated in double.
double flat_grad_norm(const float* g, int64_t n);

}  // namespace ftune

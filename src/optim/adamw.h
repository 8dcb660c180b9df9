// AdamW with fp32 states, exactly as torch.optim.AdamW (decoupled weight decay applied
// before the moment update, bias corrections in double).
#pragma once
#include <cstdint>

#include "model/lora.h"

namespace ftune {

struct AdamWSettings {
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
};

class AdamW {
 public:
  AdamW(const LoraParams& params, const AdamWSettings& s) : s_(s), m_(params.zeros_like()), v_(params.zeros_like()) {}
  // One update of every tensor of `params` with gradients `grads` at learning rate `lr`.
  void step(LoraParams& params, const LoraParams& grads, double lr);
  int64_t steps() const { return t_; }
  const LoraParams& first_moment() const { return m_; }
  const LoraParams& second_moment() const { return v_; }
  // A checkpoint's state back: moments of the parameters' shapes and the step count.
  void restore(LoraParams m, LoraParams v, int64_t steps) { m_ = std::move(m), v_ = std::move(v), t_ = steps; }

 private:
  AdamWSettings s_;
  LoraParams m_;  // same shapes as the parameters
  LoraParams v_;
  int64_t t_ = 0;
};

// Global L2 norm of all gradients (accumulated in double).
double grad_norm(const LoraParams& grads);
// torch's clip_grad_norm_ coefficient for a gradient of global norm `norm`: max_norm / (norm +
// 1e-6) where that is below 1, else 1 (also when max_norm <= 0: no clipping).
double clip_coefficient(double norm, double max_norm);
// Scales grads so their global norm is at most max_norm (torch's clip_grad_norm_: coefficient
// max_norm / (norm + 1e-6), applied only when below 1). Returns the norm before clipping.
double clip_grad_norm(LoraParams& grads, double max_norm);

}  // namespace ftune

// AdamW and global-norm clipping over a LoRA adapter's tensors, for the CPU backend: the update of
// optim/flat_adamw.h (torch.optim.AdamW's), applied tensor by tensor with every adapter tensor
// decayed (transformers' Trainer decays LoRA A and B, which are weights, not biases or norms).
#pragma once
#include <cstdint>

#include "dist/communicator.h"
#include "model/lora.h"
#include "optim/adamw.h"

namespace ftune {

class LoraAdamW {
 public:
  LoraAdamW(const LoraParams& params, const AdamWSettings& s)
      : s_(s), m_(params.zeros_like()), v_(params.zeros_like()) {}
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
// Scales grads so their global norm is at most max_norm (torch's clip_grad_norm_: coefficient
// max_norm / (norm + 1e-6), applied only when below 1). Returns the norm before clipping.
// `sum_over`, when given, holds the other parts of the gradient (pipeline stages): the norm is that
// of all of them together.
double clip_grad_norm(LoraParams& grads, double max_norm, dist::Communicator* sum_over = nullptr);

}  // namespace ftune

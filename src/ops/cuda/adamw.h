// AdamW on the GPU over one flat fp32 tensor, the same update as the CPU optimizer (and torch).
#pragma once
#include <cstdint>

#include "ops/cuda/context.h"

namespace ftune::cuda {

struct AdamWStep {
  float lr, beta1, beta2, eps, weight_decay;
  int64_t t;  // 1-based step, for the bias corrections
  float grad_coef = 1.0f;  // the gradient is read multiplied by this (global-norm clipping)
};

// p, m, v updated in place from g; all [n] fp32 device pointers.
void adamw_update(const Context& ctx, const AdamWStep& s, float* p, const float* g, float* m, float* v, int64_t n);

}  // namespace ftune::cuda

// AdamW's settings (torch.optim.AdamW's defaults) and torch's gradient-clipping coefficient, shared
// by every optimizer of ftune. The updates: optim/flat_adamw.h (CPU), ops/cuda/adamw.h (GPU).
#pragma once

namespace ftune {

struct AdamWSettings {
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
};

// torch's clip_grad_norm_ coefficient for a gradient of global norm `norm`: max_norm / (norm +
// 1e-6) where that is below 1, else 1 (also when max_norm <= 0: no clipping).
double clip_coefficient(double norm, double max_norm);

}  // namespace ftune

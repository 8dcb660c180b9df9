// A linear layer with an optional LoRA branch, forward and backward (CPU, fp32); the base weight
// is frozen under LoRA and trains under full fine-tuning.
#pragma once
#include <cstdint>

#include "core/tensor.h"
#include "model/lora.h"

namespace ftune {

struct LoraLinear {
  const Tensor& w;        // [out, in] base weight
  const LoraPair* lora;   // nullptr when the projection carries no adapter
  float scaling = 1.0f;
  float dropout = 0.0f;   // on the LoRA branch input only, as peft does
  uint64_t dropout_key = 0;  // derives the mask; the same key regenerates it in the backward
  int64_t out() const { return w.dim(0); }
  int64_t in() const { return w.dim(1); }
};

// y[rows, out] = x W^T + scaling * (drop(x) A^T) B^T; t[rows, r] = drop(x) A^T is saved.
// xd[rows, in] is scratch (used only with dropout).
void lora_linear_forward(const LoraLinear& l, const float* x, int64_t rows, float* y, float* t, float* xd);
// dx[rows, in] += dy W + (scaling * dy B) A, masked by the dropout; grad->a/b += their grads.
// When dw is not null (the base weight trains), dw[out, in] += dy^T x.
// dt[rows, r] and xd[rows, in] are scratch.
void lora_linear_backward(const LoraLinear& l, const float* x, int64_t rows, const float* t, const float* dy,
                          float* dx, LoraPair* grad, float* dt, float* xd, float* dw = nullptr);

}  // namespace ftune

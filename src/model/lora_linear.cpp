// LoRA linear forward/backward. The dropout mask is a pure function of (key, element index),
// so the backward and a checkpointed recompute see exactly the forward's mask.
#include "model/lora_linear.h"

#include "core/dropout_hash.h"
#include "ops/cpu/matmul.h"

namespace ftune {

namespace {

using ftune::dropout_keep;

// xd = x with the dropout mask applied and the kept values scaled by 1/(1-p).
const float* dropped_input(const LoraLinear& l, const float* x, int64_t rows, float* xd) {
  if (l.dropout <= 0.0f) return x;
  const int64_t n = rows * l.in();
  const float s = 1.0f / (1.0f - l.dropout);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) xd[i] = dropout_keep(l.dropout_key, static_cast<uint64_t>(i), l.dropout) ? x[i] * s : 0.0f;
  return xd;
}

}  // namespace

void lora_linear_forward(const LoraLinear& l, const float* x, int64_t rows, float* y, float* t, float* xd) {
  cpu::linear(x, l.w.ptr(), y, rows, l.in(), l.out());
  if (!l.lora) return;
  const int64_t r = l.lora->a.dim(0);
  const float* xin = dropped_input(l, x, rows, xd);
  cpu::linear(xin, l.lora->a.ptr(), t, rows, l.in(), r);
  cpu::gemm(false, true, rows, l.out(), r, l.scaling, t, l.lora->b.ptr(), 1.0f, y);
}

void lora_linear_backward(const LoraLinear& l, const float* x, int64_t rows, const float* t, const float* dy,
                          float* dx, LoraPair* grad, float* dt, float* xd, float* dw) {
  // Base path: dx += dy W, and dW += dy^T x when the base trains.
  cpu::gemm(false, false, rows, l.in(), l.out(), 1.0f, dy, l.w.ptr(), 1.0f, dx);
  if (dw) cpu::gemm(true, false, l.out(), l.in(), rows, 1.0f, dy, x, 1.0f, dw);
  if (!l.lora) return;
  const int64_t r = l.lora->a.dim(0);
  // dB += scaling * dy^T t ; dt = scaling * dy B
  cpu::gemm(true, false, l.out(), r, rows, l.scaling, dy, t, 1.0f, grad->b.ptr());
  cpu::gemm(false, false, rows, r, l.out(), l.scaling, dy, l.lora->b.ptr(), 0.0f, dt);
  // dA += dt^T drop(x)
  const float* xin = dropped_input(l, x, rows, xd);
  cpu::gemm(true, false, r, l.in(), rows, 1.0f, dt, xin, 1.0f, grad->a.ptr());
  if (l.dropout <= 0.0f) {
    cpu::gemm(false, false, rows, l.in(), r, 1.0f, dt, l.lora->a.ptr(), 1.0f, dx);
    return;
  }
  // d drop(x) = dt A, then through the mask: reuse xd as scratch for it.
  cpu::gemm(false, false, rows, l.in(), r, 1.0f, dt, l.lora->a.ptr(), 0.0f, xd);
  const int64_t n = rows * l.in();
  const float s = 1.0f / (1.0f - l.dropout);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i)
    if (dropout_keep(l.dropout_key, static_cast<uint64_t>(i), l.dropout)) dx[i] += xd[i] * s;
}

}  // namespace ftune

// lm_head + cross-entropy on the GPU, fused over row chunks: per chunk the logits come from one
// GEMM into a reused buffer, one kernel turns them into per-row losses and, in place, into the
// logit gradients, and a second GEMM carries those into d hidden. The [rows, vocab] logits never
// exist whole.
#pragma once
#include <cstdint>

#include "ops/cuda/context.h"
#include "ops/cuda/storage.h"

namespace ftune::cuda {

// logits: [rows, vocab] in `s` storage, overwritten with (softmax - onehot) * grad_scale (rows with
// target < 0 get zeros); loss[rows] = -log p(target) in fp32 (0 for ignored rows).
void cross_entropy_rows(const Context& ctx, Storage s, void* logits, const int32_t* target, int64_t rows,
                        int64_t vocab, float grad_scale, float* loss);

// h: [rows, dim], w: [vocab, dim] (same storage s), target: [rows]; loss: [rows] fp32 out;
// dh: [rows, dim] (storage s) overwritten with the gradient when not null; dw: [vocab, dim] fp32,
// the lm_head's weight gradient, accumulated (+=) chunk by chunk when not null (full fine-tuning).
// `chunk` rows at a time, using a scratch buffer of chunk * vocab elements that the caller owns.
void lm_head_cross_entropy(const Context& ctx, Storage s, const void* h, const void* w, const int32_t* target,
                           int64_t rows, int64_t dim, int64_t vocab, float grad_scale, float* loss, void* dh,
                           void* scratch, int64_t chunk, float* dw = nullptr);

}  // namespace ftune::cuda

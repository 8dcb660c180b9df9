// Causal attention on the GPU with grouped-query heads and packed-document boundaries, never
// materializing the [T, T] scores: the forward keeps one log-sum-exp per query row, and the
// backward recomputes the probabilities from it. This first version is one warp per row (fp32
// math on fp32 or bf16 storage); a tensor-core tiling replaces it without changing the interface.
#pragma once
#include <cstdint>

#include "ops/cuda/context.h"
#include "ops/cuda/storage.h"

namespace ftune::cuda {

struct AttnShape {
  int64_t batch, seq, heads, kv_heads, head_dim;  // head_dim at most 256
  float scale;
};

// q: [B*T, heads, d], k/v: [B*T, kv_heads, d], out: [B*T, heads, d] (storage s);
// lse: [B, heads, T] fp32; doc: [B*T] document ids or nullptr.
void attention_forward(const Context& ctx, Storage s, const AttnShape& a, const void* q, const void* k, const void* v,
                       const int32_t* doc, void* out, float* lse);
// dq: [B*T, heads, d], dk/dv: [B*T, kv_heads, d], all overwritten; delta: [B, heads, T] fp32 scratch.
void attention_backward(const Context& ctx, Storage s, const AttnShape& a, const void* q, const void* k,
                        const void* v, const int32_t* doc, const void* out, const float* lse, const void* dout,
                        void* dq, void* dk, void* dv, float* delta);

}  // namespace ftune::cuda

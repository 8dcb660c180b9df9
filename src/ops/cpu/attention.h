// Causal self-attention with grouped-query heads and packed-document boundaries (a token
// attends only to earlier tokens of the same document), softmax in fp32.
#pragma once
#include <cstdint>

namespace ftune::cpu {

struct AttnShape {
  int64_t batch, seq;        // rows of `seq` tokens each; token index = b * seq + t
  int64_t heads, kv_heads, head_dim;
  float scale;               // usually head_dim^-0.5
};

// q: [B*T, heads, d], k/v: [B*T, kv_heads, d], out: [B*T, heads, d]
// probs: [B, heads, T, T] saved for the backward (masked entries are 0).
// doc: [B*T] document id of each token, or nullptr when rows are single documents.
void attention_forward(const AttnShape& s, const float* q, const float* k, const float* v, const int32_t* doc,
                       float* probs, float* out);
// dq: [B*T, heads, d], dk/dv: [B*T, kv_heads, d]; all overwritten.
void attention_backward(const AttnShape& s, const float* q, const float* k, const float* v, const float* probs,
                        const float* dout, float* dq, float* dk, float* dv);

}  // namespace ftune::cpu

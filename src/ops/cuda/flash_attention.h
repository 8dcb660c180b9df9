// Tensor-core flash attention (FlashAttention-2 style) for bf16 on sm_80+: the same causal,
// grouped-query, packed-document attention as attention.h, with the same lse convention, so the
// two are interchangeable where flash_attention_supported() says yes.
#pragma once
#include <cstdint>

#include "ops/cuda/attention.h"
#include "ops/cuda/context.h"

namespace ftune::cuda {

// True when the flash kernels handle this shape on this device: head_dim 64 or 128, heads a
// multiple of kv_heads, an sm_80+ device with the shared memory the kernels need and a kernel
// image built for it. Storage is always bf16 (q, k, v, out, dout, dq, dk, dv).
bool flash_attention_supported(const Context& ctx, const AttnShape& a);

// q: [B*T, heads, d], k/v: [B*T, kv_heads, d], out: [B*T, heads, d] (bf16, 16-byte aligned);
// lse: [B, heads, T] fp32, natural log of sum_j exp(scale * q.k_j) as attention_forward writes it;
// doc: [B*T] document ids or nullptr. Query i attends key j iff j <= i in the same batch row and
// doc[i] == doc[j]. Any ids are correct; ids that are non-decreasing within a row (as the packer
// writes them) let whole blocks be skipped.
void flash_attention_forward(const Context& ctx, const AttnShape& a, const void* q, const void* k, const void* v,
                             const int32_t* doc, void* out, float* lse);

// Floats of fp32 scratch flash_attention_backward needs: the dq accumulator, [B*T, heads, d].
int64_t flash_attention_scratch_floats(const AttnShape& a);

// dq: [B*T, heads, d], dk/dv: [B*T, kv_heads, d] (bf16), all overwritten; out and lse are what
// flash_attention_forward (or attention_forward on the same values) wrote; delta: [B, heads, T]
// fp32 scratch; scratch: flash_attention_scratch_floats(a) floats, zeroed here on ctx's stream.
void flash_attention_backward(const Context& ctx, const AttnShape& a, const void* q, const void* k, const void* v,
                              const int32_t* doc, const void* out, const float* lse, const void* dout, void* dq,
                              void* dk, void* dv, float* delta, float* scratch);

}  // namespace ftune::cuda

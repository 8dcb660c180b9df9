// Tensor-core flash attention (FlashAttention-2 style) in bf16 or fp16 storage, on sm_80+ and, for
// fp16, sm_75: the same causal, grouped-query, packed-document attention as attention.h, with the
// same lse convention, so the two are interchangeable where flash_attention_supported() says yes.
#pragma once
#include <cstdint>

#include "ops/cuda/attention.h"
#include "ops/cuda/context.h"
#include "ops/cuda/storage.h"

namespace ftune::cuda {

// Internal choices of the flash kernels; the defaults are what training wants.
struct FlashOptions {
  // The sm_75 code path (mma m16n8k8, synchronous tile loads, smaller tiles) even on sm_80+, where it
  // is otherwise never chosen: lets tests on a newer GPU check the code a T4 runs.
  bool turing = false;
  // The backward's dQ with each key block's share added in a fixed order (key blocks ascending,
  // each waiting on a counter for the one before), so repeated runs give the same bits; without it
  // the shares go in by unordered atomic adds, as in FlashAttention-2 (faster, not repeatable).
  bool deterministic = false;
};

// True when the flash kernels handle this storage and shape on this device: bf16 on sm_80+ or fp16
// on sm_75+ (never fp32), head_dim 64 or 128, heads a multiple of kv_heads, the shared memory the
// kernels need and a kernel image with the path's code (a build with only sm_75 code, JIT-compiled on
// a newer GPU, runs the sm_75 path there, fp16 only).
bool flash_attention_supported(const Context& ctx, Storage s, const AttnShape& a, const FlashOptions& o = {});

// q: [B*T, heads, d], k/v: [B*T, kv_heads, d], out: [B*T, heads, d] (storage s, 16-byte aligned);
// lse: [B, heads, T] fp32, natural log of sum_j exp(scale * q.k_j) as attention_forward writes it;
// doc: [B*T] document ids or nullptr. Query i attends key j iff j <= i in the same batch row and
// doc[i] == doc[j]. Any ids are correct; ids that are non-decreasing within a row (as the packer
// writes them) let whole blocks be skipped.
void flash_attention_forward(const Context& ctx, Storage s, const AttnShape& a, const void* q, const void* k,
                             const void* v, const int32_t* doc, void* out, float* lse, const FlashOptions& o = {});

// Floats of fp32 scratch flash_attention_backward needs: the dq accumulator, [B*T, heads, d], and
// with o.deterministic the int32 counters [B, heads, ceil(T / 32)] after it.
int64_t flash_attention_scratch_floats(const AttnShape& a, const FlashOptions& o = {});

// dq: [B*T, heads, d], dk/dv: [B*T, kv_heads, d] (storage s), all overwritten; out and lse are what
// flash_attention_forward (or attention_forward on the same values) wrote; delta: [B, heads, T]
// fp32 scratch; scratch: flash_attention_scratch_floats(a) floats, zeroed here on ctx's stream.
void flash_attention_backward(const Context& ctx, Storage s, const AttnShape& a, const void* q, const void* k,
                              const void* v, const int32_t* doc, const void* out, const float* lse, const void* dout,
                              void* dq, void* dk, void* dv, float* delta, float* scratch, const FlashOptions& o = {});

}  // namespace ftune::cuda

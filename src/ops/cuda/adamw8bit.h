// 8-bit blockwise AdamW (bitsandbytes' Adam8bit/AdamW8bit) on the GPU over one flat fp32 vector:
// the same update as ops/cpu/adamw8bit.cpp, bit for bit (codes, absmax and parameters).
#pragma once
#include <cstdint>

#include "ops/cuda/context.h"
#include "ops/cpu/adamw8bit.h"

namespace ftune::cuda {

// One launch: one 256-thread block per quantization block of 256 elements. p, g, m_q, v_q: [n];
// absmax_m, absmax_v: [ceil(n/256)]; map_signed, map_unsigned: [256] device copies of
// dynamic_map(true) / dynamic_map(false). All device pointers, updated in place on ctx.stream().
// A sub-range can be updated by offsetting every pointer consistently from an element offset
// that is a multiple of 256 (the paged optimizer's chunks).
void adamw8bit_update(const Context& ctx, const AdamW8bitStep& s, float* p, const float* g, uint8_t* m_q, uint8_t* v_q,
                      float* absmax_m, float* absmax_v, const float* map_signed, const float* map_unsigned, int64_t n);

// bnb's 32-bit Adam (the fallback below min_8bit_size), the twin of ftune::adam32_update.
// p, g, m, v: [n] device pointers.
void adam32_update(const Context& ctx, const AdamW8bitStep& s, float* p, const float* g, float* m, float* v, int64_t n);

}  // namespace ftune::cuda

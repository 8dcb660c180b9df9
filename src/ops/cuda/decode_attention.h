// Attention of decoding rows over their sequences' KV caches on the GPU (generation and serving):
// each row is one query token of some sequence at position pos, attending causally to that
// sequence's cached positions 0..pos (GQA), in fp32 math over fp32, bf16 or fp16 storage. Keys are
// split into chunks of kDecodeChunk positions, each chunk one block, and the chunks' partial
// softmaxes merged afterwards (flash-decoding, Dao et al. 2023), so that one row of a long context
// still spreads over the whole GPU.
#pragma once
#include <cstdint>

#include "ops/cuda/context.h"
#include "ops/cuda/storage.h"

namespace ftune::cuda {

constexpr int64_t kDecodeChunk = 128;

// Where each row's cache lies: K of layer l, position t at k[r] + (l * cap[r] + t) * kv_dim elements
// (V the same from v[r]); device arrays of `rows` entries.
struct DecodeRows {
  void* const* k;        // [rows] the row's cache of keys [layers, cap, kv_dim] (storage s)
  void* const* v;        // [rows] and of values
  const int32_t* cap;    // [rows] positions each cache holds
  const int32_t* pos;    // [rows] the row's position (attends to 0..pos)
  int64_t rows;
  int32_t max_pos;       // the largest pos (sizes the grid)
};

// k/v: [rows, kv_heads, d] this batch's keys and values, written at each row's pos of `layer`.
void kv_cache_write(const Context& ctx, Storage s, const DecodeRows& r, int64_t layer, int64_t kv_dim, const void* k,
                    const void* v);

// Floats of fp32 scratch decode_attention needs.
int64_t decode_attention_scratch_floats(int64_t rows, int64_t heads, int64_t head_dim, int32_t max_pos);

// q: [rows, heads, d] -> out: [rows, heads, d] (storage s); head_dim at most 256.
void decode_attention(const Context& ctx, Storage s, const DecodeRows& r, int64_t layer, int64_t heads,
                      int64_t kv_heads, int64_t head_dim, float scale, const void* q, void* out, float* scratch);

// out[i] = in[idx[i]] for i < n: rows of `row_bytes` bytes (a multiple of 4).
void gather_row_bytes(const Context& ctx, const void* in, const int32_t* idx, int64_t n, int64_t row_bytes, void* out);

}  // namespace ftune::cuda

// Token embedding lookup on the GPU, and its deterministic backward for full fine-tuning.
#pragma once
#include <cstdint>
#include <vector>

#include "ops/cuda/context.h"
#include "ops/cuda/storage.h"

namespace ftune::cuda {

// out[n, dim] = table[ids[i]]; table: [vocab, dim]. Ids outside [0, vocab) are a checked error
// reported by the caller beforehand; here they are clamped so that no read leaves the table.
void embedding_forward(const Context& ctx, Storage s, const void* table, const int32_t* ids, int64_t n, int64_t dim,
                       int64_t vocab, void* out);

// The token positions of a micro-batch grouped by id (CSR), built on the host where the ids are:
// id unique_ids[u] is used by tokens[offsets[u] .. offsets[u + 1]), in increasing position order.
struct EmbeddingGradIndex {
  std::vector<int32_t> unique_ids;  // [U], ascending
  std::vector<int32_t> offsets;     // [U + 1], offsets[0] = 0, offsets[U] = n
  std::vector<int32_t> tokens;      // [n], positions grouped by id
};
// ids: [n] host memory, every id >= 0 (a negative id is an error).
EmbeddingGradIndex embedding_grad_index(const int32_t* ids, int64_t n);

// dtable[unique_ids[u]] += dx[t] for every token t of id u, added in position order onto the row's
// current value: the same fp32 additions in the same order as cpu::embedding_backward, and no
// atomics, so the result is bit-identical run to run. unique_ids, offsets and tokens are the
// index's arrays in device memory (the caller uploads them); dx: [n, dim] fp32, dtable:
// [vocab, dim] fp32, the ids in [0, vocab) (checked by the caller).
void embedding_backward(const Context& ctx, const int32_t* unique_ids, const int32_t* offsets, const int32_t* tokens,
                        int64_t n_unique, const float* dx, int64_t dim, float* dtable);

}  // namespace ftune::cuda

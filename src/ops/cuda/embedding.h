// Token embedding lookup on the GPU (the table is frozen under LoRA, so there is no backward).
#pragma once
#include <cstdint>

#include "ops/cuda/context.h"
#include "ops/cuda/storage.h"

namespace ftune::cuda {

// out[n, dim] = table[ids[i]]; table: [vocab, dim]. Ids outside [0, vocab) are a checked error
// reported by the caller beforehand; here they are clamped so that no read leaves the table.
void embedding_forward(const Context& ctx, Storage s, const void* table, const int32_t* ids, int64_t n, int64_t dim,
                       int64_t vocab, void* out);

}  // namespace ftune::cuda

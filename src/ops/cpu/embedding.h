// Token embedding forward and backward on the CPU (fp32).
#pragma once
#include <cstdint>

namespace ftune::cpu {

// out[n, dim] = table[ids[t]]; table: [vocab, dim]; ids checked by the caller.
void embedding_forward(const float* table, const int32_t* ids, int64_t n, int64_t dim, float* out);
// dtable[ids[t]] += dx[t] for every token t (tokens in order, so repeated ids sum the same way
// whatever the thread count); dtable: [vocab, dim], dx: [n, dim].
void embedding_backward(const int32_t* ids, const float* dx, int64_t n, int64_t dim, float* dtable);

}  // namespace ftune::cpu

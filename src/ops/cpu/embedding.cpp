// Embedding lookup and its scatter-add backward.
#include "ops/cpu/embedding.h"

#include <cstring>

namespace ftune::cpu {

void embedding_forward(const float* table, const int32_t* ids, int64_t n, int64_t dim, float* out) {
  for (int64_t t = 0; t < n; ++t) std::memcpy(out + t * dim, table + static_cast<int64_t>(ids[t]) * dim, sizeof(float) * dim);
}

void embedding_backward(const int32_t* ids, const float* dx, int64_t n, int64_t dim, float* dtable) {
  // Columns in parallel, tokens in order within each: deterministic and race-free.
  constexpr int64_t kCols = 64;
#pragma omp parallel for schedule(static)
  for (int64_t c0 = 0; c0 < dim; c0 += kCols) {
    const int64_t c1 = c0 + kCols < dim ? c0 + kCols : dim;
    for (int64_t t = 0; t < n; ++t) {
      float* row = dtable + static_cast<int64_t>(ids[t]) * dim;
      const float* g = dx + t * dim;
      for (int64_t c = c0; c < c1; ++c) row[c] += g[c];
    }
  }
}

}  // namespace ftune::cpu

// Chunked lm_head + softmax cross-entropy: per chunk, logits by GEMM, log-sum-exp in double,
// the softmax minus one-hot back through the lm_head GEMM into dh.
#include "ops/cpu/cross_entropy.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/cpu/matmul.h"

namespace ftune::cpu {

CrossEntropyResult lm_head_cross_entropy(const float* h, const float* w, const int32_t* target, int64_t rows,
                                         int64_t dim, int64_t vocab, float grad_scale, float* dh,
                                         int64_t chunk_rows, float* dw) {
  CrossEntropyResult res;
  std::vector<float> logits(chunk_rows * vocab);
  for (int64_t r0 = 0; r0 < rows; r0 += chunk_rows) {
    const int64_t n = std::min(chunk_rows, rows - r0);
    bool any = false;
    for (int64_t r = 0; r < n; ++r) any |= target[r0 + r] >= 0;
    if (!any) {
      if (dh) std::fill(dh + r0 * dim, dh + (r0 + n) * dim, 0.0f);
      continue;
    }
    linear(h + r0 * dim, w, logits.data(), n, dim, vocab);
    double chunk_loss = 0.0;
    int64_t chunk_count = 0;
#pragma omp parallel for schedule(static) reduction(+ : chunk_loss, chunk_count)
    for (int64_t r = 0; r < n; ++r) {
      float* lr = logits.data() + r * vocab;
      const int32_t t = target[r0 + r];
      if (t < 0) {
        std::fill(lr, lr + vocab, 0.0f);
        continue;
      }
      float mx = lr[0];
      for (int64_t v = 1; v < vocab; ++v) mx = std::max(mx, lr[v]);
      double sum = 0.0;
      for (int64_t v = 0; v < vocab; ++v) sum += std::exp(static_cast<double>(lr[v] - mx));
      const double lse = mx + std::log(sum);
      chunk_loss += lse - lr[t];
      chunk_count += 1;
      for (int64_t v = 0; v < vocab; ++v) lr[v] = static_cast<float>(std::exp(lr[v] - lse)) * grad_scale;
      lr[t] -= grad_scale;
    }
    res.loss_sum += chunk_loss;
    res.count += chunk_count;
    if (dh) gemm(false, false, n, dim, vocab, 1.0f, logits.data(), w, 0.0f, dh + r0 * dim);
    if (dw) gemm(true, false, vocab, dim, n, 1.0f, logits.data(), h + r0 * dim, 1.0f, dw);
  }
  return res;
}

}  // namespace ftune::cpu

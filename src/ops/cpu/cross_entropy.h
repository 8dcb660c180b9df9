// lm_head + cross-entropy fused over row chunks, so the [rows, vocab] logits never exist whole.
#pragma once
#include <cstdint>

namespace ftune::cpu {

struct CrossEntropyResult {
  double loss_sum = 0.0;  // sum over non-ignored rows of -log p(target)
  int64_t count = 0;      // non-ignored rows
};

// h: [rows, dim] final hidden states; w: [vocab, dim] lm_head; target: [rows], < 0 = ignored.
// When dh is not null, dh[rows, dim] is overwritten with d(loss_sum * grad_scale)/dh; when dw is
// not null, dw[vocab, dim] += d(loss_sum * grad_scale)/dw (the lm_head's weight gradient, chunk by
// chunk, so the logits never exist whole here either).
CrossEntropyResult lm_head_cross_entropy(const float* h, const float* w, const int32_t* target, int64_t rows,
                                         int64_t dim, int64_t vocab, float grad_scale, float* dh,
                                         int64_t chunk_rows = 64, float* dw = nullptr);

}  // namespace ftune::cpu

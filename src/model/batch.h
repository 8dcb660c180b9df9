// A micro-batch as the model sees it: rows of token ids with per-token targets, positions and
// document ids (packed rows restart positions per document and never attend across them).
#pragma once
#include <cstdint>
#include <vector>

namespace ftune {

inline constexpr int32_t kIgnoreIndex = -100;

struct Batch {
  int64_t batch = 0, seq = 0;   // rows x tokens
  std::vector<int32_t> ids;     // [batch*seq]
  std::vector<int32_t> targets; // [batch*seq] next-token target at each position; kIgnoreIndex = none
  std::vector<int32_t> pos;     // [batch*seq] position ids
  std::vector<int32_t> doc;     // [batch*seq] document id, or empty when each row is one document
  int64_t tokens = 0;           // real (unpadded) tokens
  int64_t n() const { return batch * seq; }
  int64_t count_targets() const;
};

// Builds a batch of packed rows: each row holds several documents (ids + HF-style labels) back to
// back, positions restart at 0 per document, doc ids tell the attention where documents end, and
// no target crosses a document boundary. Rows are right-padded to the longest.
Batch make_packed_batch(const std::vector<std::vector<std::pair<const std::vector<int32_t>*, const std::vector<int32_t>*>>>& rows,
                        int32_t pad_id, int64_t pad_multiple = 1);

// Builds a right-padded batch from token rows and HF-style labels (labels[i] is the label of
// token i; the loss predicts labels[i+1] from position i, as transformers shifts them).
// `pad_multiple` rounds the row length up (8 keeps GPU matrix shapes aligned).
Batch make_batch(const std::vector<const std::vector<int32_t>*>& ids,
                 const std::vector<const std::vector<int32_t>*>& labels, int32_t pad_id, int64_t pad_multiple = 1);

}  // namespace ftune

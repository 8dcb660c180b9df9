// Batch assembly: padding, the HF label shift, positions.
#include "model/batch.h"

#include <algorithm>

#include "core/error.h"

namespace ftune {

int64_t Batch::count_targets() const {
  return std::count_if(targets.begin(), targets.end(), [](int32_t t) { return t >= 0; });
}

namespace {
int64_t round_up(int64_t n, int64_t m) { return m > 1 ? (n + m - 1) / m * m : n; }
}  // namespace

Batch make_batch(const std::vector<const std::vector<int32_t>*>& ids,
                 const std::vector<const std::vector<int32_t>*>& labels, int32_t pad_id, int64_t pad_multiple) {
  FT_ASSERT(ids.size() == labels.size() && !ids.empty());
  Batch b;
  b.batch = static_cast<int64_t>(ids.size());
  for (const auto* r : ids) b.seq = std::max<int64_t>(b.seq, static_cast<int64_t>(r->size()));
  b.seq = round_up(b.seq, pad_multiple);
  b.ids.assign(b.n(), pad_id);
  b.targets.assign(b.n(), kIgnoreIndex);
  b.pos.assign(b.n(), 0);
  for (int64_t r = 0; r < b.batch; ++r) {
    const auto& row = *ids[r];
    const auto& lab = *labels[r];
    FT_ASSERT(row.size() == lab.size());
    const int64_t len = static_cast<int64_t>(row.size());
    b.tokens += len;
    for (int64_t t = 0; t < b.seq; ++t) {
      b.pos[r * b.seq + t] = static_cast<int32_t>(t);
      if (t < len) b.ids[r * b.seq + t] = row[t];
      if (t + 1 < len) b.targets[r * b.seq + t] = lab[t + 1] < 0 ? kIgnoreIndex : lab[t + 1];
    }
  }
  return b;
}

Batch make_packed_batch(const std::vector<std::vector<std::pair<const std::vector<int32_t>*, const std::vector<int32_t>*>>>& rows,
                        int32_t pad_id, int64_t pad_multiple) {
  FT_ASSERT(!rows.empty());
  Batch b;
  b.batch = static_cast<int64_t>(rows.size());
  for (const auto& row : rows) {
    int64_t len = 0;
    for (const auto& [ids, lab] : row) len += static_cast<int64_t>(ids->size());
    b.seq = std::max(b.seq, len);
  }
  b.seq = round_up(b.seq, pad_multiple);
  b.ids.assign(b.n(), pad_id);
  b.targets.assign(b.n(), kIgnoreIndex);
  b.pos.assign(b.n(), 0);
  b.doc.assign(b.n(), -1);  // padding: its own "document"
  for (int64_t r = 0; r < b.batch; ++r) {
    int64_t t0 = r * b.seq;
    int32_t d = 0;
    for (const auto& [ids, lab] : rows[r]) {
      const int64_t len = static_cast<int64_t>(ids->size());
      FT_ASSERT(lab->size() == ids->size());
      for (int64_t t = 0; t < len; ++t) {
        b.ids[t0 + t] = (*ids)[t];
        b.pos[t0 + t] = static_cast<int32_t>(t);
        b.doc[t0 + t] = d;
        if (t + 1 < len) b.targets[t0 + t] = (*lab)[t + 1] < 0 ? kIgnoreIndex : (*lab)[t + 1];
      }
      b.tokens += len;
      t0 += len;
      ++d;
    }
  }
  return b;
}

}  // namespace ftune

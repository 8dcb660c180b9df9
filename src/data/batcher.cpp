// Micro-batch iteration with a deterministic per-epoch shuffle (Fisher-Yates on the seed's
// epoch stream).
#include "data/batcher.h"

#include <algorithm>
#include <numeric>

#include "core/rng.h"

namespace ftune {

MicroBatcher::MicroBatcher(const std::vector<Example>& examples, int64_t micro_batch, bool shuffle, uint64_t seed,
                           int32_t pad_id, int64_t pack_len, int64_t pad_multiple)
    : ex_(examples), micro_(micro_batch), shuffle_(shuffle), seed_(seed), pad_(pad_id), pack_len_(pack_len),
      pad_multiple_(pad_multiple), order_(examples.size()) {
  cursor_ = order_.size();  // the first next() starts epoch 0
}

void MicroBatcher::reshuffle() {
  ++epoch_;
  std::iota(order_.begin(), order_.end(), size_t{0});
  if (shuffle_) {
    Rng rng(seed_, 0x5348554646ull + static_cast<uint64_t>(epoch_));
    for (size_t i = order_.size(); i > 1; --i) std::swap(order_[i - 1], order_[rng.below(i)]);
  }
  cursor_ = 0;
}

void MicroBatcher::restore(const BatcherState& s) {
  if (s.epoch < 0) {
    epoch_ = -1;
    cursor_ = order_.size();
    return;
  }
  epoch_ = s.epoch - 1;
  reshuffle();  // the permutation of epoch s.epoch
  cursor_ = std::min<uint64_t>(s.cursor, order_.size());
}

Batch MicroBatcher::next() {
  if (cursor_ >= order_.size()) reshuffle();
  if (pack_len_ > 0) {
    // Fill up to micro_ rows; the batch ends early at the end of the epoch.
    std::vector<std::vector<std::pair<const std::vector<int32_t>*, const std::vector<int32_t>*>>> rows;
    while (static_cast<int64_t>(rows.size()) < micro_ && cursor_ < order_.size()) {
      auto& row = rows.emplace_back();
      int64_t used = 0;
      while (cursor_ < order_.size()) {
        const Example& e = ex_[order_[cursor_]];
        const int64_t len = static_cast<int64_t>(e.ids.size());
        if (!row.empty() && used + len > pack_len_) break;
        row.emplace_back(&e.ids, &e.labels);
        used += len;
        ++cursor_;
      }
    }
    return make_packed_batch(rows, pad_, pad_multiple_);
  }
  const size_t end = std::min(order_.size(), cursor_ + static_cast<size_t>(micro_));
  std::vector<const std::vector<int32_t>*> ids, labels;
  for (size_t i = cursor_; i < end; ++i) {
    ids.push_back(&ex_[order_[i]].ids);
    labels.push_back(&ex_[order_[i]].labels);
  }
  cursor_ = end;
  return make_batch(ids, labels, pad_, pad_multiple_);
}

}  // namespace ftune

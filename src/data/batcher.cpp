// Micro-batch iteration with a deterministic per-epoch shuffle (Fisher-Yates on the seed's
// epoch stream).
#include "data/batcher.h"

#include <algorithm>
#include <numeric>

#include "core/rng.h"

namespace ftune {

MicroBatcher::MicroBatcher(const std::vector<Example>& examples, int64_t micro_batch, bool shuffle, uint64_t seed,
                           int32_t pad_id)
    : ex_(examples), micro_(micro_batch), shuffle_(shuffle), seed_(seed), pad_(pad_id), order_(examples.size()) {
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

Batch MicroBatcher::next() {
  if (cursor_ >= order_.size()) reshuffle();
  const size_t end = std::min(order_.size(), cursor_ + static_cast<size_t>(micro_));
  std::vector<const std::vector<int32_t>*> ids, labels;
  for (size_t i = cursor_; i < end; ++i) {
    ids.push_back(&ex_[order_[i]].ids);
    labels.push_back(&ex_[order_[i]].labels);
  }
  cursor_ = end;
  return make_batch(ids, labels, pad_);
}

}  // namespace ftune

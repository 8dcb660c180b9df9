// Endless stream of micro-batches over a dataset: a fresh seeded shuffle each epoch, the last
// batch of an epoch possibly smaller. With packing, a row holds consecutive examples (in the
// shuffled order) up to `pack_len` tokens; an example never straddles two rows.
#pragma once
#include <cstdint>
#include <vector>

#include "data/dataset.h"
#include "model/batch.h"

namespace ftune {

// Where an iteration stands: enough to continue mid-epoch exactly (the order is re-derived from
// the seed and the epoch).
struct BatcherState {
  int64_t epoch = -1;  // -1 = not started
  uint64_t cursor = 0;
};

class MicroBatcher {
 public:
  // pack_len 0 = one example per row.
  MicroBatcher(const std::vector<Example>& examples, int64_t micro_batch, bool shuffle, uint64_t seed, int32_t pad_id,
               int64_t pack_len = 0, int64_t pad_multiple = 1);
  Batch next();
  int64_t epoch() const { return epoch_; }  // 0-based epoch of the last batch returned
  BatcherState state() const { return {epoch_, cursor_}; }
  void restore(const BatcherState& s);

 private:
  void reshuffle();
  const std::vector<Example>& ex_;
  int64_t micro_;
  bool shuffle_;
  uint64_t seed_;
  int32_t pad_;
  int64_t pack_len_;
  int64_t pad_multiple_;
  std::vector<size_t> order_;
  uint64_t cursor_ = 0;
  int64_t epoch_ = -1;
};

}  // namespace ftune

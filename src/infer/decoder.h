// What generation and serving decode through, on the CPU (infer/cpu_decoder.h) or the GPU
// (gpu/gpu_decoder.h): a batch is a list of rows, each one token of some sequence at that
// sequence's next position, with the adapter (if any) whose LoRA branch applies to it. Rows of one
// sequence may follow each other in a batch (a prompt fed at once): each attends to the positions
// before it, those written by the same batch included.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "model/lora.h"

namespace ftune {

// One sequence's keys and values, every layer, for up to `capacity` positions, held where its
// decoder computes.
class KvCache {
 public:
  virtual ~KvCache() = default;
  int64_t length() const { return len_; }
  int64_t capacity() const { return cap_; }
  void advance(int64_t n) { len_ += n; }  // positions a forward wrote (decoders only)

 protected:
  explicit KvCache(int64_t capacity) : cap_(capacity) {}

 private:
  int64_t cap_, len_ = 0;
};

struct DecodeRow {
  KvCache* cache;
  int32_t token;
  const LoraParams* adapter = nullptr;  // nullptr: the base alone
  bool logits = true;                   // whether this row's next-token logits are wanted
};

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual int64_t vocab_size() const = 0;
  // A cache of this decoder for one sequence. Throws ftune::Error when it does not fit.
  virtual std::unique_ptr<KvCache> new_cache(int64_t capacity) = 0;
  // Feeds every row's token and returns the fp32 logits of the rows that asked for them, in their
  // order: [count, V]. Throws ftune::Error for a token outside the vocabulary or a full cache,
  // before any cache changes.
  virtual const std::vector<float>& forward(const std::vector<DecodeRow>& rows) = 0;
  // `adapter` will not be passed again (its memory is about to be freed): what the decoder keeps
  // of it goes.
  virtual void forget(const LoraParams* adapter) { (void)adapter; }
};

}  // namespace ftune

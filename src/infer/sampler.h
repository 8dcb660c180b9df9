// The next token from a row of logits: greedy (temperature 0), or sampled at a temperature after
// top-k and top-p (nucleus) filtering, as transformers' TopKLogitsWarper and TopPLogitsWarper
// filter: top-k keeps the k largest logits (ties at the k-th kept), top-p the smallest set of most
// likely tokens whose probabilities add up to at least p.
#pragma once
#include <cstdint>
#include <span>

#include "core/rng.h"

namespace ftune {

struct SamplingOptions {
  double temperature = 0.0;  // 0: greedy (the most likely token; the lowest id among equals)
  int64_t top_k = 0;         // 0: no limit
  double top_p = 1.0;        // 1: no limit
  uint64_t seed = 0;
};

int32_t sample_token(std::span<const float> logits, const SamplingOptions& o, Rng& rng);

}  // namespace ftune

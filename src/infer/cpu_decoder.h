// Token-by-token decoding on the CPU with a KV cache: one new token per row, attending to the row's
// cached keys and values, in fp32, with the same ops as the training model (RMSNorm as
// transformers computes it, rotate-half RoPE, GQA, SwiGLU). Each row keeps its own cache and
// position, so prompts of different lengths decode side by side without padding. The weights are
// the model's as given (an adapter is merged in first, as peft's merge_and_unload does).
#pragma once
#include <cstdint>
#include <vector>

#include "model/llama_config.h"
#include "model/weights.h"

namespace ftune {

class CpuDecoder {
 public:
  // rows: the prompts decoded together; max_len: the longest prompt + completion of any row.
  CpuDecoder(const LlamaConfig& cfg, const LlamaWeights& w, int64_t rows, int64_t max_len);
  // Feeds `token` at row's next position and returns the logits for the token after it: [V].
  const std::vector<float>& step(int64_t row, int32_t token);
  int64_t length(int64_t row) const { return len_[row]; }
  int64_t max_len() const { return max_len_; }

 private:
  const LlamaConfig& cfg_;
  const LlamaWeights& w_;
  int64_t max_len_;
  std::vector<float> inv_freq_;                 // [d/2]
  std::vector<std::vector<float>> k_, v_;       // [rows * L] of [max_len, kv*d]
  std::vector<int64_t> len_;                    // [rows] tokens in each row's cache
  // Per-token scratch.
  std::vector<float> x_, n_, q_, k1_, v1_, att_, gate_, up_, scores_, logits_, cos_, sin_;
};

}  // namespace ftune

// Decoding on the CPU with a KV cache, in fp32, with the same ops as the training model (RMSNorm as
// transformers computes it, rotate-half RoPE, GQA, SwiGLU). A batch is a list of rows, each one
// token of some sequence at that sequence's next position: the base projections run as one GEMM
// over every row, and each adapter's LoRA branch (unmerged, as peft computes it) over the rows
// that use it, so requests for several adapters share one pass over the base weights, as Punica
// and S-LoRA batch them. Rows of one sequence may follow each other in a batch (a prompt fed at
// once): each attends to the positions before it, those written by the same batch included.
#pragma once
#include <cstdint>
#include <vector>

#include "infer/decoder.h"
#include "model/llama_config.h"
#include "model/lora.h"
#include "model/weights.h"

namespace ftune {

// One sequence's keys and values on the host, every layer.
class CpuKvCache : public KvCache {
 public:
  CpuKvCache(const LlamaConfig& cfg, int64_t capacity);

 private:
  friend class BatchDecoder;
  std::vector<float> k_, v_;  // [layers, capacity, kv_dim]
};

class BatchDecoder : public Decoder {
 public:
  BatchDecoder(const LlamaConfig& cfg, const LlamaWeights& w);
  int64_t vocab_size() const override { return cfg_.vocab_size; }
  std::unique_ptr<KvCache> new_cache(int64_t capacity) override;
  const std::vector<float>& forward(const std::vector<DecodeRow>& rows) override;

 private:
  // y[n, out] = x W^T (+ y when beta is 1), then each run of rows with one adapter += its LoRA.
  void project(const std::vector<DecodeRow>& rows, int64_t layer, Proj p, const float* x, float* y, float beta);

  const LlamaConfig& cfg_;
  const LlamaWeights& w_;
  std::vector<float> inv_freq_;  // [d/2]
  // Per-batch scratch, grown to the largest batch seen.
  std::vector<int32_t> pos_;
  std::vector<CpuKvCache*> caches_;  // [rows] each row's cache
  std::vector<float> x_, n_, rstd_, q_, k_, v_, att_, gate_, up_, t_, cos_, sin_, head_in_, logits_;
};

// A fixed set of rows decoded one token at a time with the weights as given (an adapter merged in
// first, as peft's merge_and_unload does): the plainest use of the decoder, which tests compare
// with the training model's forward.
class CpuDecoder {
 public:
  // rows: the prompts decoded together; max_len: the longest prompt + completion of any row.
  CpuDecoder(const LlamaConfig& cfg, const LlamaWeights& w, int64_t rows, int64_t max_len);
  // Feeds `token` at row's next position and returns the logits for the token after it: [V].
  const std::vector<float>& step(int64_t row, int32_t token);
  int64_t length(int64_t row) const { return caches_[row]->length(); }
  int64_t max_len() const { return max_len_; }

 private:
  BatchDecoder dec_;
  int64_t max_len_;
  std::vector<std::unique_ptr<KvCache>> caches_;
  std::vector<DecodeRow> one_;
};

}  // namespace ftune

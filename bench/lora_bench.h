// What the GPU LoRA benchmarks share: an adapter on all seven projections set into the model,
// a micro-batch of random token ids, and one optimizer step as `ftune train` takes it on the GPU
// (forward and backward, global-norm clipping at 1, AdamW at lr 1e-4).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/rng.h"
#include "model/batch.h"
#include "gpu/llama_gpu.h"
#include "optim/adamw.h"

namespace ftune::bench {

inline LoraSpec all_projections(int64_t r, double alpha) {
  LoraSpec spec;
  spec.r = r;
  spec.alpha = alpha;
  spec.targets.fill(true);
  return spec;
}

// peft's init, with B small but non-zero (B = 0 would leave A without gradient in the first step,
// and every GEMM should do real work from the start).
inline void set_adapter(LlamaGpu& model, const LlamaConfig& cfg, const LoraSpec& spec, uint64_t seed) {
  LoraParams lora = LoraParams::init(cfg, spec, seed);
  Rng r(seed + 1);
  lora.for_each([&](const std::string& key, Tensor& t) {
    if (key.find("lora_B") != std::string::npos)
      for (float& x : t.data) x = 0.01f * r.normal();
  });
  model.set_lora(lora);
}

// rows x seq random ids in [0, vocab), trained on every next token.
inline Batch random_batch(int64_t rows, int64_t seq, int64_t vocab, uint64_t seed) {
  Rng r(seed);
  std::vector<std::vector<int32_t>> ids(rows, std::vector<int32_t>(seq));
  std::vector<const std::vector<int32_t>*> ptrs;
  for (auto& row : ids) {
    for (auto& x : row) x = static_cast<int32_t>(r.below(static_cast<uint64_t>(vocab)));
    ptrs.push_back(&row);
  }
  return make_batch(ptrs, ptrs, 0);
}

// One step (t is the 1-based optimizer step); returns the mean loss.
inline double train_step(LlamaGpu& model, const Batch& batch, int64_t t) {
  const auto [sum, count] = model.forward_backward(batch, 1.0f / static_cast<float>(batch.count_targets()));
  const double coef = clip_coefficient(model.grad_norm(), 1.0);
  model.optimizer_step({1e-4f, 0.9f, 0.999f, 1e-8f, 0.0f, t}, static_cast<float>(coef));
  model.zero_grads();
  return sum / static_cast<double>(count);
}

}  // namespace ftune::bench

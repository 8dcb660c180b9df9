// LoRA adapters as peft defines them: y = W x + scaling * B (A dropout(x)), per targeted
// projection of every layer; A [r, in] kaiming-uniform, B [out, r] zero at init.
#pragma once
#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/llama_config.h"
#include "model/weights.h"

namespace ftune {

struct LoraSpec {
  int64_t r = 8;
  double alpha = 8.0;
  double dropout = 0.0;
  bool use_rslora = false;
  std::array<bool, kNumProj> targets{};  // which projections carry an adapter
  // alpha / r, or alpha / sqrt(r) with rsLoRA.
  float scaling() const;
  std::vector<std::string> target_names() const;  // sorted
};

struct LoraPair {
  Tensor a;  // [r, in]
  Tensor b;  // [out, r]
  bool active() const { return !a.empty(); }
};

// Adapter weights, or tensors of the same shapes (gradients, optimizer moments).
struct LoraParams {
  LoraSpec spec;
  std::vector<std::array<LoraPair, kNumProj>> layers;  // [L][proj]; inactive pairs are empty

  // Zero tensors of the adapter's shapes.
  static LoraParams zeros(const LlamaConfig& cfg, const LoraSpec& spec);
  // peft's default init: A ~ U(-1/sqrt(in), 1/sqrt(in)) (kaiming_uniform, a=sqrt(5)), B = 0.
  static LoraParams init(const LlamaConfig& cfg, const LoraSpec& spec, uint64_t seed);
  LoraParams zeros_like() const;
  // The pairs of layers [l0, l1) only, every other pair empty (a pipeline stage's part).
  LoraParams layers_only(int64_t l0, int64_t l1) const;

  // Every tensor in a fixed order with its peft key
  // ("base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight").
  void for_each(const std::function<void(const std::string& key, Tensor& t)>& f);
  void for_each(const std::function<void(const std::string& key, const Tensor& t)>& f) const;
  int64_t num_parameters() const;
};

}  // namespace ftune

// What the GPU model tests share: an adapter whose every gradient is non-zero, one forward and
// backward with it, and a weight source whose projections come already in NF4 (as from a
// bitsandbytes file) in a chosen layout.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "../test_util.h"
#include "gpu/llama_gpu.h"
#include "model/lora.h"
#include "model/weights.h"
#include "quant/nf4.h"

namespace ftune {

// peft's init with B made non-zero, so that every LoRA gradient is non-zero.
inline LoraParams nonzero_lora(const LlamaConfig& c, const LoraSpec& s, uint64_t seed) {
  LoraParams lora = LoraParams::init(c, s, seed);
  uint64_t k = seed * 1000;
  lora.for_each([&](const std::string& key, Tensor& t) {
    if (key.find("lora_B") != std::string::npos) testing::fill_normal(t, ++k, 0.05f);
  });
  return lora;
}

// One forward and backward of the GPU model with nonzero_lora(c, s, 4) (weights seed 3): the
// summed loss, the adapter's gradients in for_each order, and the attention kernels it ran on.
struct LoraStep {
  double loss = 0;
  std::vector<float> grads;
  std::string kernels;
};
inline LoraStep lora_step(const LlamaConfig& c, const LlamaWeights& w, const LoraSpec& s, const GpuModelOptions& o,
                          const Batch& b, uint64_t dropout_key = 0) {
  cuda::Context ctx;
  LlamaGpu m(ctx, c, memory_source(w).get(), &s, o, 3);
  const LoraParams lora = nonzero_lora(c, s, 4);
  m.set_lora(lora);
  LoraStep out;
  out.loss = m.forward_backward(b, 1.0f / static_cast<float>(b.count_targets()), dropout_key).first;
  LoraParams g = lora.zeros_like();
  m.add_grads_to(g);
  g.for_each([&](const std::string&, const Tensor& t) { out.grads.insert(out.grads.end(), t.data.begin(), t.data.end()); });
  out.kernels = m.attention_kernels();
  return out;
}

// proj() gives the dequantized values (what the GPU computes with), proj_nf4() the stored form.
class Nf4Source final : public WeightSource {
 public:
  Nf4Source(const LlamaWeights& w, int64_t blocksize, bool nested) : w_(w), inner_(memory_source(w)), bs_(blocksize), nested_(nested) {}
  Tensor embed() const override { return inner_->embed(); }
  Tensor final_norm() const override { return inner_->final_norm(); }
  Tensor lm_head() const override { return inner_->lm_head(); }
  Tensor norm(int64_t l, bool post) const override { return inner_->norm(l, post); }
  Tensor proj(int64_t l, Proj p) const override {
    Tensor t = inner_->proj(l, p);
    nf4_dequantize(quantized(t), t.data.data());
    return t;
  }
  bool proj_nf4(int64_t l, Proj p, Nf4Tensor& out) const override {
    out = quantized(inner_->proj(l, p));
    return true;
  }

 private:
  Nf4Tensor quantized(const Tensor& t) const { return nf4_quantize(t.data.data(), t.shape, bs_, nested_); }
  const LlamaWeights& w_;
  std::unique_ptr<WeightSource> inner_;
  int64_t bs_;
  bool nested_;
};

}  // namespace ftune

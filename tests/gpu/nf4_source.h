// A weight source whose projections come already in NF4 (as from a bitsandbytes file) in a
// chosen layout, for the GPU tests that take stored NF4 weights.
#pragma once
#include <memory>

#include "model/weights.h"
#include "quant/nf4.h"

namespace ftune {

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

// LoRA parameter containers, their init and their peft key names.
#include "model/lora.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "core/rng.h"

namespace ftune {

float LoraSpec::scaling() const {
  return static_cast<float>(use_rslora ? alpha / std::sqrt(static_cast<double>(r)) : alpha / static_cast<double>(r));
}

std::vector<std::string> LoraSpec::target_names() const {
  std::vector<std::string> out;
  for (int p = 0; p < kNumProj; ++p)
    if (targets[p]) out.emplace_back(proj_name(static_cast<Proj>(p)));
  std::sort(out.begin(), out.end());
  return out;
}

LoraParams LoraParams::zeros(const LlamaConfig& cfg, const LoraSpec& spec) {
  LoraParams lp;
  lp.spec = spec;
  lp.layers.resize(cfg.num_hidden_layers);
  for (auto& layer : lp.layers) {
    for (int p = 0; p < kNumProj; ++p) {
      if (!spec.targets[p]) continue;
      auto [out, in] = proj_shape(cfg, static_cast<Proj>(p));
      layer[p].a = Tensor({spec.r, in});
      layer[p].b = Tensor({out, spec.r});
    }
  }
  return lp;
}

LoraParams LoraParams::init(const LlamaConfig& cfg, const LoraSpec& spec, uint64_t seed) {
  LoraParams lp = zeros(cfg, spec);
  for (size_t l = 0; l < lp.layers.size(); ++l) {
    for (int p = 0; p < kNumProj; ++p) {
      Tensor& a = lp.layers[l][p].a;
      if (a.empty()) continue;
      Rng rng(seed, 1000 + l * kNumProj + p);
      const float bound = 1.0f / std::sqrt(static_cast<float>(a.dim(1)));
      for (float& x : a.data) x = rng.uniform(-bound, bound);
    }
  }
  return lp;
}

LoraParams LoraParams::zeros_like() const {
  LoraParams z;
  z.spec = spec;
  z.layers.resize(layers.size());
  for (size_t l = 0; l < layers.size(); ++l)
    for (int p = 0; p < kNumProj; ++p)
      if (layers[l][p].active()) {
        z.layers[l][p].a = Tensor(layers[l][p].a.shape);
        z.layers[l][p].b = Tensor(layers[l][p].b.shape);
      }
  return z;
}

LoraParams LoraParams::layers_only(int64_t l0, int64_t l1) const {
  LoraParams part;
  part.spec = spec;
  part.layers.resize(layers.size());
  for (int64_t l = l0; l < l1; ++l) part.layers[l] = layers[l];
  return part;
}

namespace {
std::string peft_key(size_t layer, int p, char ab) {
  return fmt::format("base_model.model.model.layers.{}.{}.lora_{}.weight", layer, proj_module(static_cast<Proj>(p)), ab);
}
}  // namespace

void LoraParams::for_each(const std::function<void(const std::string&, Tensor&)>& f) {
  for (size_t l = 0; l < layers.size(); ++l)
    for (int p = 0; p < kNumProj; ++p)
      if (layers[l][p].active()) {
        f(peft_key(l, p, 'A'), layers[l][p].a);
        f(peft_key(l, p, 'B'), layers[l][p].b);
      }
}

void LoraParams::for_each(const std::function<void(const std::string&, const Tensor&)>& f) const {
  const_cast<LoraParams*>(this)->for_each([&](const std::string& k, Tensor& t) { f(k, t); });
}

int64_t LoraParams::num_parameters() const {
  int64_t n = 0;
  for_each([&](const std::string&, const Tensor& t) { n += t.numel(); });
  return n;
}

}  // namespace ftune

// The Llama parameter table and its flat layout.
#include "params/param_table.h"

#include <fmt/format.h>

#include <algorithm>

#include "core/error.h"
#include "model/weights.h"

namespace ftune {

int64_t ParamSpec::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

void ParamTable::add(std::string key, std::vector<int64_t> shape, ParamRole role, int64_t layer, int proj, bool decay) {
  ParamSpec s;
  s.key = std::move(key);
  s.shape = std::move(shape);
  s.role = role;
  s.layer = layer;
  s.proj = proj;
  s.trainable = true;
  s.decay = decay;
  s.offset = trainable_;
  trainable_ += s.numel();
  specs_.push_back(std::move(s));
}

ParamTable ParamTable::full(const LlamaConfig& c) {
  ParamTable t;
  const int64_t H = c.hidden_size;
  t.add("model.embed_tokens.weight", {c.vocab_size, H}, ParamRole::Embed, -1, -1, true);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    t.add(fmt::format("model.layers.{}.input_layernorm.weight", l), {H}, ParamRole::InputNorm, l, -1, false);
    for (int p = 0; p < kNumProj; ++p) {
      const auto s = proj_shape(c, static_cast<Proj>(p));
      t.add(fmt::format("model.layers.{}.{}.weight", l, proj_module(static_cast<Proj>(p))), {s[0], s[1]},
            ParamRole::Proj, l, p, true);
    }
    t.add(fmt::format("model.layers.{}.post_attention_layernorm.weight", l), {H}, ParamRole::PostNorm, l, -1, false);
  }
  t.add("model.norm.weight", {H}, ParamRole::FinalNorm, -1, -1, false);
  if (!c.tie_word_embeddings) t.add("lm_head.weight", {c.vocab_size, H}, ParamRole::LmHead, -1, -1, true);
  return t;
}

ParamTable ParamTable::stage(const LlamaConfig& c, int64_t l0, int64_t l1) {
  ParamTable t = full(c);
  t.trainable_ = 0;
  for (ParamSpec& s : t.specs_) {
    const bool mine = s.layer >= 0 ? (s.layer >= l0 && s.layer < l1)
                      : s.role == ParamRole::Embed ? l0 == 0
                                                   : l1 == c.num_hidden_layers;
    s.trainable = mine;
    s.offset = mine ? t.trainable_ : -1;
    if (mine) t.trainable_ += s.numel();
  }
  return t;
}

const ParamSpec* ParamTable::find(std::string_view key) const {
  for (const auto& s : specs_)
    if (s.key == key) return &s;
  return nullptr;
}

std::vector<std::pair<int64_t, int64_t>> ParamTable::decay_ranges() const {
  std::vector<std::pair<int64_t, int64_t>> out;
  for (const auto& s : specs_) {
    if (!s.trainable || !s.decay) continue;
    if (!out.empty() && out.back().second == s.offset) out.back().second += s.numel();
    else out.emplace_back(s.offset, s.offset + s.numel());
  }
  return out;
}

Tensor& param_tensor(LlamaWeights& w, const ParamSpec& s) {
  switch (s.role) {
    case ParamRole::Embed: return w.embed;
    case ParamRole::InputNorm: return w.layers[s.layer].input_norm;
    case ParamRole::PostNorm: return w.layers[s.layer].post_norm;
    case ParamRole::Proj: return w.layers[s.layer].proj[s.proj];
    case ParamRole::FinalNorm: return w.final_norm;
    case ParamRole::LmHead: return w.lm_head;
  }
  FT_ASSERT(false);
}

const Tensor& param_tensor(const LlamaWeights& w, const ParamSpec& s) {
  return param_tensor(const_cast<LlamaWeights&>(w), s);
}

void gather_trainable(const ParamTable& t, const LlamaWeights& w, float* flat) {
  for (const auto& s : t.specs()) {
    if (!s.trainable) continue;
    const Tensor& x = param_tensor(w, s);
    FT_ASSERT(x.numel() == s.numel());
    std::copy(x.data.begin(), x.data.end(), flat + s.offset);
  }
}

void scatter_trainable(const ParamTable& t, const float* flat, LlamaWeights& w) {
  for (const auto& s : t.specs()) {
    if (!s.trainable) continue;
    Tensor& x = param_tensor(w, s);
    FT_ASSERT(x.numel() == s.numel());
    std::copy(flat + s.offset, flat + s.offset + s.numel(), x.data.begin());
  }
}

LlamaWeights zeros_like(const LlamaWeights& w) {
  auto z = [](const Tensor& t) { return t.empty() ? Tensor() : Tensor(t.shape); };
  LlamaWeights g;
  g.embed = z(w.embed);
  g.final_norm = z(w.final_norm);
  g.lm_head = z(w.lm_head);
  for (const auto& l : w.layers) {
    LayerWeights& gl = g.layers.emplace_back();
    gl.input_norm = z(l.input_norm);
    gl.post_norm = z(l.post_norm);
    for (int p = 0; p < kNumProj; ++p) gl.proj[p] = z(l.proj[p]);
  }
  return g;
}

}  // namespace ftune

// Loading, generating and saving Llama base weights under the transformers key names.
#include "model/weights.h"

#include <fmt/format.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "core/rng.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "quant/nf4.h"
#include "quant/nf4_checkpoint.h"

namespace ftune {

const char* proj_name(Proj p) {
  static constexpr const char* kNames[] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  return kNames[static_cast<int>(p)];
}

const char* proj_module(Proj p) {
  static constexpr const char* kNames[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                           "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                           "mlp.down_proj"};
  return kNames[static_cast<int>(p)];
}

std::array<int64_t, 2> proj_shape(const LlamaConfig& c, Proj p) {
  switch (p) {
    case Proj::Q: return {c.q_dim(), c.hidden_size};
    case Proj::K:
    case Proj::V: return {c.kv_dim(), c.hidden_size};
    case Proj::O: return {c.hidden_size, c.q_dim()};
    case Proj::Gate:
    case Proj::Up: return {c.intermediate_size, c.hidden_size};
    case Proj::Down: return {c.hidden_size, c.intermediate_size};
  }
  return {0, 0};
}

namespace {

std::string layer_key(int64_t l, const std::string& rest) { return fmt::format("model.layers.{}.{}", l, rest); }

// A weight bitsandbytes saved in 4-bit form: its quant-state key is there.
bool quantized(const CheckpointReader& ck, const std::string& name) {
  return ck.has(name + ".quant_state.bitsandbytes__nf4") || ck.has(name + ".quant_state.bitsandbytes__fp4");
}

// The NF4 weight `name` as stored, validated against the expected shape (one-line errors naming
// the file and key: missing or inconsistent quant-state keys, fp4).
// (shard_of names a missing packed tensor).
Nf4Tensor read_quantized(const CheckpointReader& ck, const std::string& name, const std::vector<int64_t>& want) {
  return read_bnb_nf4(ck.shard_of(name), name, want);
}

void check_present(const CheckpointReader& ck, const std::string& name, const std::vector<int64_t>& want) {
  if (!ck.has(name)) fail("{}: tensor '{}' is missing from the checkpoint", ck.dir(), name);
  if (quantized(ck, name)) return;  // sizes and quant state are validated when the weight is read
  const TensorInfo& info = ck.info(name);
  if (info.shape != want)
    fail("{}: tensor '{}' has shape {} but config.json implies {}", ck.file_of(name), name, shape_str(info.shape),
         shape_str(want));
}

Tensor load_checked(const CheckpointReader& ck, const std::string& name, const std::vector<int64_t>& want) {
  if (quantized(ck, name)) {
    const Nf4Tensor q = read_quantized(ck, name, want);
    Tensor t(want);
    nf4_dequantize(q, t.data.data());
    return t;
  }
  check_present(ck, name, want);
  Tensor t = ck.read_f32(name);
  for (size_t i = 0; i < t.data.size(); ++i)
    if (!std::isfinite(t.data[i]))
      fail("{}: tensor '{}' holds {} at element {}", ck.file_of(name), name, std::isnan(t.data[i]) ? "NaN" : "infinity",
           i);
  return t;
}

// Calls f(name, tensor) for every tensor of the model in a fixed order.
template <typename W, typename F>
void for_each_weight(const LlamaConfig& cfg, W& w, F&& f) {
  f(std::string("model.embed_tokens.weight"), w.embed);
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
    auto& L = w.layers[l];
    f(layer_key(l, "input_layernorm.weight"), L.input_norm);
    for (int p = 0; p < kNumProj; ++p)
      f(layer_key(l, std::string(proj_module(static_cast<Proj>(p))) + ".weight"), L.proj[p]);
    f(layer_key(l, "post_attention_layernorm.weight"), L.post_norm);
  }
  f(std::string("model.norm.weight"), w.final_norm);
  if (!cfg.tie_word_embeddings) f(std::string("lm_head.weight"), w.lm_head);
}

std::vector<int64_t> expected_shape(const LlamaConfig& cfg, const std::string& name) {
  const int64_t H = cfg.hidden_size;
  if (name == "model.embed_tokens.weight" || name == "lm_head.weight") return {cfg.vocab_size, H};
  if (name.ends_with("layernorm.weight") || name == "model.norm.weight") return {H};
  for (int p = 0; p < kNumProj; ++p) {
    if (name.ends_with(std::string(proj_module(static_cast<Proj>(p))) + ".weight")) {
      auto s = proj_shape(cfg, static_cast<Proj>(p));
      return {s[0], s[1]};
    }
  }
  FT_ASSERT(false);
}

}  // namespace

LlamaWeights load_llama_weights(const LlamaConfig& cfg, const CheckpointReader& ck) {
  LlamaWeights w;
  w.layers.resize(cfg.num_hidden_layers);
  for_each_weight(cfg, w, [&](const std::string& name, Tensor& t) { t = load_checked(ck, name, expected_shape(cfg, name)); });
  return w;
}

bool stored_quantized(const CheckpointReader& ck, int64_t l, Proj p) {
  return quantized(ck, layer_key(l, std::string(proj_module(p)) + ".weight"));
}

void check_llama_checkpoint(const LlamaConfig& cfg, const CheckpointReader& ck) {
  LlamaWeights shapes;  // empty tensors: only the names are walked
  shapes.layers.resize(cfg.num_hidden_layers);
  for_each_weight(cfg, shapes, [&](const std::string& name, Tensor&) { check_present(ck, name, expected_shape(cfg, name)); });
}

namespace {

class MemorySource final : public WeightSource {
 public:
  explicit MemorySource(const LlamaWeights& w) : w_(w) {}
  Tensor embed() const override { return w_.embed; }
  Tensor final_norm() const override { return w_.final_norm; }
  Tensor lm_head() const override { return w_.lm_head; }
  Tensor norm(int64_t l, bool post) const override { return post ? w_.layers[l].post_norm : w_.layers[l].input_norm; }
  Tensor proj(int64_t l, Proj p) const override { return w_.layers[l].proj[static_cast<int>(p)]; }

 private:
  const LlamaWeights& w_;
};

class CheckpointSource final : public WeightSource {
 public:
  CheckpointSource(const LlamaConfig& cfg, const CheckpointReader& ck) : cfg_(cfg), ck_(ck) {}
  Tensor embed() const override { return get("model.embed_tokens.weight"); }
  Tensor final_norm() const override { return get("model.norm.weight"); }
  Tensor lm_head() const override { return get("lm_head.weight"); }
  Tensor norm(int64_t l, bool post) const override {
    return get(layer_key(l, post ? "post_attention_layernorm.weight" : "input_layernorm.weight"));
  }
  Tensor proj(int64_t l, Proj p) const override { return get(layer_key(l, std::string(proj_module(p)) + ".weight")); }
  bool proj_nf4(int64_t l, Proj p, Nf4Tensor& out) const override {
    const std::string name = layer_key(l, std::string(proj_module(p)) + ".weight");
    if (!quantized(ck_, name)) return false;
    out = read_quantized(ck_, name, expected_shape(cfg_, name));
    return true;
  }

 private:
  Tensor get(const std::string& name) const { return load_checked(ck_, name, expected_shape(cfg_, name)); }
  LlamaConfig cfg_;
  const CheckpointReader& ck_;
};

}  // namespace

std::unique_ptr<WeightSource> memory_source(const LlamaWeights& w) { return std::make_unique<MemorySource>(w); }

std::unique_ptr<WeightSource> checkpoint_source(const LlamaConfig& cfg, const CheckpointReader& ckpt) {
  return std::make_unique<CheckpointSource>(cfg, ckpt);
}

LlamaWeights random_llama_weights(const LlamaConfig& cfg, uint64_t seed) {
  LlamaWeights w;
  w.layers.resize(cfg.num_hidden_layers);
  uint64_t stream = 0;
  for_each_weight(cfg, w, [&](const std::string& name, Tensor& t) {
    t = Tensor(expected_shape(cfg, name));
    Rng rng(seed, ++stream);
    const bool norm = t.shape.size() == 1;
    for (float& x : t.data) x = norm ? 1.0f : 0.02f * rng.normal();
  });
  return w;
}

void save_llama_model(const LlamaConfig& cfg, const LlamaWeights& w, const std::string& dir, DType dtype) {
  SafetensorsWriter out;
  for_each_weight(cfg, w, [&](const std::string& name, const Tensor& t) { out.add_f32(name, t, dtype); });
  out.write(dir + "/model.safetensors", {{"format", "pt"}});
  const std::string path = dir + "/config.json";
  std::ofstream f(path);
  f << llama_config_to_json(cfg) << "\n";
  if (!f) fail("{}: cannot write", path);
}

}  // namespace ftune

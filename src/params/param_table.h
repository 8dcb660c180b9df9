// The parameter table of a run: every tensor the model has, by Hugging Face key, shape, layer and
// role, whether it trains, whether AdamW decays it, and where it sits in the flat fp32 buffer of
// the trainable parameters. The flat layout is what the optimizer steps over (master weights,
// gradients and moments share it), what a checkpoint saves and what ZeRO will shard by offset.
// This is the one place that knows the Hugging Face names of the base tensors.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/tensor.h"
#include "model/llama_config.h"

namespace ftune {

enum class ParamRole { Embed, InputNorm, PostNorm, Proj, FinalNorm, LmHead };

struct ParamSpec {
  std::string key;             // e.g. "model.layers.3.self_attn.q_proj.weight"
  std::vector<int64_t> shape;  // [out, in] for matrices, [H] for norms
  ParamRole role = ParamRole::Embed;
  int64_t layer = -1;          // -1 outside the decoder layers
  int proj = -1;               // Proj index for ParamRole::Proj
  bool trainable = false;
  // AdamW weight decay applies. The rule of transformers' Trainer (get_decay_parameter_names):
  // every weight except biases and normalization layers, so for Llama every matrix (embedding,
  // projections, lm_head) decays and no RMSNorm weight does.
  bool decay = false;
  int64_t offset = -1;         // first element in the trainable flat buffer; -1 when frozen
  int64_t numel() const;
};

class ParamTable {
 public:
  // Every base tensor of a Llama model, in checkpoint order (embedding, layers, norm, lm_head when
  // not tied: tied embeddings are one tensor), all trainable: full fine-tuning.
  static ParamTable full(const LlamaConfig& cfg);
  // A pipeline stage's part of full(): the same tensors, only those of layers [l0, l1) trainable,
  // with the embedding on the stage of layer 0 and the final norm and lm_head on the stage of the
  // last layer; the flat buffer holds those alone.
  static ParamTable stage(const LlamaConfig& cfg, int64_t l0, int64_t l1);

  const std::vector<ParamSpec>& specs() const { return specs_; }
  int64_t trainable_numel() const { return trainable_; }
  const ParamSpec* find(std::string_view key) const;
  // Elements of the trainable buffer that AdamW decays, as [begin, end) ranges in order.
  std::vector<std::pair<int64_t, int64_t>> decay_ranges() const;

 private:
  void add(std::string key, std::vector<int64_t> shape, ParamRole role, int64_t layer, int proj, bool decay);
  std::vector<ParamSpec> specs_;
  int64_t trainable_ = 0;
};

struct LlamaWeights;

// The tensor of the CPU weights that `s` names.
Tensor& param_tensor(LlamaWeights& w, const ParamSpec& s);
const Tensor& param_tensor(const LlamaWeights& w, const ParamSpec& s);
// The trainable tensors of `w` into flat[trainable_numel] at their offsets, and back.
void gather_trainable(const ParamTable& t, const LlamaWeights& w, float* flat);
void scatter_trainable(const ParamTable& t, const float* flat, LlamaWeights& w);
// Tensors of the same shapes as `w`, all zero (gradients).
LlamaWeights zeros_like(const LlamaWeights& w);

}  // namespace ftune

// One Llama decoder layer on the CPU: forward saves what backward needs; backward side by side.
#pragma once
#include <array>
#include <cstdint>

#include "core/tensor.h"
#include "model/llama_config.h"
#include "model/lora.h"
#include "model/weights.h"

namespace ftune {

// What the current micro-batch looks like and the per-token tables every layer shares.
struct StepShape {
  int64_t batch = 0, seq = 0;    // rows x tokens per row
  const float* cos = nullptr;    // [batch*seq, head_dim/2]
  const float* sin = nullptr;    // [batch*seq, head_dim/2]
  const int32_t* doc = nullptr;  // [batch*seq] document id per token, or nullptr
  uint64_t dropout_key = 0;      // 0 = no dropout (evaluation)
  int64_t n() const { return batch * seq; }
};

// Activations one layer saves for its backward, allocated once for the largest micro-batch.
struct BlockActs {
  Tensor x;      // [N, H] layer input
  Tensor n1;     // [N, H] input_layernorm output
  Tensor rstd1;  // [N]
  Tensor q;      // [N, heads*d] after RoPE
  Tensor k;      // [N, kv*d] after RoPE
  Tensor v;      // [N, kv*d]
  Tensor probs;  // [B, heads, T, T]
  Tensor att;    // [N, heads*d] attention output (o_proj input)
  Tensor h;      // [N, H] residual after attention
  Tensor n2;     // [N, H] post_attention_layernorm output
  Tensor rstd2;  // [N]
  Tensor gate;   // [N, I]
  Tensor up;     // [N, I]
  Tensor act;    // [N, I] silu(gate) * up (down_proj input)
  std::array<Tensor, kNumProj> lora_t;  // [N, r] drop(x) A^T per adapted projection

  static BlockActs allocate(const LlamaConfig& cfg, const LoraSpec* lora, int64_t max_batch, int64_t max_seq);
};

// Scratch for the backward, shared by all layers.
struct BlockScratch {
  Tensor dh;     // [N, H]
  Tensor dn;     // [N, H]
  Tensor dq;     // [N, heads*d]
  Tensor datt;   // [N, heads*d]
  Tensor dk;     // [N, kv*d]
  Tensor dv;     // [N, kv*d]
  Tensor dgate;  // [N, I]
  Tensor dup;    // [N, I]
  Tensor dact;   // [N, I]
  Tensor dt;     // [N, r]
  Tensor xd;     // [N, max(H, I, heads*d)] dropout scratch

  static BlockScratch allocate(const LlamaConfig& cfg, const LoraSpec* lora, int64_t max_batch, int64_t max_seq);
};

// x: [N, H] input; y: [N, H] output (may not alias x). `lora` is nullptr for a plain model;
// sc.xd is the only scratch the forward uses.
void block_forward(const LlamaConfig& cfg, const StepShape& s, int64_t layer, const LayerWeights& w,
                   const std::array<LoraPair, kNumProj>* lora, const LoraSpec* spec, const float* x, BlockActs& a,
                   float* y, BlockScratch& sc);
// dy: [N, H] gradient of the output on entry, of the input on return. LoRA grads accumulate into
// `grads`, and the layer's own weight gradients into `wgrad` when it is not null (full fine-tuning).
void block_backward(const LlamaConfig& cfg, const StepShape& s, int64_t layer, const LayerWeights& w,
                    const std::array<LoraPair, kNumProj>* lora, const LoraSpec* spec, const BlockActs& a, float* dy,
                    std::array<LoraPair, kNumProj>* grads, BlockScratch& sc, LayerWeights* wgrad = nullptr);

}  // namespace ftune

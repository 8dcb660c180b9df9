// The Llama model on the CPU: embedding, decoder layers, final norm, lm_head + cross-entropy,
// with LoRA adapters trained on a frozen base, or every weight trained (full fine-tuning). Buffers
// are allocated once, for the largest micro-batch, when the model is built. A UnitGate, when given,
// is asked for each unit's weights just before they are used and handed each unit's gradients just
// after they are complete (ZeRO-3); without one every weight is read where it lies.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "core/tensor.h"
#include "model/batch.h"
#include "model/block.h"
#include "model/llama_config.h"
#include "model/lora.h"
#include "model/unit_gate.h"
#include "model/weights.h"
#include "ops/cpu/cross_entropy.h"

namespace ftune {

struct ModelOptions {
  int64_t max_batch = 1;  // rows per micro-batch
  int64_t max_seq = 2048;  // tokens per row
  bool gradient_checkpointing = false;  // keep only layer inputs; recompute each layer in the backward
};

class LlamaCpu {
 public:
  // `lora` may be null (plain model), and so may `gate`; with one, the units' tensors in `w` and in
  // the gradients may be empty outside gather/release and begin_grads/end_grads. References must
  // outlive the model.
  LlamaCpu(const LlamaConfig& cfg, const LlamaWeights& w, const LoraParams* lora, const ModelOptions& opt,
           UnitGate* gate = nullptr);

  // Forward and backward of one micro-batch. Loss gradients are scaled by `grad_scale` (1 / the
  // number of targets in the whole optimizer step) and accumulated into `grads` (the adapter's)
  // and, when `wgrad` is not null, into the gradient of every base weight (full fine-tuning; tied
  // embeddings get the lm_head's share in wgrad->embed). `dropout_key` != 0 turns LoRA dropout on
  // (training); 0 turns it off.
  cpu::CrossEntropyResult forward_backward(const Batch& b, float grad_scale, LoraParams& grads, uint64_t dropout_key,
                                           LlamaWeights* wgrad = nullptr);
  // Loss without gradients (evaluation).
  cpu::CrossEntropyResult loss(const Batch& b);
  // Full logits [batch*seq, vocab] (checks and small models only).
  Tensor logits(const Batch& b);

 private:
  StepShape prepare(const Batch& b, uint64_t dropout_key);
  // Runs the layers; returns the final hidden state before model.norm ([N, H]).
  const float* run_layers(const StepShape& s);
  const std::array<LoraPair, kNumProj>* layer_lora(int64_t l) const { return lora_ ? &lora_->layers[l] : nullptr; }
  // The gate's calls, nothing without one.
  void gather(int64_t unit) { if (gate_) gate_->gather(unit); }
  void release(int64_t unit) { if (gate_) gate_->release(unit); }
  void begin_grads(int64_t unit) { if (gate_) gate_->begin_grads(unit); }
  void end_grads(int64_t unit) { if (gate_) gate_->end_grads(unit); }

  const LlamaConfig& cfg_;
  const LlamaWeights& w_;
  const LoraParams* lora_;
  ModelOptions opt_;
  UnitGate* gate_;
  std::vector<float> inv_freq_;        // [d/2]
  std::vector<float> cos_, sin_;       // [N, d/2]
  std::vector<BlockActs> acts_;        // [L] without checkpointing, [1] (recompute workspace) with it
  std::vector<Tensor> layer_inputs_;   // [L+1] of [N, H]: layer l's input; [L] is the final hidden state
  BlockScratch scratch_;
  Tensor normed_;                      // [N, H] model.norm output
  Tensor final_rstd_;                  // [N]
  Tensor dh_;                          // [N, H] gradient at model.norm's output
  Tensor dy_;                          // [N, H] gradient flowing down through the layers
};

}  // namespace ftune

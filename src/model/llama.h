// The Llama model on the CPU: embedding, decoder layers, final norm, lm_head + cross-entropy,
// with LoRA adapters trained on a frozen base, or every weight trained (full fine-tuning). Buffers
// are allocated once, for the largest micro-batch, when the model is built. A UnitGate, when given,
// is asked for each unit's weights just before they are used and handed each unit's gradients just
// after they are complete (ZeRO-3); without one every weight is read where it lies.
// A pipeline stage (ModelOptions' layer range) runs only its layers, with the embedding on the
// stage of layer 0 and the final norm, lm_head and loss on the stage of the last layer; the hidden
// state enters and leaves through the stage calls, and several micro-batches can be in flight at
// once (one slot of activations each), as a 1F1B schedule needs.
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
  // Pipeline stage: layers [first_layer, end_layer) (end_layer -1: to the last layer), and the
  // micro-batches in flight at once on this stage, each with activations of its own.
  int64_t first_layer = 0, end_layer = -1;
  int64_t slots = 1;
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

  // Pipeline stage calls. stage_forward runs micro-batch `b` in `slot` through this stage's
  // layers: `in` [N, H] is the previous stage's output (nullptr on the first stage, which embeds
  // b.ids), `out` [N, H] receives this stage's output (nullptr on the last stage). The last stage
  // computes the loss and, when `train`, the head's backward at once (the loss gradient scaled by
  // grad_scale), so that its stage_backward needs no incoming gradient. stage_backward takes the
  // gradient of this stage's output (`dout`, nullptr on the last stage), accumulates the weight
  // gradients as forward_backward does, and writes the gradient of the stage's input to `din`
  // (nullptr on the first stage, which ends in the embedding's gradient).
  cpu::CrossEntropyResult stage_forward(int64_t slot, const Batch& b, const float* in, float* out, bool train,
                                        float grad_scale, uint64_t dropout_key, LlamaWeights* wgrad = nullptr);
  void stage_backward(int64_t slot, const Batch& b, const float* dout, float* din, LoraParams& grads,
                      LlamaWeights* wgrad = nullptr);
  bool first_stage() const { return l0_ == 0; }
  bool last_stage() const { return l1_ == cfg_.num_hidden_layers; }

 private:
  // One micro-batch in flight: its shape, RoPE tables and saved activations.
  struct Slot {
    StepShape shape;
    std::vector<float> cos, sin;         // [N, d/2]
    std::vector<BlockActs> acts;         // [stage layers] without checkpointing, [] with it
    std::vector<Tensor> layer_inputs;    // [stage layers + 1] of [N, H]: the input of each; the last is the output
  };
  StepShape prepare(Slot& sl, const Batch& b, const float* in, uint64_t dropout_key);
  // Runs the stage's layers on the slot; on the last stage also model.norm. Returns the stage's
  // output (the final hidden state before model.norm on the last stage), [N, H].
  const float* run_layers(Slot& sl);
  // The head's forward (and backward when train), then model.norm's backward into dy_.
  cpu::CrossEntropyResult head(Slot& sl, const Batch& b, bool train, float grad_scale, LlamaWeights* wgrad);
  BlockActs& acts_of(Slot& sl, int64_t l) { return opt_.gradient_checkpointing ? recompute_ : sl.acts[l - l0_]; }
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
  int64_t l0_, l1_;                    // this stage's layers [l0_, l1_)
  std::vector<float> inv_freq_;        // [d/2]
  std::vector<Slot> slots_;            // [opt.slots]
  BlockActs recompute_;                // with checkpointing: the one layer being recomputed
  BlockScratch scratch_;
  Tensor normed_;                      // [N, H] model.norm output
  Tensor final_rstd_;                  // [N]
  Tensor dh_;                          // [N, H] gradient at model.norm's output
  Tensor dy_;                          // [N, H] gradient flowing down through the layers
};

}  // namespace ftune

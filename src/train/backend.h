// Where a training step runs: the CPU reference model or the GPU model, behind one interface so
// the trainer loop is the same for both.
#pragma once
#include <memory>
#include <string>

#include "model/batch.h"
#include "model/llama.h"
#include "model/lora.h"
#include "ops/cpu/cross_entropy.h"

namespace ftune {

class TrainBackend {
 public:
  virtual ~TrainBackend() = default;
  virtual std::string name() const = 0;
  // Loss gradients scaled by grad_scale are added into `grads` (host).
  virtual cpu::CrossEntropyResult forward_backward(const Batch& b, float grad_scale, LoraParams& grads,
                                                   uint64_t dropout_key) = 0;
  virtual cpu::CrossEntropyResult loss(const Batch& b) = 0;
  // The adapter changed on the host (an optimizer step).
  virtual void params_changed() {}
};

// device: "cpu", "cuda", or "auto" (cuda when this build has it and a GPU is present).
std::unique_ptr<TrainBackend> make_backend(const std::string& device, const LlamaConfig& cfg, const LlamaWeights& w,
                                           const LoraParams& lora, const ModelOptions& opt);

// Part of the CUDA build only.
std::unique_ptr<TrainBackend> make_gpu_backend(const LlamaConfig& cfg, const LlamaWeights& w, const LoraParams& lora,
                                               const ModelOptions& opt);
bool gpu_available();

}  // namespace ftune

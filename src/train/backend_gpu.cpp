// The GPU backend: LlamaGpu with the adapter mirrored on the device.
#include <fmt/format.h>

#include "core/error.h"
#include "model/llama_gpu.h"
#include "ops/cuda/context.h"
#include "train/backend.h"

namespace ftune {

namespace {

class GpuBackend final : public TrainBackend {
 public:
  GpuBackend(const LlamaConfig& cfg, const LlamaWeights& w, const LoraParams& lora, const ModelOptions& opt)
      : lora_(lora), model_(ctx_, cfg, w, &lora.spec, opt.max_batch, opt.max_seq) {
    if (opt.gradient_checkpointing)
      fail("train.gradient_checkpointing is not available on the GPU backend yet (use train.device=cpu or turn it off)");
    model_.upload_lora(lora_);
  }
  std::string name() const override { return fmt::format("cuda ({}, sm_{})", ctx_.name(), ctx_.sm_version()); }
  cpu::CrossEntropyResult forward_backward(const Batch& b, float scale, LoraParams& grads, uint64_t key) override {
    const auto [sum, count] = model_.forward_backward(b, scale, grads, key);
    return {sum, count};
  }
  cpu::CrossEntropyResult loss(const Batch& b) override {
    const auto [sum, count] = model_.loss(b);
    return {sum, count};
  }
  void params_changed() override { model_.upload_lora(lora_); }

 private:
  cuda::Context ctx_;
  const LoraParams& lora_;
  LlamaGpu model_;
};

}  // namespace

bool gpu_available() { return cuda::device_count() > 0; }

std::unique_ptr<TrainBackend> make_gpu_backend(const LlamaConfig& cfg, const LlamaWeights& w, const LoraParams& lora,
                                               const ModelOptions& opt) {
  if (!gpu_available()) fail("train.device=cuda: no CUDA device is visible");
  return std::make_unique<GpuBackend>(cfg, w, lora, opt);
}

}  // namespace ftune

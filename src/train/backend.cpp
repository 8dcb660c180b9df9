// Backend choice and the CPU backend.
#include "train/backend.h"

#include "core/error.h"

namespace ftune {

namespace {

class CpuBackend final : public TrainBackend {
 public:
  CpuBackend(const LlamaConfig& cfg, const LlamaWeights& w, const LoraParams& lora, const ModelOptions& opt)
      : model_(cfg, w, &lora, opt) {}
  std::string name() const override { return "cpu"; }
  cpu::CrossEntropyResult forward_backward(const Batch& b, float scale, LoraParams& grads, uint64_t key) override {
    return model_.forward_backward(b, scale, grads, key);
  }
  cpu::CrossEntropyResult loss(const Batch& b) override { return model_.loss(b); }

 private:
  LlamaCpu model_;  // reads the adapter through the reference it was given
};

}  // namespace

#ifndef FTUNE_HAVE_CUDA
std::unique_ptr<TrainBackend> make_gpu_backend(const LlamaConfig&, const LlamaWeights&, const LoraParams&,
                                               const ModelOptions&) {
  fail("train.device: this ftune was built without CUDA (nvcc was not found at build time)");
}
bool gpu_available() { return false; }
#endif

std::unique_ptr<TrainBackend> make_backend(const std::string& device, const LlamaConfig& cfg, const LlamaWeights& w,
                                           const LoraParams& lora, const ModelOptions& opt) {
  if (device == "cuda" || (device == "auto" && gpu_available())) return make_gpu_backend(cfg, w, lora, opt);
  if (device != "cpu" && device != "auto") fail("train.device: unknown device '{}' (cpu, cuda, auto)", device);
  return std::make_unique<CpuBackend>(cfg, w, lora, opt);
}

}  // namespace ftune

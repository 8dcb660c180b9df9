// Backend choice and the CPU backend.
#include "train/backend.h"

#include "core/error.h"

namespace ftune {

namespace {

class CpuBackend final : public TrainBackend {
 public:
  CpuBackend(const LlamaConfig& cfg, const CheckpointReader& ckpt, const LoraParams& lora, const BackendOptions& opt)
      : weights_(load_llama_weights(cfg, ckpt)),
        lora_(lora),
        grads_(lora.zeros_like()),
        opt_(lora_, opt.adamw),
        model_(cfg, weights_, &lora_, opt.model) {}
  std::string name() const override { return "cpu"; }
  cpu::CrossEntropyResult forward_backward(const Batch& b, float scale, uint64_t key) override {
    return model_.forward_backward(b, scale, grads_, key);
  }
  cpu::CrossEntropyResult loss(const Batch& b) override { return model_.loss(b); }
  double step(double lr, double max_norm) override {
    const double norm = clip_grad_norm(grads_, max_norm);
    opt_.step(lora_, grads_, lr);
    grads_.for_each([](const std::string&, Tensor& t) { t.zero(); });
    return norm;
  }
  void read_adapter(LoraParams& out) const override { out = lora_; }

 private:
  LlamaWeights weights_;
  LoraParams lora_;   // the adapter being trained
  LoraParams grads_;  // same shapes
  AdamW opt_;
  LlamaCpu model_;  // reads the adapter through a reference to lora_
};

}  // namespace

#ifndef FTUNE_HAVE_CUDA
std::unique_ptr<TrainBackend> make_gpu_backend(const LlamaConfig&, const CheckpointReader&, const LoraParams&,
                                               const BackendOptions&) {
  fail("train.device: this ftune was built without CUDA (nvcc was not found at build time)");
}
bool gpu_available() { return false; }
#endif

std::unique_ptr<TrainBackend> make_backend(const std::string& device, const LlamaConfig& cfg,
                                           const CheckpointReader& ckpt, const LoraParams& lora,
                                           const BackendOptions& opt) {
  if (device == "cuda" || (device == "auto" && gpu_available())) return make_gpu_backend(cfg, ckpt, lora, opt);
  if (device != "cpu" && device != "auto") fail("train.device: unknown device '{}' (cpu, cuda, auto)", device);
  return std::make_unique<CpuBackend>(cfg, ckpt, lora, opt);
}

}  // namespace ftune

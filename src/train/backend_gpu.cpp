// The GPU backend: LlamaGpu with the adapter, its gradients and AdamW state on the device; only
// the losses and the gradient norm come back to the host each step.
#include <fmt/format.h>

#include <cmath>

#include "core/error.h"
#include "model/llama_gpu.h"
#include "ops/cuda/context.h"
#include "optim/loss_scaler.h"
#include "train/backend.h"

namespace ftune {

namespace {

GpuModelOptions model_options(const cuda::Context& ctx, const BackendOptions& opt) {
  const bool has_bf16 = ctx.sm_version() >= 80;
  const RunPlan& p = opt.plan;
  if (p.precision == Precision::Bf16 && !has_bf16)
    fail("train.precision=bf16 needs a GPU of compute capability 8.0 or newer; this {} is sm_{} (use fp32 or auto)",
         ctx.name(), ctx.sm_version());
  // bf16 and auto: bf16 where the GPU has it (an explicit bf16 without it failed above).
  const cuda::Storage storage = p.precision == Precision::Fp16 ? cuda::Storage::F16
                                : p.precision == Precision::Fp32 ? cuda::Storage::F32
                                : has_bf16                ? cuda::Storage::BF16
                                                          : cuda::Storage::F32;
  const bool qlora = p.method == Method::Qlora;
  if (qlora && storage != cuda::Storage::BF16) {
    if (p.precision != Precision::Auto)
      fail("train.method=qlora computes in bf16 on the GPU: set train.precision to bf16 or auto (or train.device=cpu)");
    fail("train.method=qlora computes in bf16, which this {} (sm_{}) lacks; use train.method=lora with "
         "train.precision=fp32, or train.device=cpu",
         ctx.name(), ctx.sm_version());
  }
  FT_ASSERT(!p.offload_activations || opt.model.gradient_checkpointing);  // the run plan's rule
  const GpuOptimizer o = p.optimizer == OptimizerKind::AdamW8bit        ? GpuOptimizer::AdamW8bit
                         : p.optimizer == OptimizerKind::PagedAdamW8bit ? GpuOptimizer::PagedAdamW8bit
                                                                        : GpuOptimizer::AdamW;
  return {opt.model.max_batch, opt.model.max_seq, storage, opt.model.gradient_checkpointing, qlora, o,
          p.offload_activations};
}

class GpuBackend final : public TrainBackend {
 public:
  GpuBackend(const LlamaConfig& cfg, const CheckpointReader& ckpt, const LoraParams& lora, const BackendOptions& opt)
      : baseline_(cuda::memory_in_use()),
        adamw_(opt.plan.adamw),
        shape_(lora.zeros_like()),
        model_(ctx_, cfg, checkpoint_source(cfg, ckpt).get(), &lora.spec, model_options(ctx_, opt)) {
    model_.set_lora(lora);
  }
  std::string name() const override {
    const GpuModelOptions& o = model_.options();
    return fmt::format("cuda ({}, sm_{}; {}{}{}{})", ctx_.name(), ctx_.sm_version(),
                       o.storage == cuda::Storage::F16    ? "fp16, dynamic loss scaling"
                       : o.storage == cuda::Storage::BF16 ? "bf16"
                                                          : "fp32",
                       o.nf4 ? ", NF4 base" : "", o.checkpointing ? ", checkpointed" : "",
                       o.offload ? ", inputs offloaded" : "");
  }
  cpu::CrossEntropyResult forward_backward(const Batch& b, float scale, uint64_t key) override {
    // fp16: the gradients carry the loss scale until the step divides it out.
    const float s = fp16() ? static_cast<float>(scaler_.scale()) : 1.0f;
    const auto [sum, count] = model_.forward_backward(b, scale * s, key);
    return {sum, count};
  }
  cpu::CrossEntropyResult loss(const Batch& b) override {
    const auto [sum, count] = model_.loss(b);
    return {sum, count};
  }
  StepResult step(double lr, double max_norm) override {
    double norm = model_.grad_norm();
    float unscale = 1.0f;
    if (fp16()) {  // overflowed gradients: the step is skipped and the scale halved
      const double s = scaler_.scale();
      if (!scaler_.update(std::isfinite(norm))) {
        model_.zero_grads();
        return {norm, true};
      }
      norm /= s, unscale = static_cast<float>(1.0 / s);
    }
    const float c = static_cast<float>(clip_coefficient(norm, max_norm)) * unscale;
    model_.adamw_step({static_cast<float>(lr), static_cast<float>(adamw_.beta1), static_cast<float>(adamw_.beta2),
                       static_cast<float>(adamw_.eps), static_cast<float>(adamw_.weight_decay), ++t_},
                      c);
    model_.zero_grads();
    return {norm, false};
  }
  void read_adapter(LoraParams& out) const override {
    out = shape_;
    model_.get_lora(out);
  }
  bool fp16() const { return model_.options().storage == cuda::Storage::F16; }
  size_t planned_bytes() const override { return model_.planned_bytes(); }
  size_t measured_bytes() const override { return cuda::memory_in_use() - baseline_; }

 private:
  cuda::Context ctx_;
  size_t baseline_;  // device bytes in use before the model (CUDA context, cuBLAS workspace)
  AdamWSettings adamw_;
  LoraParams shape_;  // zeros of the adapter's shapes (spec included)
  LlamaGpu model_;
  int64_t t_ = 0;
  LossScaler scaler_;  // fp16 only
};

// Full fine-tuning on the GPU: the model holds the masters, gradients and moments on the device;
// this class adds the step's rules (loss scaling, clipping) as the LoRA backend does.
class GpuFullBackend final : public TrainBackend {
 public:
  GpuFullBackend(const LlamaConfig& cfg, const CheckpointReader& ckpt, const BackendOptions& opt)
      : baseline_(cuda::memory_in_use()), adamw_(opt.plan.adamw),
        model_(ctx_, cfg, checkpoint_source(cfg, ckpt).get(), nullptr, full_options(ctx_, opt)) {}
  std::string name() const override {
    const auto& o = model_.options();
    return fmt::format("cuda ({}), {}, full fine-tuning (fp32 masters and AdamW moments){}", ctx_.name(),
                       o.storage == cuda::Storage::BF16   ? "bf16"
                       : o.storage == cuda::Storage::F16 ? "fp16 with loss scaling"
                                                          : "fp32",
                       o.checkpointing ? ", checkpointed" : "");
  }
  cpu::CrossEntropyResult forward_backward(const Batch& b, float scale, uint64_t key) override {
    const float s = fp16() ? static_cast<float>(scaler_.scale()) : 1.0f;
    const auto [sum, count] = model_.forward_backward(b, scale * s, key);
    return {sum, count};
  }
  cpu::CrossEntropyResult loss(const Batch& b) override {
    const auto [sum, count] = model_.loss(b);
    return {sum, count};
  }
  StepResult step(double lr, double max_norm) override {
    double norm = model_.grad_norm();
    float unscale = 1.0f;
    if (fp16()) {
      const double s = scaler_.scale();
      if (!scaler_.update(std::isfinite(norm))) {
        model_.zero_grads();
        return {norm, true};
      }
      norm /= s, unscale = static_cast<float>(1.0 / s);
    }
    const float c = static_cast<float>(clip_coefficient(norm, max_norm)) * unscale;
    model_.full_adamw_step({static_cast<float>(lr), static_cast<float>(adamw_.beta1), static_cast<float>(adamw_.beta2),
                            static_cast<float>(adamw_.eps), static_cast<float>(adamw_.weight_decay), ++t_},
                           c);
    model_.zero_grads();
    return {norm, false};
  }
  void read_weights(LlamaWeights& out) const override { model_.get_weights(out); }
  bool fp16() const { return model_.options().storage == cuda::Storage::F16; }
  size_t planned_bytes() const override { return model_.planned_bytes(); }
  size_t measured_bytes() const override { return cuda::memory_in_use() - baseline_; }

 private:
  static GpuModelOptions full_options(const cuda::Context& ctx, const BackendOptions& opt) {
    GpuModelOptions o = model_options(ctx, opt);
    o.full = true;
    return o;
  }
  cuda::Context ctx_;
  size_t baseline_;
  AdamWSettings adamw_;
  LlamaGpu model_;
  int64_t t_ = 0;
  LossScaler scaler_;  // fp16 only
};

}  // namespace

bool gpu_available() { return cuda::device_count() > 0; }

std::unique_ptr<TrainBackend> make_gpu_full_backend(const LlamaConfig& cfg, const CheckpointReader& ckpt,
                                                    const BackendOptions& opt) {
  if (!gpu_available()) fail("train.device=cuda: no CUDA device is visible");
  return std::make_unique<GpuFullBackend>(cfg, ckpt, opt);
}

std::unique_ptr<TrainBackend> make_gpu_backend(const LlamaConfig& cfg, const CheckpointReader& ckpt,
                                               const LoraParams& lora, const BackendOptions& opt) {
  if (!gpu_available()) fail("train.device=cuda: no CUDA device is visible");
  return std::make_unique<GpuBackend>(cfg, ckpt, lora, opt);
}

}  // namespace ftune

// The GPU backend: LlamaGpu with what trains, its gradients and the optimizer state; only the
// losses and the gradient norm come back to the host each step.
#include <fmt/format.h>

#include <bit>
#include <cmath>

#include "core/error.h"
#include "gpu/llama_gpu.h"
#include "gpu/nccl_communicator.h"
#include "gpu/run_options.h"
#include "ops/cuda/context.h"
#include "optim/loss_scaler.h"
#include "train/backend.h"

namespace ftune {

namespace {

// LoRA, QLoRA and full fine-tuning on the GPU: the model holds what trains, its gradients and the
// optimizer state (on the device, or on the host with optimizer offload); this class adds the
// step's rules (fp16 loss scaling, clipping) and the checkpoint state.
class GpuBackend final : public TrainBackend {
 public:
  // lora null: full fine-tuning.
  GpuBackend(const LlamaConfig& cfg, const CheckpointReader& ckpt, const LoraParams* lora, const BackendOptions& opt)
      : ctx_(device_of(opt.topology)),
        baseline_(cuda::memory_in_use()),
        adamw_(opt.plan.adamw),
        shape_(lora ? lora->zeros_like() : LoraParams{}),
        model_(ctx_, cfg, checkpoint_source(cfg, ckpt).get(), lora ? &lora->spec : nullptr, options(ctx_, opt, !lora)) {
    if (lora) model_.set_lora(*lora);
    const dist::Topology& t = opt.topology;
    if (t.world > 1 && t.local_world <= cuda::device_count()) {  // a GPU per rank: NCCL
      FT_ASSERT(opt.store);
      nccl_ = std::make_unique<NcclCommunicator>(*opt.store, t.rank, t.world, ctx_,
                                                 std::chrono::milliseconds(static_cast<int64_t>(opt.timeout_s * 1000)));
    }
  }
  std::string name() const override {
    const GpuModelOptions& o = model_.options();
    return fmt::format("cuda ({}, sm_{}; {}{}{}{}{}; {})", ctx_.name(), ctx_.sm_version(),
                       o.storage == cuda::Storage::F16    ? "fp16, dynamic loss scaling"
                       : o.storage == cuda::Storage::BF16 ? "bf16"
                                                          : "fp32",
                       o.full ? ", full fine-tuning" : "", o.nf4 ? ", NF4 base" : "",
                       o.checkpointing ? ", checkpointed" : "", o.offload ? ", inputs offloaded" : "",
                       model_.optimizer_description());
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
    model_.optimizer_step({static_cast<float>(lr), static_cast<float>(adamw_.beta1), static_cast<float>(adamw_.beta2),
                           static_cast<float>(adamw_.eps), static_cast<float>(adamw_.weight_decay), ++t_},
                          c);
    model_.zero_grads();
    return {norm, false};
  }
  void all_reduce_gradients(dist::Communicator& comm) override {
    if (nccl_) {
      const auto [g, n] = model_.gradient_buffer();
      nccl_->all_reduce_sum(g, n);
      return;
    }
    // Host-staged: the ranks share a GPU, so the sum goes through host memory and Gloo.
    model_.reduce_gradients([&](float* g, size_t n) { comm.all_reduce_sum(g, n); });
  }
  void read_adapter(LoraParams& out) const override {
    FT_ASSERT(!model_.options().full);
    out = shape_;
    model_.get_lora(out);
  }
  void read_weights(LlamaWeights& out) const override {
    FT_ASSERT(model_.options().full);
    model_.get_weights(out);
  }
  BackendState save_state() const override {
    BackendState s;
    model_.save_state(s);
    s.ints["gpu.steps"] = t_;
    const LossScaler::State sc = scaler_.state();
    s.ints["scaler.scale_bits"] = std::bit_cast<int64_t>(sc.scale);
    s.ints["scaler.clean"] = sc.clean, s.ints["scaler.skipped"] = sc.skipped;
    return s;
  }
  void load_state(const BackendState& s) override {
    model_.load_state(s);
    t_ = s.int_of("gpu.steps");
    scaler_.restore({std::bit_cast<double>(s.int_of("scaler.scale_bits")), s.int_of("scaler.clean"),
                     s.int_of("scaler.skipped")});
  }
  bool fp16() const { return model_.options().storage == cuda::Storage::F16; }
  size_t planned_bytes() const override { return model_.planned_bytes(); }
  size_t measured_bytes() const override { return cuda::memory_in_use() - baseline_; }

 private:
  static GpuModelOptions options(const cuda::Context& ctx, const BackendOptions& opt, bool full) {
    FT_ASSERT(full == (opt.plan.method == Method::Full));
    FT_ASSERT(opt.plan.checkpointing == opt.model.gradient_checkpointing);
    return gpu_model_options(opt.plan, opt.model.max_batch, opt.model.max_seq, ctx.sm_version(), ctx.name());
  }
  // This rank's GPU: its local rank's when the node has a GPU per rank, else all share GPU 0.
  static int device_of(const dist::Topology& t) {
    const int n = cuda::device_count();
    return t.local_world <= n ? t.local_rank % n : 0;
  }
  cuda::Context ctx_;
  size_t baseline_;  // device bytes in use before the model (CUDA context, cuBLAS workspace)
  AdamWSettings adamw_;
  LoraParams shape_;  // zeros of the adapter's shapes (spec included); empty for full fine-tuning
  LlamaGpu model_;
  int64_t t_ = 0;
  LossScaler scaler_;  // fp16 only
  std::unique_ptr<NcclCommunicator> nccl_;  // data parallel with a GPU per rank
};

}  // namespace

bool gpu_available() { return cuda::device_count() > 0; }

std::unique_ptr<TrainBackend> make_gpu_full_backend(const LlamaConfig& cfg, const CheckpointReader& ckpt,
                                                    const BackendOptions& opt) {
  if (!gpu_available()) fail("train.device=cuda: no CUDA device is visible");
  return std::make_unique<GpuBackend>(cfg, ckpt, nullptr, opt);
}

std::unique_ptr<TrainBackend> make_gpu_backend(const LlamaConfig& cfg, const CheckpointReader& ckpt,
                                               const LoraParams& lora, const BackendOptions& opt) {
  if (!gpu_available()) fail("train.device=cuda: no CUDA device is visible");
  return std::make_unique<GpuBackend>(cfg, ckpt, &lora, opt);
}

}  // namespace ftune

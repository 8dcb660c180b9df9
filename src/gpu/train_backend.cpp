// The GPU backend: LlamaGpu with what trains, its gradients and the optimizer state; only the
// losses and the gradient norm come back to the host each step.
#include <fmt/format.h>

#include <bit>
#include <cmath>
#include <cstdlib>
#include <string>

#include "core/error.h"
#include "gpu/llama_gpu.h"
#include "gpu/nccl_communicator.h"
#include "gpu/process_memory.h"
#include "gpu/zero3_comm.h"
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
        process_baseline_(process_device_memory(ctx_.device())),
        cap_(static_cast<size_t>(opt.plan.max_memory)),
        rank_(opt.topology.rank),
        pipe_(opt.pipe),
        adamw_(opt.plan.adamw),
        shape_(lora ? lora->zeros_like() : LoraParams{}),
        model_(ctx_, cfg, checkpoint_source(cfg, ckpt).get(), lora ? &lora->spec : nullptr,
               options(ctx_, opt, !lora, process_baseline_ ? process_baseline_ : baseline_)) {
    if (lora) model_.set_lora(*lora);
    const dist::Topology& t = opt.topology;
    // A GPU per rank: NCCL (a pipeline's stages and replicas exchange through host memory in this version).
    if (t.world > 1 && t.local_world <= cuda::device_count() && !pipe_) {
      FT_ASSERT(opt.store);
      nccl_ = std::make_unique<NcclCommunicator>(*opt.store, t.rank, t.world, ctx_,
                                                 std::chrono::milliseconds(static_cast<int64_t>(opt.timeout_s * 1000)));
    }
    if (model_.zero3() || model_.base_sharded()) {  // the units' host collectives (one rank: a local one)
      if (!opt.comm) single_ = dist::make_single_communicator();
      host_ = opt.comm ? opt.comm : single_.get();
    }
    if (model_.zero3()) {  // the units' collectives: NCCL, host-staged over the ranks' Gloo, or one rank
      zcomm_ = make_zero3_comm(ctx_, *host_, nccl_.get(), model_.zero3_max_unit_bytes(), model_.zero3_max_piece());
      model_.set_zero3_comm(zcomm_.get());
    }
    if (model_.base_sharded()) {  // FSDP-QLoRA: the frozen base's gathers (FTUNE_NO_CUDA_IPC=1: host-staged)
      const auto [pieces, bytes] = model_.sharded_base_pieces();
      const char* no_ipc = std::getenv("FTUNE_NO_CUDA_IPC");
      zcomm_ = make_frozen_gather_comm(ctx_, *host_, nccl_.get(), pieces, bytes, model_.sharded_base_unit_bytes(),
                                       !(no_ipc && *no_ipc && std::string(no_ipc) != "0"));
      model_.set_zero3_comm(zcomm_.get());
    }
  }
  std::string name() const override {
    const GpuModelOptions& o = model_.options();
    return fmt::format("cuda ({}, sm_{}; {}{}{}{}{}; {}{})", ctx_.name(), ctx_.sm_version(),
                       o.storage == cuda::Storage::F16    ? "fp16, dynamic loss scaling"
                       : o.storage == cuda::Storage::BF16 ? "bf16"
                                                          : "fp32",
                       o.full ? ", full fine-tuning" : "", o.nf4 ? ", NF4 base" : "",
                       o.checkpointing ? ", checkpointed" : "", o.offload ? ", inputs offloaded" : "",
                       model_.optimizer_description(),
                       model_.base_sharded() ? fmt::format("; the frozen base sharded over {} ranks, gathered by {}",
                                                           zcomm_->world(), zcomm_->transport())
                                             : "");
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
  size_t stage_bytes(const Batch& b) const override { return model_.stage_act_bytes(b); }
  size_t stage_grad_bytes(const Batch& b) const override { return model_.stage_grad_bytes(b); }
  cpu::CrossEntropyResult stage_forward(int64_t slot, const Batch& b, const void* in, void* out, bool train,
                                        float scale, uint64_t key) override {
    const float s = fp16() ? static_cast<float>(scaler_.scale()) : 1.0f;
    const auto [sum, count] = model_.stage_forward(slot, b, in, out, train, scale * s, key);
    return {sum, count};
  }
  void stage_backward(int64_t slot, const Batch& b, const void* dout, void* din) override {
    model_.stage_backward(slot, b, dout, din);
  }
  StepResult step(double lr, double max_norm) override {
    // Under a pipeline the other stages hold the rest of the gradient (an overflow anywhere makes
    // every stage skip).
    double norm = dist::norm_over_ranks(model_.grad_norm(), pipe_);
    float unscale = 1.0f;
    if (fp16()) {  // overflowed gradients: the step is skipped and the scale halved
      const double s = scaler_.scale();
      if (!std::isfinite(norm)) {  // an overflow of the forward itself, not of the scaled gradients: say where
        const std::string where = model_.forward_overflow();
        if (!where.empty()) fail("rank {}: {}", rank_, where);
      }
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
    check_cap();
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
    model_.get_lora(out);  // under a pipeline, this stage's layers (the others stay zero): summed over the stages
    if (pipe_) sum_adapter_over_stages(out, pipe_);
  }
  void read_weights(LlamaWeights& out) const override {
    FT_ASSERT(model_.options().full);
    if (!model_.zero3()) return model_.get_weights(out);
    // ZeRO-3: every rank's pieces, unit by unit (collective); rank 0 takes the whole weights, which
    // it writes, and the other ranks return none.
    const dist::Zero3Layout& z = *model_.zero3();
    const ParamTable& table = model_.table();
    const std::vector<float> local = model_.local_masters();
    const bool root = host_->rank() == 0;
    std::vector<float> whole(root ? static_cast<size_t>(table.trainable_numel()) : 0);
    dist::zero3_to_table(z, local.data(), *host_, root ? whole.data() : nullptr);
    if (!root) return;
    out.layers.resize(static_cast<size_t>(z.units() - 2));  // units: the embedding, the L layers, the lm_head
    for (const ParamSpec& s : table.specs()) param_tensor(out, s) = Tensor(s.shape);
    scatter_trainable(table, whole.data(), out);
  }
  std::function<Tensor(const ParamSpec&)> weight_stream() override {
    if (!model_.zero3()) return {};
    struct Stream {  // this rank's masters on the host (1/N of the model) and the unit being read
      std::vector<float> local;
      std::unique_ptr<dist::Zero3TensorGather> gather;
    };
    auto st = std::make_shared<Stream>();
    st->local = model_.local_masters();
    st->gather = std::make_unique<dist::Zero3TensorGather>(*model_.zero3(), st->local.data(), *host_);
    return [st](const ParamSpec& s) {
      Tensor t(s.shape);
      t.data = st->gather->values(s);
      return t;
    };
  }
  bool collective_state() const override { return model_.zero3() != nullptr || pipe_ != nullptr; }
  bool collective_forward() const override {
    if (model_.base_sharded()) return zcomm_->world() > 1;
    return model_.zero3() && model_.zero3()->world() > 1 && !model_.options().zero_whole_weights;
  }
  void forward_without_rows() override { model_.zero3_forward_without_rows(); }
  BackendState save_state() const override {
    BackendState s;
    model_.save_state(s);
    if (pipe_) {  // the whole adapter's flat layout, each stage's part summed into zeros over the stages
      if (s.f32.find("gpu.adam.m") == s.f32.end())
        fail("checkpoint: 8-bit AdamW moments under dist.pipeline are not checkpointed in this version (use "
             "train.optimizer adamw)");
      const auto [off, total] = model_.lora_place();
      for (const char* key : {"gpu.lora.p", "gpu.adam.m", "gpu.adam.v"}) {
        std::vector<float> whole(static_cast<size_t>(total), 0.0f);
        const std::vector<float>& part = s.f32_of(key, model_.lora_parameters());
        std::copy(part.begin(), part.end(), whole.begin() + off);
        pipe_->all_reduce_sum(whole.data(), whole.size());
        s.f32[key] = std::move(whole);
      }
    }
    if (const dist::Zero3Layout* z = model_.zero3()) {  // whole tensors in the table's layout, as every stage saves
      for (const char* key : {"master", "adam.m", "adam.v"}) {
        std::vector<float> whole(static_cast<size_t>(model_.table().trainable_numel()));
        dist::zero3_to_table(*z, s.f32_of(key, z->local_numel()).data(), *host_, whole.data());
        s.f32[key] = std::move(whole);
      }
    }
    s.ints["gpu.steps"] = t_;
    const LossScaler::State sc = scaler_.state();
    s.ints["scaler.scale_bits"] = std::bit_cast<int64_t>(sc.scale);
    s.ints["scaler.clean"] = sc.clean, s.ints["scaler.skipped"] = sc.skipped;
    return s;
  }
  void load_state(const BackendState& s) override {
    if (const dist::Zero3Layout* z = model_.zero3()) {  // this rank's pieces of the whole tensors
      BackendState mine = s;
      for (const char* key : {"master", "adam.m", "adam.v"}) {
        std::vector<float> local(static_cast<size_t>(z->local_numel()));
        dist::zero3_from_table(*z, s.f32_of(key, model_.table().trainable_numel()).data(), local.data());
        mine.f32[key] = std::move(local);
      }
      model_.load_state(mine);
    } else if (pipe_) {  // this stage's part of the whole adapter's state
      BackendState mine = s;
      const auto [off, total] = model_.lora_place();
      for (const char* key : {"gpu.lora.p", "gpu.adam.m", "gpu.adam.v"}) {
        const std::vector<float>& whole = s.f32_of(key, total);
        mine.f32[key] = std::vector<float>(whole.begin() + off, whole.begin() + off + model_.lora_parameters());
      }
      model_.load_state(mine);
    } else {
      model_.load_state(s);
    }
    t_ = s.int_of("gpu.steps");
    scaler_.restore({std::bit_cast<double>(s.int_of("scaler.scale_bits")), s.int_of("scaler.clean"),
                     s.int_of("scaler.skipped")});
  }
  bool fp16() const { return model_.options().storage == cuda::Storage::F16; }
  size_t planned_bytes() const override { return model_.planned_bytes(); }
  std::string attention_kernels() const override { return model_.attention_kernels(); }
  // What this process holds beyond its start (NVML's per-process count, right when ranks share the
  // GPU), else the device's use beyond what it was before the model.
  size_t measured_bytes() const override {
    const size_t mine = process_device_memory(ctx_.device());
    if (mine && process_baseline_) return mine - std::min(mine, process_baseline_);
    return cuda::memory_in_use() - baseline_;
  }

 private:
  static GpuModelOptions options(const cuda::Context& ctx, const BackendOptions& opt, bool full, size_t held) {
    FT_ASSERT(full == (opt.plan.method == Method::Full));
    FT_ASSERT(opt.plan.checkpointing == opt.model.gradient_checkpointing);
    GpuModelOptions o =
        gpu_model_options(opt.plan, opt.model.max_batch, opt.model.max_seq, ctx.sm_version(), ctx.name());
    if (!full && opt.plan.zero == 3 && opt.topology.world > 1)  // FSDP-QLoRA: the frozen base in pieces
      o.zero3_world = opt.topology.world, o.zero3_rank = opt.topology.rank;
    if (full && opt.plan.zero > 0 && opt.topology.world > 1) {  // ZeRO's pieces (stages 1 and 2: whole weights)
      o.zero3_world = opt.topology.world, o.zero3_rank = opt.topology.rank;
      o.zero_whole_weights = opt.plan.zero < 3;
    }
    if (opt.plan.max_memory) {
      const size_t cap = static_cast<size_t>(opt.plan.max_memory);
      size_t free = 0, total = 0;
      cuda::memory_info(free, total);
      if (cap > total)
        fail("train.max_memory: {:.2f} GiB is more than the {:.2f} GiB this {} has", static_cast<double>(cap) / kGiB,
             static_cast<double>(total) / kGiB, ctx.name());
      if (held >= cap)
        fail("train.max_memory: {:.2f} GiB is less than the {:.2f} GiB this process already holds on the GPU (the CUDA "
             "context and cuBLAS workspace)",
             static_cast<double>(cap) / kGiB, static_cast<double>(held) / kGiB);
      o.memory_cap = cap - held;
    }
    o.first_layer = opt.model.first_layer, o.end_layer = opt.model.end_layer, o.slots = opt.model.slots;
    return o;
  }
  // train.max_memory, measured: the process's device memory after a step.
  void check_cap() const {
    if (!cap_) return;
    const size_t mine = process_device_memory(ctx_.device());
    if (mine > cap_)
      fail("train.max_memory: rank {} holds {:.2f} GiB of device memory after a step, over its cap of {:.2f} GiB "
           "(planned {:.2f} GiB for the model)",
           rank_, static_cast<double>(mine) / kGiB, static_cast<double>(cap_) / kGiB,
           static_cast<double>(model_.planned_bytes()) / kGiB);
  }
  static constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
  // This rank's GPU: its local rank's when the node has a GPU per rank, else all share GPU 0.
  static int device_of(const dist::Topology& t) {
    const int n = cuda::device_count();
    return t.local_world <= n ? t.local_rank % n : 0;
  }
  cuda::Context ctx_;
  size_t baseline_;  // device bytes in use before the model (CUDA context, cuBLAS workspace)
  size_t process_baseline_;  // this process's bytes then (NVML; 0 when it cannot tell)
  size_t cap_;       // train.max_memory (0: none)
  int rank_;
  dist::Communicator* pipe_;  // a pipeline's stages, or nullptr
  AdamWSettings adamw_;
  LoraParams shape_;  // zeros of the adapter's shapes (spec included); empty for full fine-tuning
  LlamaGpu model_;
  int64_t t_ = 0;
  LossScaler scaler_;  // fp16 only
  std::unique_ptr<NcclCommunicator> nccl_;  // data parallel with a GPU per rank
  std::unique_ptr<dist::Communicator> single_;  // ZeRO-3 on one rank without a run communicator
  dist::Communicator* host_ = nullptr;          // ZeRO-3: the ranks' host collectives
  std::unique_ptr<Zero3Comm> zcomm_;            // ZeRO-3: the units' device collectives
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

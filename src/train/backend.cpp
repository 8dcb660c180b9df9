// Backend choice and the CPU backend.
#include "train/backend.h"

#include <fmt/format.h>

#include "core/error.h"
#include "optim/adamw8bit.h"
#include "dist/zero.h"
#include "optim/flat_adamw.h"
#include "train/lora_adamw.h"
#include "params/param_table.h"
#include "quant/nf4.h"

namespace ftune {

namespace {

// An adapter's tensors as one vector in for_each order (the GPU model's layout), and back.
std::vector<float> flatten(const LoraParams& p) {
  std::vector<float> flat;
  p.for_each([&](const std::string&, const Tensor& t) { flat.insert(flat.end(), t.data.begin(), t.data.end()); });
  return flat;
}
void unflatten(const std::vector<float>& flat, LoraParams& p) {
  size_t at = 0;
  p.for_each([&](const std::string&, Tensor& t) {
    std::copy_n(flat.begin() + static_cast<int64_t>(at), t.data.size(), t.data.begin());
    at += t.data.size();
  });
}

// QLoRA on the CPU: every projection replaced by its NF4 round trip (double-quantized, blocks of
// 64), the values the GPU dequantizes before each GEMM.
LlamaWeights load_weights(const LlamaConfig& cfg, const CheckpointReader& ckpt, bool nf4) {
  LlamaWeights w = load_llama_weights(cfg, ckpt);  // NF4 weights of a bitsandbytes file come dequantized
  if (nf4)
    for (int64_t l = 0; l < cfg.num_hidden_layers; ++l)
      for (int p = 0; p < kNumProj; ++p) {
        if (stored_quantized(ckpt, l, static_cast<Proj>(p))) continue;
        Tensor& t = w.layers[l].proj[p];
        nf4_dequantize(nf4_quantize(t.data.data(), t.shape, 64, true), t.data.data());
      }
  return w;
}

class CpuBackend final : public TrainBackend {
 public:
  CpuBackend(const LlamaConfig& cfg, const CheckpointReader& ckpt, const LoraParams& lora, const BackendOptions& opt)
      : weights_(load_weights(cfg, ckpt, opt.plan.method == Method::Qlora)),
        lora_(lora),
        grads_(lora.zeros_like()),
        settings_(opt.plan.adamw),
        opt_(lora_, opt.plan.adamw),
        model_(cfg, weights_, &lora_, opt.model) {
    // Paging moves states between GPU and host memory; on the CPU both 8-bit choices are the same.
    if (opt.plan.optimizer != OptimizerKind::AdamW) adam8_ = std::make_unique<Adam8bitState>(lora_.num_parameters());
  }
  std::string name() const override { return "cpu"; }
  cpu::CrossEntropyResult forward_backward(const Batch& b, float scale, uint64_t key) override {
    return model_.forward_backward(b, scale, grads_, key);
  }
  cpu::CrossEntropyResult loss(const Batch& b) override { return model_.loss(b); }
  StepResult step(double lr, double max_norm) override {
    const double norm = clip_grad_norm(grads_, max_norm);
    if (adam8_)
      step8(lr);
    else
      opt_.step(lora_, grads_, lr);
    grads_.for_each([](const std::string&, Tensor& t) { t.zero(); });
    return {norm, false};
  }
  void read_adapter(LoraParams& out) const override { out = lora_; }
  void all_reduce_gradients(dist::Communicator& comm) override {
    std::vector<float> flat = flatten(grads_);
    comm.all_reduce_sum(flat.data(), flat.size());
    unflatten(flat, grads_);
  }
  BackendState save_state() const override {
    BackendState s;
    lora_.for_each([&](const std::string& key, const Tensor& t) { s.f32["adapter." + key] = t.data; });
    if (adam8_) {
      save_adam8bit(*adam8_, "adam8.", s);
      s.ints["adam8.t"] = t8_;
    } else {
      opt_.first_moment().for_each([&](const std::string& key, const Tensor& t) { s.f32["adam.m." + key] = t.data; });
      opt_.second_moment().for_each([&](const std::string& key, const Tensor& t) { s.f32["adam.v." + key] = t.data; });
      s.ints["adam.t"] = opt_.steps();
    }
    return s;
  }
  void load_state(const BackendState& s) override {
    auto take = [&](const std::string& name, std::vector<float>& dst) {
      dst = s.f32_of(name, static_cast<int64_t>(dst.size()));
    };
    lora_.for_each([&](const std::string& key, Tensor& t) { take("adapter." + key, t.data); });
    if (adam8_) {
      load_adam8bit(*adam8_, "adam8.", s);
      t8_ = s.int_of("adam8.t");
    } else {
      LoraParams m = lora_.zeros_like(), v = lora_.zeros_like();
      m.for_each([&](const std::string& key, Tensor& t) { take("adam.m." + key, t.data); });
      v.for_each([&](const std::string& key, Tensor& t) { take("adam.v." + key, t.data); });
      opt_.restore(std::move(m), std::move(v), s.int_of("adam.t"));
    }
  }

 private:
  // 8-bit AdamW over the adapter flattened in for_each order (as the GPU model lays it out).
  void step8(double lr) {
    std::vector<float> p = flatten(lora_);
    const std::vector<float> g = flatten(grads_);
    adam8_->step({static_cast<float>(lr), static_cast<float>(settings_.beta1), static_cast<float>(settings_.beta2),
                  static_cast<float>(settings_.eps), static_cast<float>(settings_.weight_decay), ++t8_, 1.0f},
                 p.data(), g.data());
    unflatten(p, lora_);
  }

  LlamaWeights weights_;
  LoraParams lora_;   // the adapter being trained
  LoraParams grads_;  // same shapes
  AdamWSettings settings_;
  LoraAdamW opt_;
  std::unique_ptr<Adam8bitState> adam8_;  // adamw_8bit / paged_adamw_8bit
  int64_t t8_ = 0;
  LlamaCpu model_;  // reads the adapter through a reference to lora_
};

// Full fine-tuning on the CPU: every weight trains. The optimizer steps a flat fp32 master copy
// (the parameter table's layout, which a checkpoint saves and ZeRO shards); the model computes
// with weights_, its compute copy, refreshed from the master after each step. On the CPU both are
// fp32, so the refresh is an exact copy. adamw_8bit keeps one 8-bit state per tensor, as
// bitsandbytes' AdamW8bit keeps one per parameter (fp32 moments under 4096 elements), with weight
// decay on the decayed tensors: the twin of the GPU's 8-bit full fine-tuning, bit for bit.
// With several ranks and dist.zero 1 or 2, each rank keeps the AdamW moments of its shard of the
// flat layout only (dist/zero.h) and updates that part of the masters, which the ranks then
// all-gather; under stage 2 it receives only its part of the summed gradients (reduce-scatter). The
// arithmetic is the unsharded run's, element for element, so the run is bitwise the data-parallel one.
// dist.zero 3 with several ranks, which shards the weights too, is train/cpu_zero3_backend.cpp (one
// rank under dist.zero 3 is this backend unsharded).
class CpuFullBackend final : public TrainBackend {
 public:
  CpuFullBackend(const LlamaConfig& cfg, const CheckpointReader& ckpt, const BackendOptions& opt)
      : weights_(load_llama_weights(cfg, ckpt)),
        grads_(zeros_like(weights_)),
        table_(ParamTable::full(cfg)),
        master_(static_cast<size_t>(table_.trainable_numel())),
        flat_grad_(master_.size()),
        zero_(opt.comm && opt.comm->world() > 1 ? opt.plan.zero : 0),
        comm_(opt.comm),
        shard_(zero_ ? dist::make_shard(table_.trainable_numel(), opt.comm->rank(), opt.comm->world())
                     : dist::make_shard(table_.trainable_numel(), 0, 1)),
        opt_(shard_.size(), opt.plan.adamw, dist::ranges_within(table_.decay_ranges(), shard_)),
        settings_(opt.plan.adamw),
        model_(cfg, weights_, nullptr, opt.model) {
    FT_ASSERT(opt.plan.optimizer != OptimizerKind::PagedAdamW8bit);  // the run plan refuses it
    if (opt.plan.optimizer == OptimizerKind::AdamW8bit)
      for (const ParamSpec& s : table_.specs()) adam8_.emplace_back(s.numel());
    gather_trainable(table_, weights_, master_.data());
  }
  std::string name() const override {
    return adam8_.empty() ? "cpu, full fine-tuning" : "cpu, full fine-tuning, 8-bit AdamW moments per tensor";
  }
  cpu::CrossEntropyResult forward_backward(const Batch& b, float scale, uint64_t key) override {
    return model_.forward_backward(b, scale, none_, key, &grads_);
  }
  cpu::CrossEntropyResult loss(const Batch& b) override { return model_.loss(b); }
  StepResult step(double lr, double max_norm) override {
    const int64_t P = table_.trainable_numel();
    if (!grads_in_flat_) gather_trainable(table_, grads_, flat_grad_.data());
    grads_in_flat_ = false;
    const double norm = zero_ == 2 ? dist::sharded_grad_norm(flat_grad_.data() + shard_.begin, shard_, P, *comm_)
                                   : flat_grad_norm(flat_grad_.data(), P);
    const float coef = static_cast<float>(clip_coefficient(norm, max_norm));
    if (zero_) {  // this rank's part of the masters, then every rank's
      opt_.step(master_.data() + shard_.begin, flat_grad_.data() + shard_.begin, lr, coef);
      const std::vector<float> mine(master_.begin() + shard_.begin, master_.begin() + shard_.end);
      comm_->all_gather(mine.data(), master_.data(), shard_.counts);
    } else if (adam8_.empty()) {
      opt_.step(master_.data(), flat_grad_.data(), lr, coef);
    } else {
      ++t8_;
      for (size_t i = 0; i < adam8_.size(); ++i) {
        const ParamSpec& s = table_.specs()[i];
        adam8_[i].step({static_cast<float>(lr), static_cast<float>(settings_.beta1),
                        static_cast<float>(settings_.beta2), static_cast<float>(settings_.eps),
                        s.decay ? static_cast<float>(settings_.weight_decay) : 0.0f, t8_, coef},
                       master_.data() + s.offset, flat_grad_.data() + s.offset);
      }
    }
    scatter_trainable(table_, master_.data(), weights_);  // refresh the compute copy
    for (const ParamSpec& s : table_.specs()) param_tensor(grads_, s).zero();
    return {norm, false};
  }
  bool collective_state() const override { return zero_ > 0; }
  void all_reduce_gradients(dist::Communicator& comm) override {
    gather_trainable(table_, grads_, flat_grad_.data());
    if (zero_ == 2) {  // only this rank's part of the sum
      std::vector<float> part(static_cast<size_t>(shard_.size()));
      comm.reduce_scatter_sum(flat_grad_.data(), part.data(), shard_.counts);
      std::copy(part.begin(), part.end(), flat_grad_.begin() + shard_.begin);
    } else {
      comm.all_reduce_sum(flat_grad_.data(), flat_grad_.size());
    }
    grads_in_flat_ = true;
  }
  void read_weights(LlamaWeights& out) const override { out = weights_; }
  BackendState save_state() const override {
    BackendState s;
    s.f32["master"] = master_;
    if (!adam8_.empty()) {  // the GPU's names for the same per-tensor states
      for (size_t i = 0; i < adam8_.size(); ++i) save_adam8bit(adam8_[i], fmt::format("adam8.{}.", i), s);
      s.ints["adam8.t"] = t8_;
      return s;
    }
    s.f32["adam.m"] = gathered(opt_.first_moment()), s.f32["adam.v"] = gathered(opt_.second_moment());
    s.ints["adam.t"] = opt_.steps();
    return s;
  }
  void load_state(const BackendState& s) override {
    const int64_t n = static_cast<int64_t>(master_.size());
    master_ = s.f32_of("master", n);
    if (!adam8_.empty()) {
      for (size_t i = 0; i < adam8_.size(); ++i) load_adam8bit(adam8_[i], fmt::format("adam8.{}.", i), s);
      t8_ = s.int_of("adam8.t");
    } else {
      opt_.restore(part_of(s.f32_of("adam.m", n)), part_of(s.f32_of("adam.v", n)), s.int_of("adam.t"));
    }
    scatter_trainable(table_, master_.data(), weights_);
  }

 private:
  LlamaWeights weights_;         // compute copy the model reads
  LlamaWeights grads_;           // same shapes, accumulated over the micro-batches of a step
  ParamTable table_;
  std::vector<float> master_;    // [trainable] fp32 master weights
  std::vector<float> flat_grad_; // [trainable]
  // ZeRO: checkpoints hold the whole moments (gathered from every rank; each rank takes its part back
  // on resume), so a checkpoint reads the same whatever the stage.
  std::vector<float> gathered(const std::vector<float>& part) const {
    if (!zero_) return part;
    std::vector<float> all(master_.size());
    comm_->all_gather(part.data(), all.data(), shard_.counts);
    return all;
  }
  std::vector<float> part_of(const std::vector<float>& all) const {
    return std::vector<float>(all.begin() + shard_.begin, all.begin() + shard_.end);
  }
  int zero_ = 0;                 // dist.zero: 0 (each rank steps everything), 1 or 2
  dist::Communicator* comm_ = nullptr;
  dist::Shard shard_;            // this rank's part of the flat layout (all of it without ZeRO)
  bool grads_in_flat_ = false;   // all_reduce_gradients left the summed gradients in flat_grad_
  FlatAdamW opt_;                // over shard_
  AdamWSettings settings_;
  std::vector<Adam8bitState> adam8_;  // adamw_8bit: one state per table spec
  int64_t t8_ = 0;
  LoraParams none_;              // no adapter
  LlamaCpu model_;
};

}  // namespace

#ifndef FTUNE_HAVE_CUDA
std::unique_ptr<TrainBackend> make_gpu_backend(const LlamaConfig&, const CheckpointReader&, const LoraParams&,
                                               const BackendOptions&) {
  fail("train.device: this ftune was built without CUDA (nvcc was not found at build time)");
}
std::unique_ptr<TrainBackend> make_gpu_full_backend(const LlamaConfig&, const CheckpointReader&, const BackendOptions&) {
  fail("train.device: this ftune was built without CUDA (nvcc was not found at build time)");
}
bool gpu_available() { return false; }
#endif

std::unique_ptr<TrainBackend> make_backend(const LlamaConfig& cfg, const CheckpointReader& ckpt, const LoraParams& lora,
                                           const BackendOptions& opt) {
  const Device device = opt.plan.device;
  const bool gpu = device == Device::Cuda || (device == Device::Auto && gpu_available());
  if (opt.plan.method == Method::Full) {
    if (gpu) return make_gpu_full_backend(cfg, ckpt, opt);
    if (opt.plan.zero == 3 && opt.comm && opt.comm->world() > 1) return make_cpu_zero3_backend(cfg, ckpt, opt);
    return std::make_unique<CpuFullBackend>(cfg, ckpt, opt);
  }
  if (gpu) return make_gpu_backend(cfg, ckpt, lora, opt);
  return std::make_unique<CpuBackend>(cfg, ckpt, lora, opt);
}

}  // namespace ftune

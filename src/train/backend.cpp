// Backend choice and the CPU backend.
#include "train/backend.h"

#include <fmt/format.h>

#include "core/error.h"
#include "optim/adamw8bit.h"
#include "dist/zero.h"
#include "dist/zero3.h"
#include "optim/flat_adamw.h"
#include "train/lora_adamw.h"
#include "train/zero3_units.h"
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

// Pipeline stages: layers [l0, l1) of opt.model (the whole model without a pipeline).
int64_t stage_end(const LlamaConfig& cfg, const ModelOptions& o) {
  return o.end_layer < 0 ? cfg.num_hidden_layers : o.end_layer;
}

// A stage keeps only the weights it runs: its layers, the embedding on the first stage, the final
// norm and lm_head on the last (the embedding there too when it is the tied lm_head).
void keep_stage_weights(const LlamaConfig& cfg, const ModelOptions& o, LlamaWeights& w) {
  const int64_t l0 = o.first_layer, l1 = stage_end(cfg, o), L = cfg.num_hidden_layers;
  for (int64_t l = 0; l < L; ++l)
    if (l < l0 || l >= l1) w.layers[l] = LayerWeights{};
  if (l0 > 0 && !(l1 == L && cfg.tie_word_embeddings)) w.embed = Tensor();
  if (l1 < L) w.final_norm = Tensor(), w.lm_head = Tensor();
}

// A projection replaced by its NF4 round trip (double-quantized, blocks of 64): the values the GPU
// dequantizes before each GEMM.
void nf4_round_trip(Tensor& t) { nf4_dequantize(nf4_quantize(t.data.data(), t.shape, 64, true), t.data.data()); }

// QLoRA on the CPU: every projection as nf4_round_trip makes it (a bitsandbytes file's NF4 weights
// come dequantized as they are). A pipeline stage keeps its own weights only.
LlamaWeights load_weights(const LlamaConfig& cfg, const CheckpointReader& ckpt, bool nf4, const BackendOptions& opt) {
  LlamaWeights w = load_llama_weights(cfg, ckpt);  // NF4 weights of a bitsandbytes file come dequantized
  if (opt.pipe) keep_stage_weights(cfg, opt.model, w);
  if (nf4)
    for (int64_t l = 0; l < cfg.num_hidden_layers; ++l)
      for (int p = 0; p < kNumProj; ++p) {
        if (!w.layers[l].proj[p].empty() && !stored_quantized(ckpt, l, static_cast<Proj>(p)))
          nf4_round_trip(w.layers[l].proj[p]);
      }
  return w;
}

// Pipeline: the whole of what trains from the stages' parts. Each stage adds its own values to
// zeros elsewhere (x + 0 is exactly x), summed over the pipeline's ranks.
void sum_over_stages(std::vector<float>& v, dist::Communicator* pipe) {
  if (pipe && pipe->world() > 1) pipe->all_reduce_sum(v.data(), v.size());
}
LoraParams whole_adapter(const LlamaConfig& cfg, const LoraParams& part, dist::Communicator* pipe) {
  LoraParams all = LoraParams::zeros(cfg, part.spec);
  for (size_t l = 0; l < part.layers.size(); ++l)
    for (int p = 0; p < kNumProj; ++p)
      if (part.layers[l][p].active()) all.layers[l][p] = part.layers[l][p];
  sum_adapter_over_stages(all, pipe);
  return all;
}

// QLoRA's base as the CPU computes with it: every projection the NF4 round trip of the stored one
// (as load_weights does), read one tensor at a time.
class Nf4RoundTrip final : public WeightSource {
 public:
  Nf4RoundTrip(std::unique_ptr<WeightSource> base, const CheckpointReader& ckpt) : base_(std::move(base)), ckpt_(ckpt) {}
  Tensor embed() const override { return base_->embed(); }
  Tensor final_norm() const override { return base_->final_norm(); }
  Tensor lm_head() const override { return base_->lm_head(); }
  Tensor norm(int64_t layer, bool post) const override { return base_->norm(layer, post); }
  Tensor proj(int64_t layer, Proj p) const override {
    Tensor t = base_->proj(layer, p);
    if (!stored_quantized(ckpt_, layer, p)) nf4_round_trip(t);
    return t;
  }

 private:
  std::unique_ptr<WeightSource> base_;
  const CheckpointReader& ckpt_;
};

// LoRA and QLoRA on the CPU. Under dist.zero 3 with several ranks (FSDP-QLoRA, as Answer.AI's
// fsdp_qlora shards the NF4 base): each rank keeps a piece of every unit of the frozen base (the
// values the model computes with: for QLoRA the NF4 round trip, the same bits on every rank), a
// unit is all-gathered just before it runs and dropped after, and the adapter, small, is data
// parallel (whole on every rank, its gradients summed).
class CpuBackend final : public TrainBackend {
 public:
  CpuBackend(const LlamaConfig& cfg, const CheckpointReader& ckpt, const LoraParams& lora, const BackendOptions& opt)
      : cfg_(cfg),
        pipe_(opt.pipe),
        weights_(sharded(opt) ? LlamaWeights{} : load_weights(cfg, ckpt, opt.plan.method == Method::Qlora, opt)),
        lora_(opt.pipe ? lora.layers_only(opt.model.first_layer, stage_end(cfg, opt.model)) : lora),
        grads_(lora_.zeros_like()),
        settings_(opt.plan.adamw),
        opt_(lora_, opt.plan.adamw),
        table_(ParamTable::full(cfg)),
        layout_(sharded(opt) ? std::make_unique<dist::Zero3Layout>(table_, cfg, opt.comm->rank(), opt.comm->world())
                             : nullptr),
        units_(layout_ ? make_units(cfg, ckpt, opt) : nullptr),
        model_(cfg, weights_, &lora_, opt.model, units_.get()) {
    // Paging moves states between GPU and host memory; on the CPU both 8-bit choices are the same.
    if (opt.plan.optimizer != OptimizerKind::AdamW) adam8_ = std::make_unique<Adam8bitState>(lora_.num_parameters());
  }
  std::string name() const override {
    return layout_ ? fmt::format("cpu, ZeRO-3 over {} ranks (the frozen base sharded, the adapter data parallel)",
                                 layout_->world())
                   : "cpu";
  }
  bool collective_forward() const override { return layout_ != nullptr; }
  void forward_without_rows() override { units_->forward_without_rows(); }
  cpu::CrossEntropyResult forward_backward(const Batch& b, float scale, uint64_t key) override {
    return model_.forward_backward(b, scale, grads_, key);
  }
  cpu::CrossEntropyResult loss(const Batch& b) override { return model_.loss(b); }
  size_t stage_bytes(const Batch& b) const override {
    return static_cast<size_t>(b.n() * cfg_.hidden_size) * sizeof(float);
  }
  cpu::CrossEntropyResult stage_forward(int64_t slot, const Batch& b, const void* in, void* out, bool train,
                                        float scale, uint64_t key) override {
    return model_.stage_forward(slot, b, static_cast<const float*>(in), static_cast<float*>(out), train, scale, key);
  }
  void stage_backward(int64_t slot, const Batch& b, const void* dout, void* din) override {
    model_.stage_backward(slot, b, static_cast<const float*>(dout), static_cast<float*>(din), grads_);
  }
  bool collective_state() const override { return pipe_ != nullptr; }
  StepResult step(double lr, double max_norm) override {
    const double norm = clip_grad_norm(grads_, max_norm, pipe_);
    if (adam8_)
      step8(lr);
    else
      opt_.step(lora_, grads_, lr);
    grads_.for_each([](const std::string&, Tensor& t) { t.zero(); });
    return {norm, false};
  }
  void read_adapter(LoraParams& out) const override { out = pipe_ ? whole_adapter(cfg_, lora_, pipe_) : lora_; }
  void all_reduce_gradients(dist::Communicator& comm) override {
    std::vector<float> flat = flatten(grads_);
    comm.all_reduce_sum(flat.data(), flat.size());
    unflatten(flat, grads_);
  }
  BackendState save_state() const override {
    BackendState s;
    // Under a pipeline the state is the whole adapter's, the same as without one.
    auto whole = [&](const LoraParams& part) { return pipe_ ? whole_adapter(cfg_, part, pipe_) : part; };
    whole(lora_).for_each([&](const std::string& key, const Tensor& t) { s.f32["adapter." + key] = t.data; });
    if (adam8_ && pipe_)
      fail("checkpoint: 8-bit AdamW moments under dist.pipeline are not checkpointed in this version (use "
           "train.optimizer adamw)");
    if (adam8_) {
      save_adam8bit(*adam8_, "adam8.", s);
      s.ints["adam8.t"] = t8_;
    } else {
      whole(opt_.first_moment()).for_each([&](const std::string& key, const Tensor& t) { s.f32["adam.m." + key] = t.data; });
      whole(opt_.second_moment()).for_each([&](const std::string& key, const Tensor& t) { s.f32["adam.v." + key] = t.data; });
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

  static bool sharded(const BackendOptions& o) { return o.plan.zero == 3 && o.comm && o.comm->world() > 1; }
  std::unique_ptr<Zero3Units> make_units(const LlamaConfig& cfg, const CheckpointReader& ckpt, const BackendOptions& o) {
    std::unique_ptr<WeightSource> src = checkpoint_source(cfg, ckpt);
    if (o.plan.method == Method::Qlora) src = std::make_unique<Nf4RoundTrip>(std::move(src), ckpt);
    return std::make_unique<Zero3Units>(cfg, table_, *layout_, *o.comm, *src, weights_, base_grads_);
  }

  const LlamaConfig& cfg_;
  dist::Communicator* pipe_;  // the pipeline's stages, or nullptr
  LlamaWeights weights_;      // the base (under ZeRO-3: the norms, and the unit being run)
  LoraParams lora_;   // the adapter being trained (under a pipeline, this stage's layers only)
  LoraParams grads_;  // same shapes
  AdamWSettings settings_;
  LoraAdamW opt_;
  std::unique_ptr<Adam8bitState> adam8_;  // adamw_8bit / paged_adamw_8bit
  int64_t t8_ = 0;
  // ZeRO-3 (FSDP-QLoRA): the base's layout and this rank's pieces of it; nothing else.
  ParamTable table_;
  std::unique_ptr<dist::Zero3Layout> layout_;
  LlamaWeights base_grads_;  // never written (the base is frozen); the gate's norm gradients
  std::unique_ptr<Zero3Units> units_;
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
      : cfg_(cfg),
        pipe_(opt.pipe),
        weights_(load_weights(cfg, ckpt, false, opt)),
        grads_(zeros_like(weights_)),
        table_(opt.pipe ? ParamTable::stage(cfg, opt.model.first_layer, stage_end(cfg, opt.model))
                        : ParamTable::full(cfg)),
        full_table_(ParamTable::full(cfg)),
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
    if (opt.pipe && cfg.tie_word_embeddings && opt.pipe->world() > 1)
      fail("dist.pipeline with train.method full and tied embeddings (tie_word_embeddings) is not available in this "
           "version: the embedding trains on the first stage and, as the lm_head, on the last");
    for (const ParamSpec& s : table_.specs())
      if (s.trainable) trained_.push_back(&s);
    if (opt.plan.optimizer == OptimizerKind::AdamW8bit)
      for (const ParamSpec* s : trained_) adam8_.emplace_back(s->numel());
    gather_trainable(table_, weights_, master_.data());
  }
  std::string name() const override {
    return adam8_.empty() ? "cpu, full fine-tuning" : "cpu, full fine-tuning, 8-bit AdamW moments per tensor";
  }
  cpu::CrossEntropyResult forward_backward(const Batch& b, float scale, uint64_t key) override {
    return model_.forward_backward(b, scale, none_, key, &grads_);
  }
  cpu::CrossEntropyResult loss(const Batch& b) override { return model_.loss(b); }
  size_t stage_bytes(const Batch& b) const override {
    return static_cast<size_t>(b.n() * cfg_.hidden_size) * sizeof(float);
  }
  cpu::CrossEntropyResult stage_forward(int64_t slot, const Batch& b, const void* in, void* out, bool train,
                                        float scale, uint64_t key) override {
    return model_.stage_forward(slot, b, static_cast<const float*>(in), static_cast<float*>(out), train, scale, key,
                                &grads_);
  }
  void stage_backward(int64_t slot, const Batch& b, const void* dout, void* din) override {
    model_.stage_backward(slot, b, static_cast<const float*>(dout), static_cast<float*>(din), none_, &grads_);
  }
  StepResult step(double lr, double max_norm) override {
    const int64_t P = table_.trainable_numel();
    if (!grads_in_flat_) gather_trainable(table_, grads_, flat_grad_.data());
    grads_in_flat_ = false;
    double norm = zero_ == 2 ? dist::sharded_grad_norm(flat_grad_.data() + shard_.begin, shard_, P, *comm_)
                             : flat_grad_norm(flat_grad_.data(), P);
    norm = dist::norm_over_ranks(norm, pipe_);  // the other stages hold the rest of the gradient
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
        const ParamSpec& s = *trained_[i];
        adam8_[i].step({static_cast<float>(lr), static_cast<float>(settings_.beta1),
                        static_cast<float>(settings_.beta2), static_cast<float>(settings_.eps),
                        s.decay ? static_cast<float>(settings_.weight_decay) : 0.0f, t8_, coef},
                       master_.data() + s.offset, flat_grad_.data() + s.offset);
      }
    }
    scatter_trainable(table_, master_.data(), weights_);  // refresh the compute copy
    for (const ParamSpec* s : trained_) param_tensor(grads_, *s).zero();
    return {norm, false};
  }
  bool collective_state() const override { return zero_ > 0 || pipe_ != nullptr; }
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
  void read_weights(LlamaWeights& out) const override {
    if (!pipe_) {
      out = weights_;
      return;
    }
    out = LlamaWeights{};
    out.layers.resize(static_cast<size_t>(cfg_.num_hidden_layers));
    for (const ParamSpec& sp : full_table_.specs()) param_tensor(out, sp) = Tensor(sp.shape);
    scatter_trainable(full_table_, whole(master_).data(), out);
  }
  BackendState save_state() const override {
    BackendState s;
    s.f32["master"] = whole(master_);
    if (!adam8_.empty() && pipe_)
      fail("checkpoint: 8-bit AdamW moments under dist.pipeline are not checkpointed in this version (use "
           "train.optimizer adamw)");
    if (!adam8_.empty()) {  // the GPU's names for the same per-tensor states
      for (size_t i = 0; i < adam8_.size(); ++i) save_adam8bit(adam8_[i], fmt::format("adam8.{}.", i), s);
      s.ints["adam8.t"] = t8_;
      return s;
    }
    s.f32["adam.m"] = whole(gathered(opt_.first_moment())), s.f32["adam.v"] = whole(gathered(opt_.second_moment()));
    s.ints["adam.t"] = opt_.steps();
    return s;
  }
  void load_state(const BackendState& s) override {
    const int64_t n = static_cast<int64_t>(master_.size());
    if (pipe_) {  // this stage's part of the whole model's state
      master_ = own(s.f32_of("master", full_table_.trainable_numel()));
      opt_.restore(own(s.f32_of("adam.m", -1)), own(s.f32_of("adam.v", -1)), s.int_of("adam.t"));
      scatter_trainable(table_, master_.data(), weights_);
      return;
    }
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
  // Pipeline: a stage's flat buffer (table_'s layout) within the whole model's (full_table_'s),
  // summed over the stages (each adds its part to zeros), and this stage's part of a whole one.
  // ParamTable::stage keeps full()'s specs in full()'s order, so spec i is the same tensor in both.
  std::vector<float> whole(const std::vector<float>& part) const {
    if (!pipe_) return part;
    std::vector<float> out(static_cast<size_t>(full_table_.trainable_numel()), 0.0f);
    for (size_t i = 0; i < table_.specs().size(); ++i) {
      const ParamSpec& sp = table_.specs()[i];
      if (sp.trainable) std::copy_n(part.begin() + sp.offset, sp.numel(), out.begin() + full_table_.specs()[i].offset);
    }
    sum_over_stages(out, pipe_);
    return out;
  }
  std::vector<float> own(const std::vector<float>& all_values) const {
    if (all_values.size() != static_cast<size_t>(full_table_.trainable_numel()))
      fail("checkpoint: the optimizer state holds {} values where this model has {} (a checkpoint of another model)",
           all_values.size(), full_table_.trainable_numel());
    std::vector<float> part(master_.size());
    for (size_t i = 0; i < table_.specs().size(); ++i) {
      const ParamSpec& sp = table_.specs()[i];
      if (sp.trainable) std::copy_n(all_values.begin() + full_table_.specs()[i].offset, sp.numel(), part.begin() + sp.offset);
    }
    return part;
  }

  const LlamaConfig& cfg_;
  dist::Communicator* pipe_;     // the pipeline's stages, or nullptr
  LlamaWeights weights_;         // compute copy the model reads (a stage's weights only, under a pipeline)
  LlamaWeights grads_;           // same shapes, accumulated over the micro-batches of a step
  ParamTable table_;             // under a pipeline, the stage's part trains
  ParamTable full_table_;        // every tensor trainable: the layout of checkpoints and outputs
  std::vector<const ParamSpec*> trained_;  // table_'s trainable specs
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

void sum_adapter_over_stages(LoraParams& adapter, dist::Communicator* pipe) {
  std::vector<float> flat = flatten(adapter);
  sum_over_stages(flat, pipe);
  unflatten(flat, adapter);
}

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

bool runs_on_gpu(const RunPlan& plan) {
  return plan.device == Device::Cuda || (plan.device == Device::Auto && gpu_available());
}

std::unique_ptr<TrainBackend> make_backend(const LlamaConfig& cfg, const CheckpointReader& ckpt, const LoraParams& lora,
                                           const BackendOptions& opt) {
  const bool gpu = runs_on_gpu(opt.plan);
  if (opt.plan.method == Method::Full) {
    if (gpu) return make_gpu_full_backend(cfg, ckpt, opt);
    if (opt.plan.zero == 3 && opt.comm && opt.comm->world() > 1) return make_cpu_zero3_backend(cfg, ckpt, opt);
    return std::make_unique<CpuFullBackend>(cfg, ckpt, opt);
  }
  if (gpu) return make_gpu_backend(cfg, ckpt, lora, opt);
  return std::make_unique<CpuBackend>(cfg, ckpt, lora, opt);
}

}  // namespace ftune

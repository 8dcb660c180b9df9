// Full fine-tuning on the CPU under ZeRO-3 (dist.zero 3, several ranks): each rank keeps its pieces
// of every unit's weights, gradients and AdamW moments (train/zero3_units.h), and the RMSNorm
// weights whole. The step is AdamW over the local range, which is the unsharded step element for
// element; what differs from the other stages is the summation order of the gradients: each
// micro-batch's gradient is reduce-scattered on its own and added to the accumulator, and the
// global norm adds the ranks' sums of squares.
#include <fmt/format.h>

#include <cmath>
#include <memory>

#include "core/error.h"
#include "dist/zero3.h"
#include "optim/flat_adamw.h"
#include "params/param_table.h"
#include "train/backend.h"
#include "train/zero3_units.h"

namespace ftune {

namespace {

// Transformers' decay groups (every matrix, no norm) as ranges of the local range.
std::vector<std::pair<int64_t, int64_t>> local_decay_ranges(const ParamTable& t, const dist::Zero3Layout& z) {
  std::vector<std::pair<int64_t, int64_t>> out;
  for (const dist::Zero3Run& r : z.runs()) {
    if (!t.specs()[static_cast<size_t>(r.spec)].decay) continue;
    if (!out.empty() && out.back().second == r.local)
      out.back().second += r.n;
    else
      out.emplace_back(r.local, r.local + r.n);
  }
  return out;
}

class CpuZero3Backend final : public TrainBackend {
 public:
  CpuZero3Backend(const LlamaConfig& cfg, const CheckpointReader& ckpt, const BackendOptions& opt)
      : table_(ParamTable::full(cfg)),
        layout_(table_, cfg, opt.comm->rank(), opt.comm->world()),
        comm_(*opt.comm),
        units_(cfg, table_, layout_, comm_, *checkpoint_source(cfg, ckpt), weights_, grads_),
        opt_(layout_.local_numel(), opt.plan.adamw, local_decay_ranges(table_, layout_)),
        model_(cfg, weights_, nullptr, opt.model, &units_) {
    FT_ASSERT(opt.plan.optimizer == OptimizerKind::AdamW);  // the run plan refuses the others on the CPU
  }
  std::string name() const override {
    return fmt::format("cpu, full fine-tuning, ZeRO-3 over {} ranks (weights, gradients and AdamW moments sharded)",
                       layout_.world());
  }
  cpu::CrossEntropyResult forward_backward(const Batch& b, float scale, uint64_t key) override {
    return model_.forward_backward(b, scale, none_, key, &grads_);
  }
  cpu::CrossEntropyResult loss(const Batch& b) override { return model_.loss(b); }
  bool collective_forward() const override { return true; }
  void forward_without_rows() override { units_.forward_without_rows(); }
  void all_reduce_gradients(dist::Communicator&) override {
    units_.reduce_norm_grads();  // the pieces were reduce-scattered as each unit's backward ended
    norms_reduced_ = true;
  }
  StepResult step(double lr, double max_norm) override {
    FT_ASSERT(norms_reduced_);  // the engine sums the gradients over the ranks before every step
    norms_reduced_ = false;
    std::vector<float>& g = units_.grad();
    const int64_t S = layout_.sharded_numel();
    double ss = flat_sum_of_squares(g.data(), S);  // this rank's pieces (their padding is zero)
    comm_.all_reduce_sum(&ss, 1);
    ss += flat_sum_of_squares(g.data() + S, layout_.norm_numel());  // whole on every rank: counted once
    const double norm = std::sqrt(ss);
    opt_.step(units_.master().data(), g.data(), lr, static_cast<float>(clip_coefficient(norm, max_norm)));
    units_.write_norms();
    std::fill(g.begin(), g.end(), 0.0f);
    return {norm, false};
  }
  void read_weights(LlamaWeights& out) const override { units_.whole_weights(out); }
  std::function<Tensor(const ParamSpec&)> weight_stream() override {
    auto gather = std::make_shared<dist::Zero3TensorGather>(layout_, units_.master().data(), comm_);
    return [gather](const ParamSpec& s) {
      Tensor t(s.shape);
      t.data = gather->values(s);
      return t;
    };
  }
  // In the parameter table's layout, as every other stage saves it, so that the checkpoint resumes
  // under any stage and world size.
  bool collective_state() const override { return true; }
  BackendState save_state() const override {
    BackendState s;
    s.f32["master"] = units_.to_table(units_.master());
    s.f32["adam.m"] = units_.to_table(opt_.first_moment());
    s.f32["adam.v"] = units_.to_table(opt_.second_moment());
    s.ints["adam.t"] = opt_.steps();
    return s;
  }
  void load_state(const BackendState& s) override {
    const int64_t n = table_.trainable_numel();
    units_.master() = units_.from_table(s.f32_of("master", n));
    opt_.restore(units_.from_table(s.f32_of("adam.m", n)), units_.from_table(s.f32_of("adam.v", n)),
                 s.int_of("adam.t"));
    units_.write_norms();
  }

 private:
  ParamTable table_;
  dist::Zero3Layout layout_;
  dist::Communicator& comm_;
  LlamaWeights weights_;  // the model's compute copy: the norms, and the units the gate has gathered
  LlamaWeights grads_;    // the norms' gradients, and those of the units between begin_grads and end_grads
  Zero3Units units_;
  FlatAdamW opt_;         // over the local range
  bool norms_reduced_ = false;
  LoraParams none_;       // no adapter
  LlamaCpu model_;
};

}  // namespace

std::unique_ptr<TrainBackend> make_cpu_zero3_backend(const LlamaConfig& cfg, const CheckpointReader& ckpt,
                                                     const BackendOptions& opt) {
  FT_ASSERT(opt.comm && opt.comm->world() > 1);
  return std::make_unique<CpuZero3Backend>(cfg, ckpt, opt);
}

}  // namespace ftune

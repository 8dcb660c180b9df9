// ZeRO-3's pieces on the CPU: loading them, the unit gate's gathers and reduce-scatters, and the
// conversions between the local range and the parameter table's layout (checkpoints, the result).
#include "train/zero3_units.h"

#include <algorithm>

#include "core/error.h"

namespace ftune {

namespace {

Tensor read_spec(const WeightSource& src, const ParamSpec& s) {
  switch (s.role) {
    case ParamRole::Embed: return src.embed();
    case ParamRole::InputNorm: return src.norm(s.layer, false);
    case ParamRole::PostNorm: return src.norm(s.layer, true);
    case ParamRole::Proj: return src.proj(s.layer, static_cast<Proj>(s.proj));
    case ParamRole::FinalNorm: return src.final_norm();
    case ParamRole::LmHead: return src.lm_head();
  }
  FT_ASSERT(false);
}

bool is_norm(const ParamSpec& s) {
  return s.role == ParamRole::InputNorm || s.role == ParamRole::PostNorm || s.role == ParamRole::FinalNorm;
}

}  // namespace

Zero3Units::Zero3Units(const LlamaConfig& cfg, const ParamTable& table, const dist::Zero3Layout& layout,
                       dist::Communicator& comm, const WeightSource& src, LlamaWeights& weights, LlamaWeights& grads)
    : cfg_(cfg),
      table_(table),
      layout_(layout),
      comm_(comm),
      weights_(weights),
      grads_(grads),
      members_(static_cast<size_t>(layout.units())),
      master_(static_cast<size_t>(layout.local_numel()), 0.0f),
      grad_(master_.size(), 0.0f) {
  FT_ASSERT(comm.rank() == layout.rank() && comm.world() == layout.world());
  const auto& specs = table.specs();
  for (int64_t u = 0; u < layout.units(); ++u) {
    const dist::Zero3Unit& z = layout.unit(u);
    for (int i = 0; i < static_cast<int>(specs.size()); ++i)
      if (!is_norm(specs[i]) && specs[i].offset >= z.begin && specs[i].offset < z.begin + z.numel)
        members_[static_cast<size_t>(u)].push_back(i);
  }
  weights_ = LlamaWeights{}, grads_ = LlamaWeights{};
  weights_.layers.resize(static_cast<size_t>(cfg.num_hidden_layers));
  grads_.layers.resize(weights_.layers.size());
  // One whole tensor in memory at a time: the part of it in this rank's runs is kept.
  for (int i = 0; i < static_cast<int>(specs.size()); ++i) {
    Tensor t = read_spec(src, specs[i]);
    FT_ASSERT(t.numel() == specs[i].numel());
    for (const dist::Zero3Run& r : layout.runs())
      if (r.spec == i)
        std::copy_n(t.data.begin() + (r.table - specs[i].offset), r.n, master_.begin() + r.local);
    if (is_norm(specs[i])) {
      param_tensor(grads_, specs[i]) = Tensor(specs[i].shape);
      param_tensor(weights_, specs[i]) = std::move(t);
    }
  }
}

std::vector<float> Zero3Units::gathered(const std::vector<float>& local, int64_t unit) const {
  std::vector<float> whole;
  dist::zero3_gather_unit(layout_, local.data(), unit, comm_, whole);
  return whole;
}

void Zero3Units::gather(int64_t unit) {
  const std::vector<float> whole = gathered(master_, unit);
  const int64_t begin = layout_.unit(unit).begin;
  for (int i : members(unit)) {
    const ParamSpec& s = table_.specs()[i];
    Tensor& t = param_tensor(weights_, s);
    t = Tensor(s.shape);
    std::copy_n(whole.begin() + (s.offset - begin), s.numel(), t.data.begin());
  }
}

void Zero3Units::release(int64_t unit) {
  for (int i : members(unit)) param_tensor(weights_, table_.specs()[i]) = Tensor();
}

void Zero3Units::begin_grads(int64_t unit) {
  for (int i : members(unit)) param_tensor(grads_, table_.specs()[i]) = Tensor(table_.specs()[i].shape);
}

void Zero3Units::end_grads(int64_t unit) {
  const dist::Zero3Unit& z = layout_.unit(unit);
  std::vector<float> whole(static_cast<size_t>(z.piece * layout_.world()), 0.0f), mine(static_cast<size_t>(z.piece));
  for (int i : members(unit)) {
    const ParamSpec& s = table_.specs()[i];
    Tensor& g = param_tensor(grads_, s);
    std::copy(g.data.begin(), g.data.end(), whole.begin() + (s.offset - z.begin));
    g = Tensor();
  }
  comm_.reduce_scatter_sum(whole.data(), mine.data(), pieces(unit));
  float* acc = grad_.data() + z.local;
  for (int64_t j = 0; j < z.piece; ++j) acc[j] += mine[static_cast<size_t>(j)];
}

void Zero3Units::forward_without_rows() {
  for (int64_t u = 0; u < layout_.units(); ++u) gather(u), release(u);
}

void Zero3Units::reduce_norm_grads() {
  float* tail = grad_.data() + layout_.sharded_numel();
  int64_t at = 0;
  for (int i : layout_.norm_specs()) {
    Tensor& g = param_tensor(grads_, table_.specs()[i]);
    std::copy(g.data.begin(), g.data.end(), tail + at);
    at += g.numel();
    g.zero();
  }
  comm_.all_reduce_sum(tail, static_cast<size_t>(layout_.norm_numel()));
}

void Zero3Units::write_norms() {
  const float* tail = master_.data() + layout_.sharded_numel();
  int64_t at = 0;
  for (int i : layout_.norm_specs()) {
    Tensor& w = param_tensor(weights_, table_.specs()[i]);
    std::copy_n(tail + at, w.numel(), w.data.begin());
    at += w.numel();
  }
}

std::vector<float> Zero3Units::to_table(const std::vector<float>& local) const {
  FT_ASSERT(static_cast<int64_t>(local.size()) == layout_.local_numel());
  std::vector<float> table(static_cast<size_t>(table_.trainable_numel()));
  dist::zero3_to_table(layout_, local.data(), comm_, table.data());
  return table;
}

std::vector<float> Zero3Units::from_table(const std::vector<float>& table) const {
  FT_ASSERT(static_cast<int64_t>(table.size()) == table_.trainable_numel());
  std::vector<float> local(static_cast<size_t>(layout_.local_numel()));
  dist::zero3_from_table(layout_, table.data(), local.data());
  return local;
}

void Zero3Units::whole_weights(LlamaWeights& out) const {
  const std::vector<float> table = to_table(master_);
  out = LlamaWeights{};
  out.layers.resize(static_cast<size_t>(cfg_.num_hidden_layers));
  for (const ParamSpec& s : table_.specs()) param_tensor(out, s) = Tensor(s.shape);
  scatter_trainable(table_, table.data(), out);
}

}  // namespace ftune

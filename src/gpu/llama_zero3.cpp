// LlamaGpu under ZeRO (dist/zero3.h's layout): this rank's pieces of the compute copy; under stage 3
// the unit gathered just before its weights are read (stages 1 and 2 keep the weights whole and
// gather each step's new pieces into them), each unit's gradient reduce-scattered after its backward into
// the rank's accumulator (full_g_, the local range), the optimizer over the local range only.
// The norms stay whole on every rank; their gradients are all-reduced before the step
// (gradient_buffer). A unit is gathered again in the backward (and for the tied lm_head), never
// kept, so the device holds at most one unit's whole weights and one unit's whole gradient.
#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "gpu/llama_gpu.h"
#include "ops/cuda/elementwise.h"

namespace ftune {

namespace {
constexpr cuda::Storage F32 = cuda::Storage::F32;
}  // namespace

void LlamaGpu::allocate_zero3() {  // in the Weights category
  z_c_ = alloc_dt(z3_->sharded_numel());
  z_buf_ = alloc_dt(z_max_padded_);
}

std::vector<ComputeSlot> LlamaGpu::zero3_slots() const {
  std::vector<ComputeSlot> out;
  const auto& specs = table_.specs();
  auto piece_ptr = [&](int64_t local) -> void* {
    return z_c_.data() ? z_c_.as<char>() + local * static_cast<int64_t>(esz_) : nullptr;
  };
  int64_t at = 0;  // local elements covered so far
  auto pad_to = [&](int64_t end) {  // padding: zero values and gradients, no decay
    if (end > at) out.push_back({at, end - at, piece_ptr(at), dt_, false});
    at = std::max(at, end);
  };
  for (const dist::Zero3Run& r : z3_->runs()) {
    const ParamSpec& s = specs[static_cast<size_t>(r.spec)];
    if (r.local < z3_->sharded_numel()) {
      pad_to(r.local);
      out.push_back({r.local, r.n, piece_ptr(r.local), dt_, s.decay});
      at = r.local + r.n;
      continue;
    }
    pad_to(z3_->sharded_numel());
    const void* norm = s.role == ParamRole::FinalNorm   ? final_norm_.data()
                       : s.role == ParamRole::InputNorm ? layers_[s.layer].input_norm.data()
                                                        : layers_[s.layer].post_norm.data();
    out.push_back({r.local, r.n, const_cast<void*>(norm), F32, false});
    at = r.local + r.n;
  }
  pad_to(z3_->sharded_numel());  // (a rank whose last pieces are all padding)
  std::sort(out.begin(), out.end(), [](const ComputeSlot& a, const ComputeSlot& b) { return a.offset < b.offset; });
  return out;
}

// The masters of this rank's runs from the checkpoint (one tensor read at a time), or random
// weights drawn exactly as the unsharded model draws them (the same seeds, each piece at its index).
void LlamaGpu::fill_zero3(const WeightSource* w, uint64_t seed) {
  full_opt_ = make_full_optimizer(full_optimizer_kind(), *ctx_, z3_->local_numel(), zero3_slots());
  ctx_->zero(z_c_.data(), z_c_.bytes());
  const auto& specs = table_.specs();
  if (w) {
    int last = -1;
    Tensor t;
    for (const dist::Zero3Run& r : z3_->runs()) {
      const ParamSpec& s = specs[static_cast<size_t>(r.spec)];
      if (r.spec != last) {
        switch (s.role) {
          case ParamRole::Embed: t = w->embed(); break;
          case ParamRole::FinalNorm: t = w->final_norm(); break;
          case ParamRole::LmHead: t = w->lm_head(); break;
          case ParamRole::InputNorm: t = w->norm(s.layer, false); break;
          case ParamRole::PostNorm: t = w->norm(s.layer, true); break;
          case ParamRole::Proj: t = w->proj(s.layer, static_cast<Proj>(s.proj)); break;
        }
        FT_ASSERT(t.numel() == s.numel());
        last = r.spec;
      }
      full_opt_->set_master(r.local, t.data.data() + (r.table - s.offset), r.n);
    }
    full_opt_->refresh_compute();
    return;
  }
  // fill_weights' draws: embed, final norm, lm_head, then per layer the two norms and the projections.
  std::vector<uint64_t> salt(specs.size(), 0);
  uint64_t k = seed * 0x9E3779B97F4A7C15ull;
  auto take = [&](ParamRole role, int64_t layer, int proj) {
    for (size_t i = 0; i < specs.size(); ++i)
      if (specs[i].role == role && specs[i].layer == layer && specs[i].proj == proj) salt[i] = ++k;
  };
  take(ParamRole::Embed, -1, -1), take(ParamRole::FinalNorm, -1, -1);
  if (!cfg_.tie_word_embeddings) take(ParamRole::LmHead, -1, -1);
  for (int64_t l = 0; l < cfg_.num_hidden_layers; ++l) {
    take(ParamRole::InputNorm, l, -1), take(ParamRole::PostNorm, l, -1);
    for (int p = 0; p < kNumProj; ++p) take(ParamRole::Proj, l, p);
  }
  for (const dist::Zero3Run& r : z3_->runs()) {
    const ParamSpec& s = specs[static_cast<size_t>(r.spec)];
    if (r.local < z3_->sharded_numel())
      cuda::fill_normal(*ctx_, dt_, z_c_.as<char>() + r.local * static_cast<int64_t>(esz_), r.n, salt[r.spec], 0.0f,
                        0.02f, r.table - s.offset);
  }
  for (Layer& Ly : layers_)
    for (auto* b : {&Ly.input_norm, &Ly.post_norm}) cuda::fill_normal(*ctx_, F32, b->data(), cfg_.hidden_size, 0, 1.0f, 0.0f);
  cuda::fill_normal(*ctx_, F32, final_norm_.data(), cfg_.hidden_size, 0, 1.0f, 0.0f);
  full_opt_->masters_from_compute();
}

void LlamaGpu::z_gather(int64_t u) {
  const dist::Zero3Unit& un = z3_->unit(u);
  const int64_t base = un.alias ? 0 : u;
  if (z_held_ == base) return;
  if (!zcomm_) fail("internal error: ZeRO-3 model used before set_zero3_comm");
  const size_t bytes = static_cast<size_t>(un.piece) * esz_;
  zcomm_->all_gather(z_c_.as<char>() + un.local * static_cast<int64_t>(esz_), z_buf_.data(), bytes);
  z_held_ = base;
}

void LlamaGpu::z_grads_begin(int64_t u) {
  z_grad_unit_ = u;
  ctx_->zero(z_g_.data(), static_cast<size_t>(z3_->unit(u).piece * z3_->world()) * 4);
}

void LlamaGpu::z_grads_end(int64_t u) {
  const dist::Zero3Unit& un = z3_->unit(u);
  zcomm_->reduce_scatter_add(z_g_.as<float>(), full_g_.as<float>() + un.local, static_cast<size_t>(un.piece));
  z_grad_unit_ = -1;
}

float* LlamaGpu::grad_at(int64_t off) const {
  if (!z3_) return full_g_.as<float>() + off;
  const auto it = std::lower_bound(z_norm_local_.begin(), z_norm_local_.end(), std::make_pair(off, int64_t{-1}));
  if (it != z_norm_local_.end() && it->first == off) return full_g_.as<float>() + it->second;
  FT_ASSERT(z_grad_unit_ >= 0);
  const dist::Zero3Unit& un = z3_->unit(z_grad_unit_);
  FT_ASSERT(off >= un.begin && off < un.begin + un.numel);
  return z_g_.as<float>() + (off - un.begin);
}

const void* LlamaGpu::embed_w() {
  if (base_sharded()) return sb_gather(0);
  if (!z3_ || opt_.zero_whole_weights) return embed_.data();
  z_gather(0);
  return z_buf_.data();
}

const void* LlamaGpu::head_w() {
  if (base_sharded()) return sb_gather(cfg_.num_hidden_layers + 1);
  if (!z3_ || opt_.zero_whole_weights) return cfg_.tie_word_embeddings ? embed_.data() : head_.data();
  z_gather(z3_->head_unit());
  return z_buf_.data();
}

const void* LlamaGpu::proj_w(int64_t l, int p) {
  if (!z3_ || opt_.zero_whole_weights) return layers_[l].proj[p].data();
  const int64_t u = dist::Zero3Layout::layer_unit(l);
  z_gather(u);
  return z_buf_.as<char>() + (layer_off_[l][p] - z3_->unit(u).begin) * static_cast<int64_t>(esz_);
}

// sum over ranks of the squares of their pieces (padding is zero), plus the norms' (whole on every
// rank, counted once).
double LlamaGpu::zero3_grad_norm() const {
  ctx_->zero(norm_acc_.data(), 8);
  cuda::sum_squares(*ctx_, full_g_.as<float>(), z3_->sharded_numel(), norm_acc_.as<double>());
  ctx_->synchronize();
  const double pieces = zcomm_->sum(norm_acc_.to_host<double>(1)[0]);
  ctx_->zero(norm_acc_.data(), 8);
  cuda::sum_squares(*ctx_, full_g_.as<float>() + z3_->sharded_numel(), z3_->norm_numel(), norm_acc_.as<double>());
  ctx_->synchronize();
  return std::sqrt(pieces + norm_acc_.to_host<double>(1)[0]);
}

// The gathers of loss(): the embedding, each layer, the lm_head (each skipped when the unit is
// already held, which is the same on every rank: every rank has made the same calls).
void LlamaGpu::zero3_forward_without_rows() {
  if (base_sharded()) return sharded_forward_without_rows();
  FT_ASSERT(z3_);
  for (int64_t u = 0; u < z3_->units(); ++u) z_gather(u);
}

// dist.zero 1/2: each unit's pieces gathered, then copied into the tensors' own buffers.
void LlamaGpu::publish_pieces() {
  const auto& specs = table_.specs();
  for (int64_t u = 0; u < z3_->units(); ++u) {
    const dist::Zero3Unit& un = z3_->unit(u);
    if (un.alias) continue;
    z_gather(u);
    for (const ParamSpec& s : specs) {
      if (s.offset < un.begin || s.offset >= un.begin + un.numel) continue;
      void* dst = s.role == ParamRole::Embed    ? embed_.data()
                  : s.role == ParamRole::LmHead ? head_.data()
                                                : layers_[s.layer].proj[s.proj].data();
      ctx_->copy(dst, z_buf_.as<char>() + (s.offset - un.begin) * static_cast<int64_t>(esz_),
                 static_cast<size_t>(s.numel()) * esz_);
    }
  }
  z_held_ = -1;
}

std::vector<float> LlamaGpu::local_masters() const {
  FT_ASSERT(z3_);
  std::vector<float> v(static_cast<size_t>(z3_->local_numel()));
  full_opt_->master_to_host(0, v.data(), z3_->local_numel());
  return v;
}

}  // namespace ftune

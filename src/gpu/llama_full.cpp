// LlamaGpu's full fine-tuning: fp32 gradients on the device in the parameter table's flat layout,
// the weight gradients of the backward (projections in LlamaGpu::linear_bwd, norms, lm_head and the
// embedding here), and the compute copy's slots handed to the optimizer that owns the masters.
#include <algorithm>

#include "core/error.h"
#include "gpu/llama_gpu.h"
#include "ops/cuda/elementwise.h"
#include "ops/cuda/embedding.h"
#include "ops/cuda/rmsnorm.h"

namespace ftune {

namespace {
constexpr cuda::Storage F32 = cuda::Storage::F32;
float* f(const cuda::DeviceBuffer& b) { return b.as<float>(); }
}  // namespace

FullOptimizerKind LlamaGpu::full_optimizer_kind() const {
  if (opt_.optimizer_offload) return FullOptimizerKind::OffloadAdamW;
  switch (opt_.optimizer) {
    case GpuOptimizer::AdamW: return FullOptimizerKind::DeviceAdamW;
    case GpuOptimizer::AdamW8bit: return FullOptimizerKind::DeviceAdamW8bit;
    case GpuOptimizer::PagedAdamW8bit: break;
  }
  fail("internal error: full fine-tuning has no paged optimizer (optimizer_offload instead)");
}

void LlamaGpu::allocate_full() {
  const int64_t P = z3_ ? z3_->local_numel() : table_.trainable_numel(), N = max_n_, H = cfg_.hidden_size;
  const MemCategory keep = cat_;
  cat_ = MemCategory::Gradients;
  full_g_ = alloc(P * 4);
  if (z3_) z_g_ = alloc(z_max_padded_ * 4);
  // The optimizer allocates its own state in fill(); counted here.
  cat_ = MemCategory::Optimizer;
  const std::vector<ComputeSlot> slots = compute_slots();
  count(full_optimizer_device_bytes(full_optimizer_kind(), P, slots));
  const auto [pinned, host] = full_optimizer_host_bytes(full_optimizer_kind(), P, slots);
  plan_.host_pinned += pinned, plan_.host += host;
  cat_ = keep;
  if (z3_) {  // the comm's piece before it is added; host staging when the ranks share a GPU
    count(zero3_device_scratch_bytes(static_cast<size_t>(z_max_piece_)));
    plan_.host_pinned += zero3_host_staging_bytes(zero3_max_unit_bytes(), zero3_max_piece(), z3_->world());
  }
  emb_uniq_ = alloc(N * 4), emb_off_ = alloc((N + 1) * 4), emb_tok_ = alloc(N * 4);
  norm_ws_ = alloc(std::max<size_t>(cuda::rmsnorm_weight_grad_workspace(N, H), 4));
}

std::vector<ComputeSlot> LlamaGpu::compute_slots() const {
  if (z3_) return zero3_slots();
  std::vector<ComputeSlot> out;
  for (const ParamSpec& s : table_.specs()) {
    ComputeSlot c{s.offset, s.numel(), nullptr, dt_, s.decay};
    switch (s.role) {
      case ParamRole::Embed: c.data = embed_.data(); break;
      case ParamRole::LmHead: c.data = head_.data(); break;
      case ParamRole::Proj: c.data = layers_[s.layer].proj[s.proj].data(); break;
      case ParamRole::FinalNorm: c.data = final_norm_.data(), c.storage = F32; break;
      case ParamRole::InputNorm: c.data = layers_[s.layer].input_norm.data(), c.storage = F32; break;
      case ParamRole::PostNorm: c.data = layers_[s.layer].post_norm.data(), c.storage = F32; break;
    }
    out.push_back(c);
  }
  return out;
}

void LlamaGpu::fill_masters(const WeightSource& w) {
  for (const ParamSpec& s : table_.specs()) {
    Tensor t;
    switch (s.role) {
      case ParamRole::Embed: t = w.embed(); break;
      case ParamRole::FinalNorm: t = w.final_norm(); break;
      case ParamRole::LmHead: t = w.lm_head(); break;
      case ParamRole::InputNorm: t = w.norm(s.layer, false); break;
      case ParamRole::PostNorm: t = w.norm(s.layer, true); break;
      case ParamRole::Proj: t = w.proj(s.layer, static_cast<Proj>(s.proj)); break;
    }
    FT_ASSERT(t.numel() == s.numel());
    full_opt_->set_master(s.offset, t.data.data(), s.numel());
  }
}

// The micro-batch's token positions grouped by id (built on the host, where the ids are), so the
// embedding backward sums each id's rows in a fixed order, without float atomics.
void LlamaGpu::prepare_full(const Batch& b) {
  const cuda::EmbeddingGradIndex ix = cuda::embedding_grad_index(b.ids.data(), n_);
  emb_n_uniq_ = static_cast<int64_t>(ix.unique_ids.size());
  emb_uniq_.upload(ix.unique_ids.data(), ix.unique_ids.size() * 4);
  emb_off_.upload(ix.offsets.data(), ix.offsets.size() * 4);
  emb_tok_.upload(ix.tokens.data(), ix.tokens.size() * 4);
}

void LlamaGpu::embedding_grad() {
  cuda::embedding_backward(*ctx_, emb_uniq_.as<int32_t>(), emb_off_.as<int32_t>(), emb_tok_.as<int32_t>(), emb_n_uniq_,
                           f(dy_), cfg_.hidden_size, grad_at(embed_off_));
}

void LlamaGpu::norm_grad(const float* dn, const void* x, const float* rstd, int64_t off) {
  cuda::rmsnorm_weight_grad(*ctx_, dt_, dn, x, rstd, n_, cfg_.hidden_size, grad_at(off), f(norm_ws_));
}

void LlamaGpu::get_weights(LlamaWeights& w) const {
  FT_ASSERT(opt_.full && !z3_);  // ZeRO-3: local_masters() on every rank, gathered by the backend
  ctx_->synchronize();
  w.layers.resize(cfg_.num_hidden_layers);
  for (const ParamSpec& s : table_.specs()) {
    Tensor& t = param_tensor(w, s);
    t = Tensor(s.shape);
    full_opt_->master_to_host(s.offset, t.data.data(), s.numel());
  }
}

std::vector<float> LlamaGpu::full_grads() const {
  FT_ASSERT(opt_.full && !z3_);
  ctx_->synchronize();
  return full_g_.to_host<float>(static_cast<size_t>(table_.trainable_numel()));
}

}  // namespace ftune

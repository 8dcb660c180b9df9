// LlamaGpu's full fine-tuning: fp32 masters, gradients and AdamW moments on the device in the
// parameter table's flat layout, the weight gradients of the backward (projections in
// LlamaGpu::linear_bwd, norms, lm_head and the embedding here), the optimizer step over the
// table's decay ranges and the refresh of the compute copy.
#include <algorithm>

#include "core/error.h"
#include "model/llama_gpu.h"
#include "ops/cuda/adamw.h"
#include "ops/cuda/elementwise.h"
#include "ops/cuda/embedding.h"
#include "ops/cuda/rmsnorm.h"

namespace ftune {

namespace {
constexpr cuda::Storage F32 = cuda::Storage::F32;
float* f(const cuda::DeviceBuffer& b) { return b.as<float>(); }
}  // namespace

void LlamaGpu::allocate_full() {
  const int64_t P = table_.trainable_numel(), N = max_n_, H = cfg_.hidden_size;
  full_p_ = alloc(P * 4), full_g_ = alloc(P * 4), full_m_ = alloc(P * 4), full_v_ = alloc(P * 4);
  emb_uniq_ = alloc(N * 4), emb_off_ = alloc((N + 1) * 4), emb_tok_ = alloc(N * 4);
  norm_ws_ = alloc(std::max<size_t>(cuda::rmsnorm_weight_grad_workspace(N, H), 4));
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
    full_p_.upload_at(static_cast<size_t>(s.offset) * 4, t.data.data(), t.data.size() * 4);
  }
}

// The masters into the compute copy: matrices rounded to the storage type, norms copied (fp32).
void LlamaGpu::refresh_compute() {
  for (const ParamSpec& s : table_.specs()) {
    const float* src = f(full_p_) + s.offset;
    switch (s.role) {
      case ParamRole::Embed: cuda::convert(ctx_, F32, src, dt_, embed_.data(), s.numel()); break;
      case ParamRole::LmHead: cuda::convert(ctx_, F32, src, dt_, head_.data(), s.numel()); break;
      case ParamRole::Proj:
        cuda::convert(ctx_, F32, src, dt_, layers_[s.layer].proj[s.proj].data(), s.numel());
        break;
      case ParamRole::FinalNorm: ctx_.copy(final_norm_.data(), src, s.numel() * 4); break;
      case ParamRole::InputNorm: ctx_.copy(layers_[s.layer].input_norm.data(), src, s.numel() * 4); break;
      case ParamRole::PostNorm: ctx_.copy(layers_[s.layer].post_norm.data(), src, s.numel() * 4); break;
    }
  }
}

// Random benchmark weights: the masters take the compute copy's values.
void LlamaGpu::masters_from_compute() {
  for (const ParamSpec& s : table_.specs()) {
    float* dst = f(full_p_) + s.offset;
    switch (s.role) {
      case ParamRole::Embed: cuda::convert(ctx_, dt_, embed_.data(), F32, dst, s.numel()); break;
      case ParamRole::LmHead: cuda::convert(ctx_, dt_, head_.data(), F32, dst, s.numel()); break;
      case ParamRole::Proj:
        cuda::convert(ctx_, dt_, layers_[s.layer].proj[s.proj].data(), F32, dst, s.numel());
        break;
      case ParamRole::FinalNorm: ctx_.copy(dst, final_norm_.data(), s.numel() * 4); break;
      case ParamRole::InputNorm: ctx_.copy(dst, layers_[s.layer].input_norm.data(), s.numel() * 4); break;
      case ParamRole::PostNorm: ctx_.copy(dst, layers_[s.layer].post_norm.data(), s.numel() * 4); break;
    }
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
  cuda::embedding_backward(ctx_, emb_uniq_.as<int32_t>(), emb_off_.as<int32_t>(), emb_tok_.as<int32_t>(), emb_n_uniq_,
                           f(dy_), cfg_.hidden_size, grad_at(embed_off_));
}

void LlamaGpu::norm_grad(const float* dn, const void* x, const float* rstd, int64_t off) {
  cuda::rmsnorm_weight_grad(ctx_, dt_, dn, x, rstd, n_, cfg_.hidden_size, grad_at(off), f(norm_ws_));
}

void LlamaGpu::full_adamw_step(const cuda::AdamWStep& s, float grad_coef) {
  FT_ASSERT(opt_.full);
  // torch's AdamW per parameter group: the decayed ranges with the weight decay, the gaps without.
  cuda::AdamWStep decayed = s, plain = s;
  decayed.grad_coef = plain.grad_coef = grad_coef;
  plain.weight_decay = 0.0f;
  auto update = [&](const cuda::AdamWStep& st, int64_t b, int64_t e) {
    if (e > b) cuda::adamw_update(ctx_, st, f(full_p_) + b, f(full_g_) + b, f(full_m_) + b, f(full_v_) + b, e - b);
  };
  int64_t at = 0;
  for (const auto& [b, e] : table_.decay_ranges()) {
    update(plain, at, b);
    update(decayed, b, e);
    at = e;
  }
  update(plain, at, table_.trainable_numel());
  refresh_compute();
}

void LlamaGpu::get_weights(LlamaWeights& w) const {
  FT_ASSERT(opt_.full);
  ctx_.synchronize();
  w.layers.resize(cfg_.num_hidden_layers);
  for (const ParamSpec& s : table_.specs()) {
    Tensor& t = param_tensor(w, s);
    t = Tensor(s.shape);
    full_p_.download_at(static_cast<size_t>(s.offset) * 4, t.data.data(), t.data.size() * 4);
  }
}

std::vector<float> LlamaGpu::full_grads() const {
  FT_ASSERT(opt_.full);
  ctx_.synchronize();
  return full_g_.to_host<float>(static_cast<size_t>(table_.trainable_numel()));
}

}  // namespace ftune

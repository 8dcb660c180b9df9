// LlamaGpu: the CPU model's forward and backward (model/block.cpp, model/llama.cpp) on the GPU.
#include "model/llama_gpu.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/dropout_hash.h"
#include "core/error.h"
#include "model/rope.h"
#include "ops/cuda/attention.h"
#include "ops/cuda/cross_entropy.h"
#include "ops/cuda/elementwise.h"
#include "ops/cuda/embedding.h"
#include "ops/cuda/gemm.h"
#include "ops/cuda/rmsnorm.h"
#include "ops/cuda/rope.h"
#include "ops/cuda/swiglu.h"

namespace ftune {

namespace {
constexpr cuda::Storage F32 = cuda::Storage::F32;
constexpr int64_t kHeadChunk = 256;  // rows of logits alive at once

cuda::DeviceBuffer upload(const Tensor& t) { return cuda::DeviceBuffer::from(t.data); }
cuda::DeviceBuffer floats(int64_t n) { return cuda::DeviceBuffer(static_cast<size_t>(n) * 4); }
float* f(const cuda::DeviceBuffer& b) { return b.as<float>(); }
}  // namespace

LlamaGpu::LlamaGpu(cuda::Context& ctx, const LlamaConfig& cfg, const LlamaWeights& w, const LoraSpec* spec,
                   int64_t max_batch, int64_t max_seq)
    : ctx_(ctx), cfg_(cfg), spec_(spec ? *spec : LoraSpec{}), has_lora_(spec != nullptr), max_n_(max_batch * max_seq),
      inv_freq_(rope_inv_freq(cfg)) {
  const int64_t N = max_n_, H = cfg.hidden_size, I = cfg.intermediate_size, Q = cfg.q_dim(), KV = cfg.kv_dim();
  const int64_t r = spec_.r;
  embed_ = upload(w.embed);
  final_norm_ = upload(w.final_norm);
  head_ = upload(w.head());
  layers_.resize(cfg.num_hidden_layers);
  acts_.resize(cfg.num_hidden_layers);
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
    Layer& L = layers_[l];
    L.input_norm = upload(w.layers[l].input_norm);
    L.post_norm = upload(w.layers[l].post_norm);
    for (int p = 0; p < kNumProj; ++p) {
      L.proj[p] = upload(w.layers[l].proj[p]);
      if (has_lora_ && spec_.targets[p]) {
        auto [out, in] = proj_shape(cfg, static_cast<Proj>(p));
        L.lora[p].a = floats(r * in), L.lora[p].b = floats(out * r);
        L.lora[p].da = floats(r * in), L.lora[p].db = floats(out * r);
      }
    }
    Acts& A = acts_[l];
    A.x = floats(N * H), A.n1 = floats(N * H), A.rstd1 = floats(N), A.q = floats(N * Q), A.k = floats(N * KV);
    A.v = floats(N * KV), A.att = floats(N * Q), A.lse = floats(N * cfg.num_attention_heads), A.h = floats(N * H);
    A.n2 = floats(N * H), A.rstd2 = floats(N), A.gate = floats(N * I), A.up = floats(N * I), A.act = floats(N * I);
    for (int p = 0; p < kNumProj; ++p)
      if (has_lora_ && spec_.targets[p]) A.t[p] = floats(N * r);
  }
  ids_ = cuda::DeviceBuffer(N * 4), targets_ = cuda::DeviceBuffer(N * 4), doc_ = cuda::DeviceBuffer(N * 4);
  cos_ = floats(N * cfg.head_dim / 2), sin_ = floats(N * cfg.head_dim / 2);
  out_ = floats(N * H), final_rstd_ = floats(N), normed_ = floats(N * H), dnormed_ = floats(N * H), dy_ = floats(N * H);
  loss_ = floats(N), logits_ = floats(kHeadChunk * cfg.vocab_size);
  dh_ = floats(N * H), dn_ = floats(N * H), dq_ = floats(N * Q), dk_ = floats(N * KV), dv_ = floats(N * KV);
  datt_ = floats(N * Q), dgate_ = floats(N * I), dup_ = floats(N * I), dact_ = floats(N * I);
  dt_ = floats(N * std::max<int64_t>(r, 1)), delta_ = floats(N * cfg.num_attention_heads);
  if (has_lora_ && spec_.dropout > 0) xd_ = floats(N * std::max({H, I, Q})), dxd_ = floats(N * std::max({H, I, Q}));
}

void LlamaGpu::upload_lora(const LoraParams& lora) {
  FT_ASSERT(has_lora_);
  for (int64_t l = 0; l < cfg_.num_hidden_layers; ++l)
    for (int p = 0; p < kNumProj; ++p)
      if (lora.layers[l][p].active()) {
        layers_[l].lora[p].a.upload(lora.layers[l][p].a.ptr(), lora.layers[l][p].a.numel() * 4);
        layers_[l].lora[p].b.upload(lora.layers[l][p].b.ptr(), lora.layers[l][p].b.numel() * 4);
      }
}

void LlamaGpu::prepare(const Batch& b) {
  if (b.n() > max_n_) fail("internal error: batch of {} tokens exceeds the planned {}", b.n(), max_n_);
  n_ = b.n(), batch_ = b.batch, seq_ = b.seq;
  ids_.upload(b.ids.data(), n_ * 4);
  targets_.upload(b.targets.data(), n_ * 4);
  has_doc_ = !b.doc.empty();
  if (has_doc_) doc_.upload(b.doc.data(), n_ * 4);
  std::vector<float> cos, sin;
  rope_tables(inv_freq_, b.pos.data(), n_, cos, sin);
  cos_.upload(cos.data(), cos.size() * 4);
  sin_.upload(sin.data(), sin.size() * 4);
  cuda::embedding_forward(ctx_, F32, embed_.data(), ids_.as<int32_t>(), n_, cfg_.hidden_size, cfg_.vocab_size,
                          acts_.empty() ? out_.data() : acts_[0].x.data());
}

// y = x W^T + s * (x A^T) B^T, t = x A^T saved.
void LlamaGpu::linear_fwd(int64_t l, Proj p, const float* x, float* y, float* t) {
  const int i = static_cast<int>(p);
  auto [out, in] = proj_shape(cfg_, p);
  cuda::gemm(ctx_, n_, out, in, 1.0f, {x, F32, false}, {layers_[l].proj[i].data(), F32, true}, 0.0f, y, F32);
  if (!has_lora_ || !spec_.targets[i]) return;
  const Pair& P = layers_[l].lora[i];
  const float* xin = x;
  if (dropout_key_ && spec_.dropout > 0) {
    cuda::dropout_forward(ctx_, dropout_key_for(dropout_key_, l, i), static_cast<float>(spec_.dropout), x, f(xd_), n_ * in);
    xin = f(xd_);
  }
  cuda::gemm(ctx_, n_, spec_.r, in, 1.0f, {xin, F32, false}, {P.a.data(), F32, true}, 0.0f, t, F32);
  cuda::gemm(ctx_, n_, out, spec_.r, spec_.scaling(), {t, F32, false}, {P.b.data(), F32, true}, 1.0f, y, F32);
}

// dx += dy W + (s dy B) A; dB += s dy^T t; dA += (s dy B)^T x.
void LlamaGpu::linear_bwd(int64_t l, Proj p, const float* x, const float* t, const float* dy, float* dx) {
  const int i = static_cast<int>(p);
  auto [out, in] = proj_shape(cfg_, p);
  cuda::gemm(ctx_, n_, in, out, 1.0f, {dy, F32, false}, {layers_[l].proj[i].data(), F32, false}, 1.0f, dx, F32);
  if (!has_lora_ || !spec_.targets[i]) return;
  Pair& P = layers_[l].lora[i];
  const float s = spec_.scaling();
  cuda::gemm(ctx_, out, spec_.r, n_, s, {dy, F32, true}, {t, F32, false}, 1.0f, f(P.db), F32);
  cuda::gemm(ctx_, n_, spec_.r, out, s, {dy, F32, false}, {P.b.data(), F32, false}, 0.0f, f(dt_), F32);
  if (dropout_key_ && spec_.dropout > 0) {
    const uint64_t key = dropout_key_for(dropout_key_, l, i);
    const float p = static_cast<float>(spec_.dropout);
    cuda::dropout_forward(ctx_, key, p, x, f(xd_), n_ * in);  // the forward's dropped input again
    cuda::gemm(ctx_, spec_.r, in, n_, 1.0f, {f(dt_), F32, true}, {f(xd_), F32, false}, 1.0f, f(P.da), F32);
    cuda::gemm(ctx_, n_, in, spec_.r, 1.0f, {f(dt_), F32, false}, {P.a.data(), F32, false}, 0.0f, f(dxd_), F32);
    cuda::dropout_backward_add(ctx_, key, p, f(dxd_), dx, n_ * in);
    return;
  }
  cuda::gemm(ctx_, spec_.r, in, n_, 1.0f, {f(dt_), F32, true}, {x, F32, false}, 1.0f, f(P.da), F32);
  cuda::gemm(ctx_, n_, in, spec_.r, 1.0f, {f(dt_), F32, false}, {P.a.data(), F32, false}, 1.0f, dx, F32);
}

void LlamaGpu::layer_forward(int64_t l, const float* x, float* y) {
  Acts& A = acts_[l];
  const Layer& L = layers_[l];
  const int64_t H = cfg_.hidden_size, I = cfg_.intermediate_size;
  const float eps = static_cast<float>(cfg_.rms_norm_eps);
  if (x != f(A.x)) ctx_.copy(f(A.x), x, n_ * H * 4);
  auto t = [&](Proj p) { return A.t[static_cast<int>(p)].data() ? f(A.t[static_cast<int>(p)]) : nullptr; };
  cuda::rmsnorm_forward(ctx_, f(A.x), f(L.input_norm), f(A.n1), f(A.rstd1), n_, H, eps);
  linear_fwd(l, Proj::Q, f(A.n1), f(A.q), t(Proj::Q));
  linear_fwd(l, Proj::K, f(A.n1), f(A.k), t(Proj::K));
  linear_fwd(l, Proj::V, f(A.n1), f(A.v), t(Proj::V));
  cuda::rope_forward(ctx_, F32, A.q.data(), f(cos_), f(sin_), n_, cfg_.num_attention_heads, cfg_.head_dim);
  cuda::rope_forward(ctx_, F32, A.k.data(), f(cos_), f(sin_), n_, cfg_.num_key_value_heads, cfg_.head_dim);
  const cuda::AttnShape as{batch_, seq_, cfg_.num_attention_heads, cfg_.num_key_value_heads, cfg_.head_dim,
                           static_cast<float>(1.0 / std::sqrt(static_cast<double>(cfg_.head_dim)))};
  cuda::attention_forward(ctx_, F32, as, A.q.data(), A.k.data(), A.v.data(), has_doc_ ? doc_.as<int32_t>() : nullptr,
                          A.att.data(), f(A.lse));
  linear_fwd(l, Proj::O, f(A.att), f(A.h), t(Proj::O));
  cuda::add_inplace(ctx_, f(A.h), f(A.x), n_ * H);
  cuda::rmsnorm_forward(ctx_, f(A.h), f(L.post_norm), f(A.n2), f(A.rstd2), n_, H, eps);
  linear_fwd(l, Proj::Gate, f(A.n2), f(A.gate), t(Proj::Gate));
  linear_fwd(l, Proj::Up, f(A.n2), f(A.up), t(Proj::Up));
  cuda::swiglu_forward(ctx_, F32, A.gate.data(), A.up.data(), A.act.data(), n_ * I);
  linear_fwd(l, Proj::Down, f(A.act), y, t(Proj::Down));
  cuda::add_inplace(ctx_, y, f(A.h), n_ * H);
}

void LlamaGpu::layer_backward(int64_t l, float* dy) {
  const Acts& A = acts_[l];
  const Layer& L = layers_[l];
  const int64_t H = cfg_.hidden_size, I = cfg_.intermediate_size;
  auto t = [&](Proj p) { return A.t[static_cast<int>(p)].data() ? f(A.t[static_cast<int>(p)]) : nullptr; };
  ctx_.zero(f(dact_), n_ * I * 4);
  linear_bwd(l, Proj::Down, f(A.act), t(Proj::Down), dy, f(dact_));
  cuda::swiglu_backward(ctx_, F32, A.gate.data(), A.up.data(), dact_.data(), dgate_.data(), dup_.data(), n_ * I);
  ctx_.zero(f(dn_), n_ * H * 4);
  linear_bwd(l, Proj::Gate, f(A.n2), t(Proj::Gate), f(dgate_), f(dn_));
  linear_bwd(l, Proj::Up, f(A.n2), t(Proj::Up), f(dup_), f(dn_));
  ctx_.copy(f(dh_), dy, n_ * H * 4);
  cuda::rmsnorm_backward(ctx_, f(dn_), f(A.h), f(L.post_norm), f(A.rstd2), f(dh_), n_, H);
  ctx_.zero(f(datt_), n_ * cfg_.q_dim() * 4);
  linear_bwd(l, Proj::O, f(A.att), t(Proj::O), f(dh_), f(datt_));
  const cuda::AttnShape as{batch_, seq_, cfg_.num_attention_heads, cfg_.num_key_value_heads, cfg_.head_dim,
                           static_cast<float>(1.0 / std::sqrt(static_cast<double>(cfg_.head_dim)))};
  cuda::attention_backward(ctx_, F32, as, A.q.data(), A.k.data(), A.v.data(), has_doc_ ? doc_.as<int32_t>() : nullptr,
                           A.att.data(), f(A.lse), datt_.data(), dq_.data(), dk_.data(), dv_.data(), f(delta_));
  cuda::rope_backward(ctx_, F32, dq_.data(), f(cos_), f(sin_), n_, cfg_.num_attention_heads, cfg_.head_dim);
  cuda::rope_backward(ctx_, F32, dk_.data(), f(cos_), f(sin_), n_, cfg_.num_key_value_heads, cfg_.head_dim);
  ctx_.zero(f(dn_), n_ * H * 4);
  linear_bwd(l, Proj::Q, f(A.n1), t(Proj::Q), f(dq_), f(dn_));
  linear_bwd(l, Proj::K, f(A.n1), t(Proj::K), f(dk_), f(dn_));
  linear_bwd(l, Proj::V, f(A.n1), t(Proj::V), f(dv_), f(dn_));
  ctx_.copy(dy, f(dh_), n_ * H * 4);
  cuda::rmsnorm_backward(ctx_, f(dn_), f(A.x), f(L.input_norm), f(A.rstd1), dy, n_, H);
}

std::pair<double, int64_t> LlamaGpu::head(const Batch& b, float grad_scale, bool backward) {
  const int64_t H = cfg_.hidden_size;
  float* last = f(out_);
  for (int64_t l = 0; l < cfg_.num_hidden_layers; ++l)
    layer_forward(l, f(acts_[l].x), l + 1 < cfg_.num_hidden_layers ? f(acts_[l + 1].x) : last);
  cuda::rmsnorm_forward(ctx_, last, f(final_norm_), f(normed_), f(final_rstd_), n_, H,
                        static_cast<float>(cfg_.rms_norm_eps));
  cuda::lm_head_cross_entropy(ctx_, F32, normed_.data(), head_.data(), targets_.as<int32_t>(), n_, H, cfg_.vocab_size,
                              grad_scale, f(loss_), backward ? dnormed_.data() : nullptr, logits_.data(), kHeadChunk);
  ctx_.synchronize();  // the copy below runs outside the model's stream
  const auto losses = loss_.to_host<float>(n_);
  double sum = 0;
  for (float x : losses) sum += x;
  return {sum, b.count_targets()};
}

std::pair<double, int64_t> LlamaGpu::forward_backward(const Batch& b, float grad_scale, LoraParams& grads,
                                                      uint64_t dropout_key) {
  prepare(b);
  dropout_key_ = dropout_key;
  for (auto& L : layers_)
    for (auto& P : L.lora)
      if (P.da.data()) ctx_.zero(P.da.data(), P.da.bytes()), ctx_.zero(P.db.data(), P.db.bytes());
  const auto res = head(b, grad_scale, true);
  const int64_t H = cfg_.hidden_size;
  ctx_.zero(f(dy_), n_ * H * 4);
  cuda::rmsnorm_backward(ctx_, f(dnormed_), f(out_), f(final_norm_), f(final_rstd_), f(dy_), n_, H);
  for (int64_t l = cfg_.num_hidden_layers - 1; l >= 0; --l) layer_backward(l, f(dy_));
  ctx_.synchronize();
  for (int64_t l = 0; l < cfg_.num_hidden_layers; ++l)
    for (int p = 0; p < kNumProj; ++p) {
      LoraPair& g = grads.layers[l][p];
      if (!g.active()) continue;
      const auto da = layers_[l].lora[p].da.to_host<float>(g.a.numel());
      const auto db = layers_[l].lora[p].db.to_host<float>(g.b.numel());
      for (int64_t i = 0; i < g.a.numel(); ++i) g.a.data[i] += da[i];
      for (int64_t i = 0; i < g.b.numel(); ++i) g.b.data[i] += db[i];
    }
  return res;
}

std::pair<double, int64_t> LlamaGpu::loss(const Batch& b) {
  prepare(b);
  dropout_key_ = 0;
  return head(b, 0.0f, false);
}

}  // namespace ftune

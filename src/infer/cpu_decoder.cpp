// CpuDecoder: one token through every layer with the cache, then the final norm and lm_head.
#include "infer/cpu_decoder.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "model/rope.h"
#include "ops/cpu/matmul.h"
#include "ops/cpu/rmsnorm.h"
#include "ops/cpu/rope.h"
#include "ops/cpu/swiglu.h"

namespace ftune {

CpuDecoder::CpuDecoder(const LlamaConfig& cfg, const LlamaWeights& w, int64_t rows, int64_t max_len)
    : cfg_(cfg), w_(w), max_len_(max_len), inv_freq_(rope_inv_freq(cfg)) {
  const int64_t L = cfg.num_hidden_layers, KV = cfg.kv_dim();
  k_.assign(static_cast<size_t>(rows * L), std::vector<float>(static_cast<size_t>(max_len * KV)));
  v_ = k_;
  len_.assign(static_cast<size_t>(rows), 0);
  x_.resize(cfg.hidden_size), n_.resize(cfg.hidden_size), q_.resize(cfg.q_dim()), k1_.resize(KV), v1_.resize(KV);
  att_.resize(cfg.q_dim()), gate_.resize(cfg.intermediate_size), up_.resize(cfg.intermediate_size);
  scores_.resize(max_len), logits_.resize(cfg.vocab_size);
}

const std::vector<float>& CpuDecoder::step(int64_t row, int32_t token) {
  const int64_t H = cfg_.hidden_size, I = cfg_.intermediate_size, Q = cfg_.q_dim(), KV = cfg_.kv_dim();
  const int64_t d = cfg_.head_dim, heads = cfg_.num_attention_heads, kvh = cfg_.num_key_value_heads;
  const int64_t pos = len_[row];
  if (pos >= max_len_) fail("generation: row {} reached the planned length of {} tokens", row, max_len_);
  if (token < 0 || token >= cfg_.vocab_size) fail("generation: token id {} is outside the vocabulary of {}", token, cfg_.vocab_size);
  const float eps = static_cast<float>(cfg_.rms_norm_eps);
  std::copy_n(w_.embed.ptr() + static_cast<int64_t>(token) * H, H, x_.begin());
  const int32_t p32 = static_cast<int32_t>(pos);
  rope_tables(inv_freq_, &p32, 1, cos_, sin_);
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  float rstd = 0;
  for (int64_t l = 0; l < cfg_.num_hidden_layers; ++l) {
    const LayerWeights& Lw = w_.layers[l];
    std::vector<float>& kc = k_[static_cast<size_t>(row * cfg_.num_hidden_layers + l)];
    std::vector<float>& vc = v_[static_cast<size_t>(row * cfg_.num_hidden_layers + l)];
    cpu::rmsnorm_forward(x_.data(), Lw.input_norm.ptr(), n_.data(), &rstd, 1, H, eps);
    cpu::linear(n_.data(), Lw.proj[static_cast<int>(Proj::Q)].ptr(), q_.data(), 1, H, Q);
    cpu::linear(n_.data(), Lw.proj[static_cast<int>(Proj::K)].ptr(), k1_.data(), 1, H, KV);
    cpu::linear(n_.data(), Lw.proj[static_cast<int>(Proj::V)].ptr(), v1_.data(), 1, H, KV);
    cpu::rope_forward(q_.data(), cos_.data(), sin_.data(), 1, heads, d);
    cpu::rope_forward(k1_.data(), cos_.data(), sin_.data(), 1, kvh, d);
    std::copy(k1_.begin(), k1_.end(), kc.begin() + pos * KV);
    std::copy(v1_.begin(), v1_.end(), vc.begin() + pos * KV);
    for (int64_t h = 0; h < heads; ++h) {  // causal attention of the new token over the cache
      const int64_t g = h / (heads / kvh);
      const float* qh = q_.data() + h * d;
      float mx = -INFINITY;
      for (int64_t t = 0; t <= pos; ++t) {
        const float* kt = kc.data() + t * KV + g * d;
        float s = 0;
        for (int64_t i = 0; i < d; ++i) s += qh[i] * kt[i];
        scores_[t] = s * scale;
        mx = std::max(mx, scores_[t]);
      }
      double sum = 0;
      for (int64_t t = 0; t <= pos; ++t) sum += (scores_[t] = std::exp(scores_[t] - mx));
      float* out = att_.data() + h * d;
      std::fill(out, out + d, 0.0f);
      for (int64_t t = 0; t <= pos; ++t) {
        const float p = static_cast<float>(scores_[t] / sum);
        const float* vt = vc.data() + t * KV + g * d;
        for (int64_t i = 0; i < d; ++i) out[i] += p * vt[i];
      }
    }
    cpu::linear(att_.data(), Lw.proj[static_cast<int>(Proj::O)].ptr(), x_.data(), 1, Q, H, 1.0f);  // + residual
    cpu::rmsnorm_forward(x_.data(), Lw.post_norm.ptr(), n_.data(), &rstd, 1, H, eps);
    cpu::linear(n_.data(), Lw.proj[static_cast<int>(Proj::Gate)].ptr(), gate_.data(), 1, H, I);
    cpu::linear(n_.data(), Lw.proj[static_cast<int>(Proj::Up)].ptr(), up_.data(), 1, H, I);
    cpu::swiglu_forward(gate_.data(), up_.data(), gate_.data(), I);
    cpu::linear(gate_.data(), Lw.proj[static_cast<int>(Proj::Down)].ptr(), x_.data(), 1, I, H, 1.0f);
  }
  ++len_[row];
  cpu::rmsnorm_forward(x_.data(), w_.final_norm.ptr(), n_.data(), &rstd, 1, H, eps);
  cpu::linear(n_.data(), w_.head().ptr(), logits_.data(), 1, H, cfg_.vocab_size);
  return logits_;
}

}  // namespace ftune

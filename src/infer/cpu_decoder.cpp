// BatchDecoder: a batch of rows through every layer with the caches, then the final norm and
// lm_head for the rows that want logits; CpuDecoder on top of it, one row per step.
#include "infer/cpu_decoder.h"

#include <algorithm>
#include <cmath>
#include <unordered_map>

#include "core/error.h"
#include "model/rope.h"
#include "ops/cpu/matmul.h"
#include "ops/cpu/rmsnorm.h"
#include "ops/cpu/rope.h"
#include "ops/cpu/swiglu.h"

namespace ftune {

CpuKvCache::CpuKvCache(const LlamaConfig& cfg, int64_t capacity)
    : KvCache(capacity), k_(static_cast<size_t>(cfg.num_hidden_layers * capacity * cfg.kv_dim())), v_(k_.size()) {}

BatchDecoder::BatchDecoder(const LlamaConfig& cfg, const LlamaWeights& w)
    : cfg_(cfg), w_(w), inv_freq_(rope_inv_freq(cfg)) {}

std::unique_ptr<KvCache> BatchDecoder::new_cache(int64_t capacity) {
  return std::make_unique<CpuKvCache>(cfg_, capacity);
}

void BatchDecoder::project(const std::vector<DecodeRow>& rows, int64_t layer, Proj p, const float* x, float* y,
                           float beta) {
  const int pi = static_cast<int>(p);
  const auto [out, in] = proj_shape(cfg_, p);
  const int64_t n = static_cast<int64_t>(rows.size());
  cpu::linear(x, w_.layers[layer].proj[pi].ptr(), y, n, in, out, beta);
  for (int64_t b = 0; b < n;) {
    const LoraParams* a = rows[b].adapter;
    int64_t e = b + 1;
    while (e < n && rows[e].adapter == a) ++e;
    if (a && a->layers[layer][pi].active()) {
      const LoraPair& pair = a->layers[layer][pi];
      const int64_t r = pair.a.dim(0), m = e - b;
      if (t_.size() < static_cast<size_t>(m * r)) t_.resize(static_cast<size_t>(m * r));
      cpu::linear(x + b * in, pair.a.ptr(), t_.data(), m, in, r);
      cpu::gemm(false, true, m, out, r, a->spec.scaling(), t_.data(), pair.b.ptr(), 1.0f, y + b * out);
    }
    b = e;
  }
}

const std::vector<float>& BatchDecoder::forward(const std::vector<DecodeRow>& rows) {
  const int64_t n = static_cast<int64_t>(rows.size());
  const int64_t H = cfg_.hidden_size, I = cfg_.intermediate_size, Q = cfg_.q_dim(), KV = cfg_.kv_dim();
  const int64_t d = cfg_.head_dim, heads = cfg_.num_attention_heads, kvh = cfg_.num_key_value_heads;
  const int64_t L = cfg_.num_hidden_layers, V = cfg_.vocab_size;
  logits_.clear();
  if (n == 0) return logits_;
  // Each row's position: its cache's length plus the rows of the same cache before it here. Checked
  // before anything is written, so a refused batch leaves every cache as it was.
  pos_.resize(static_cast<size_t>(n));
  std::unordered_map<const KvCache*, int64_t> added;
  caches_.resize(static_cast<size_t>(n));
  int64_t wanted = 0;
  for (int64_t r = 0; r < n; ++r) {
    const DecodeRow& row = rows[r];
    if (row.token < 0 || row.token >= V) fail("generation: token id {} is outside the vocabulary of {}", row.token, V);
    const int64_t pos = row.cache->length() + added[row.cache]++;
    if (pos >= row.cache->capacity())
      fail("generation: a sequence reached its planned length of {} tokens", row.cache->capacity());
    caches_[r] = dynamic_cast<CpuKvCache*>(row.cache);
    if (!caches_[r]) fail("generation: a KV cache of another decoder was given to the CPU decoder");
    pos_[r] = static_cast<int32_t>(pos);
    wanted += row.logits ? 1 : 0;
  }
  auto fit = [](std::vector<float>& v, int64_t size) {
    if (v.size() < static_cast<size_t>(size)) v.resize(static_cast<size_t>(size));
  };
  fit(x_, n * H), fit(n_, n * H), fit(rstd_, n), fit(q_, n * Q), fit(k_, n * KV), fit(v_, n * KV);
  fit(att_, n * Q), fit(gate_, n * I), fit(up_, n * I);
  const float eps = static_cast<float>(cfg_.rms_norm_eps);
  for (int64_t r = 0; r < n; ++r)
    std::copy_n(w_.embed.ptr() + static_cast<int64_t>(rows[r].token) * H, H, x_.begin() + r * H);
  rope_tables(inv_freq_, pos_.data(), n, cos_, sin_);
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  for (int64_t l = 0; l < L; ++l) {
    const LayerWeights& Lw = w_.layers[l];
    cpu::rmsnorm_forward(x_.data(), Lw.input_norm.ptr(), n_.data(), rstd_.data(), n, H, eps);
    project(rows, l, Proj::Q, n_.data(), q_.data(), 0.0f);
    project(rows, l, Proj::K, n_.data(), k_.data(), 0.0f);
    project(rows, l, Proj::V, n_.data(), v_.data(), 0.0f);
    cpu::rope_forward(q_.data(), cos_.data(), sin_.data(), n, heads, d);
    cpu::rope_forward(k_.data(), cos_.data(), sin_.data(), n, kvh, d);
    for (int64_t r = 0; r < n; ++r) {  // every row's key and value first: later rows attend to them
      CpuKvCache& c = *caches_[r];
      const int64_t at = (l * c.capacity() + pos_[r]) * KV;
      std::copy_n(k_.begin() + r * KV, KV, c.k_.begin() + at);
      std::copy_n(v_.begin() + r * KV, KV, c.v_.begin() + at);
    }
    // Causal attention of each row over its cache; a single decoding row wakes no thread team.
#pragma omp parallel for schedule(dynamic) if (n > 1)
    for (int64_t r = 0; r < n; ++r) {
      const CpuKvCache& c = *caches_[r];
      const int64_t pos = pos_[r];
      const float* kc = c.k_.data() + l * c.capacity() * KV;
      const float* vc = c.v_.data() + l * c.capacity() * KV;
      std::vector<float> scores(static_cast<size_t>(pos + 1));
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t g = h / (heads / kvh);
        const float* qh = q_.data() + r * Q + h * d;
        float mx = -INFINITY;
        for (int64_t t = 0; t <= pos; ++t) {
          const float* kt = kc + t * KV + g * d;
          float s = 0;
          for (int64_t i = 0; i < d; ++i) s += qh[i] * kt[i];
          scores[t] = s * scale;
          mx = std::max(mx, scores[t]);
        }
        double sum = 0;
        for (int64_t t = 0; t <= pos; ++t) sum += (scores[t] = std::exp(scores[t] - mx));
        float* out = att_.data() + r * Q + h * d;
        std::fill(out, out + d, 0.0f);
        for (int64_t t = 0; t <= pos; ++t) {
          const float p = static_cast<float>(scores[t] / sum);
          const float* vt = vc + t * KV + g * d;
          for (int64_t i = 0; i < d; ++i) out[i] += p * vt[i];
        }
      }
    }
    project(rows, l, Proj::O, att_.data(), x_.data(), 1.0f);  // + residual
    cpu::rmsnorm_forward(x_.data(), Lw.post_norm.ptr(), n_.data(), rstd_.data(), n, H, eps);
    project(rows, l, Proj::Gate, n_.data(), gate_.data(), 0.0f);
    project(rows, l, Proj::Up, n_.data(), up_.data(), 0.0f);
    cpu::swiglu_forward(gate_.data(), up_.data(), gate_.data(), n * I);
    project(rows, l, Proj::Down, gate_.data(), x_.data(), 1.0f);
  }
  for (int64_t r = 0; r < n; ++r) rows[r].cache->advance(1);
  // The final norm and lm_head only for the rows that want logits (a prompt fed for its last
  // position alone needs one row of [V], not one per token).
  int64_t j = 0;
  for (int64_t r = 0; r < n; ++r)
    if (rows[r].logits) std::copy_n(x_.begin() + r * H, H, n_.begin() + (j++) * H);
  fit(head_in_, wanted * H);
  logits_.resize(static_cast<size_t>(wanted * V));
  if (wanted > 0) {
    cpu::rmsnorm_forward(n_.data(), w_.final_norm.ptr(), head_in_.data(), rstd_.data(), wanted, H, eps);
    cpu::linear(head_in_.data(), w_.head().ptr(), logits_.data(), wanted, H, V);
  }
  return logits_;
}

CpuDecoder::CpuDecoder(const LlamaConfig& cfg, const LlamaWeights& w, int64_t rows, int64_t max_len)
    : dec_(cfg, w), max_len_(max_len) {
  for (int64_t r = 0; r < rows; ++r) caches_.push_back(dec_.new_cache(max_len));
}

const std::vector<float>& CpuDecoder::step(int64_t row, int32_t token) {
  if (caches_[row]->length() >= max_len_)
    fail("generation: row {} reached the planned length of {} tokens", row, max_len_);
  one_.assign(1, DecodeRow{caches_[row].get(), token, nullptr, true});
  return dec_.forward(one_);
}

}  // namespace ftune

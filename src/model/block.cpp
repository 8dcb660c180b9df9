// Llama decoder layer, forward and backward:
//   h = x + o_proj(attn(rope(q), rope(k), v)) with q/k/v = proj(rmsnorm(x))
//   y = h + down_proj(silu(gate_proj(n)) * up_proj(n)) with n = rmsnorm(h)
#include "model/block.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/dropout_hash.h"
#include "model/lora_linear.h"
#include "ops/cpu/attention.h"
#include "ops/cpu/rmsnorm.h"
#include "ops/cpu/rope.h"
#include "ops/cpu/swiglu.h"

namespace ftune {

BlockActs BlockActs::allocate(const LlamaConfig& c, const LoraSpec* lora, int64_t B, int64_t T) {
  const int64_t N = B * T, H = c.hidden_size, I = c.intermediate_size;
  BlockActs a;
  a.x = Tensor({N, H});
  a.n1 = Tensor({N, H});
  a.rstd1 = Tensor({N});
  a.q = Tensor({N, c.q_dim()});
  a.k = Tensor({N, c.kv_dim()});
  a.v = Tensor({N, c.kv_dim()});
  a.probs = Tensor({B, c.num_attention_heads, T, T});
  a.att = Tensor({N, c.q_dim()});
  a.h = Tensor({N, H});
  a.n2 = Tensor({N, H});
  a.rstd2 = Tensor({N});
  a.gate = Tensor({N, I});
  a.up = Tensor({N, I});
  a.act = Tensor({N, I});
  if (lora)
    for (int p = 0; p < kNumProj; ++p)
      if (lora->targets[p]) a.lora_t[p] = Tensor({N, lora->r});
  return a;
}

BlockScratch BlockScratch::allocate(const LlamaConfig& c, const LoraSpec* lora, int64_t B, int64_t T) {
  const int64_t N = B * T, H = c.hidden_size, I = c.intermediate_size;
  BlockScratch s;
  s.dh = Tensor({N, H});
  s.dn = Tensor({N, H});
  s.dq = Tensor({N, c.q_dim()});
  s.datt = Tensor({N, c.q_dim()});
  s.dk = Tensor({N, c.kv_dim()});
  s.dv = Tensor({N, c.kv_dim()});
  s.dgate = Tensor({N, I});
  s.dup = Tensor({N, I});
  s.dact = Tensor({N, I});
  if (lora) {
    s.dt = Tensor({N, lora->r});
    s.xd = Tensor({N, std::max({H, I, c.q_dim()})});
  }
  return s;
}

namespace {

// The projection `p` of layer `layer` as a LoRA linear; the dropout key differs per layer and
// projection so that masks are independent, as peft's separate Dropout modules are.
LoraLinear make_linear(const StepShape& s, int64_t layer, const LayerWeights& w,
                       const std::array<LoraPair, kNumProj>* lora, const LoraSpec* spec, Proj p) {
  const int i = static_cast<int>(p);
  const LoraPair* pair = (lora && (*lora)[i].active()) ? &(*lora)[i] : nullptr;
  LoraLinear l{w.proj[i], pair};
  if (pair) {
    l.scaling = spec->scaling();
    l.dropout = s.dropout_key ? static_cast<float>(spec->dropout) : 0.0f;
    l.dropout_key = dropout_key_for(s.dropout_key, layer, i);
  }
  return l;
}

cpu::AttnShape attn_shape(const LlamaConfig& c, const StepShape& s) {
  return {s.batch, s.seq, c.num_attention_heads, c.num_key_value_heads, c.head_dim,
          static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.head_dim)))};
}

float* scratch(Tensor& t) { return t.empty() ? nullptr : t.ptr(); }

}  // namespace

void block_forward(const LlamaConfig& c, const StepShape& s, int64_t layer, const LayerWeights& w,
                   const std::array<LoraPair, kNumProj>* lora, const LoraSpec* spec, const float* x, BlockActs& a,
                   float* y, BlockScratch& sc) {
  const int64_t N = s.n(), H = c.hidden_size, I = c.intermediate_size;
  const float eps = static_cast<float>(c.rms_norm_eps);
  float* xd = scratch(sc.xd);
  auto lin = [&](Proj p) { return make_linear(s, layer, w, lora, spec, p); };
  auto t = [&](Proj p) { return scratch(a.lora_t[static_cast<int>(p)]); };

  std::memcpy(a.x.ptr(), x, sizeof(float) * N * H);
  cpu::rmsnorm_forward(x, w.input_norm.ptr(), a.n1.ptr(), a.rstd1.ptr(), N, H, eps);
  lora_linear_forward(lin(Proj::Q), a.n1.ptr(), N, a.q.ptr(), t(Proj::Q), xd);
  lora_linear_forward(lin(Proj::K), a.n1.ptr(), N, a.k.ptr(), t(Proj::K), xd);
  lora_linear_forward(lin(Proj::V), a.n1.ptr(), N, a.v.ptr(), t(Proj::V), xd);
  cpu::rope_forward(a.q.ptr(), s.cos, s.sin, N, c.num_attention_heads, c.head_dim);
  cpu::rope_forward(a.k.ptr(), s.cos, s.sin, N, c.num_key_value_heads, c.head_dim);
  cpu::attention_forward(attn_shape(c, s), a.q.ptr(), a.k.ptr(), a.v.ptr(), s.doc, a.probs.ptr(), a.att.ptr());
  lora_linear_forward(lin(Proj::O), a.att.ptr(), N, a.h.ptr(), t(Proj::O), xd);
  for (int64_t i = 0; i < N * H; ++i) a.h.data[i] += x[i];

  cpu::rmsnorm_forward(a.h.ptr(), w.post_norm.ptr(), a.n2.ptr(), a.rstd2.ptr(), N, H, eps);
  lora_linear_forward(lin(Proj::Gate), a.n2.ptr(), N, a.gate.ptr(), t(Proj::Gate), xd);
  lora_linear_forward(lin(Proj::Up), a.n2.ptr(), N, a.up.ptr(), t(Proj::Up), xd);
  cpu::swiglu_forward(a.gate.ptr(), a.up.ptr(), a.act.ptr(), N * I);
  lora_linear_forward(lin(Proj::Down), a.act.ptr(), N, y, t(Proj::Down), xd);
  for (int64_t i = 0; i < N * H; ++i) y[i] += a.h.data[i];
}

void block_backward(const LlamaConfig& c, const StepShape& s, int64_t layer, const LayerWeights& w,
                    const std::array<LoraPair, kNumProj>* lora, const LoraSpec* spec, const BlockActs& a, float* dy,
                    std::array<LoraPair, kNumProj>* grads, BlockScratch& sc, LayerWeights* wgrad) {
  const int64_t N = s.n(), H = c.hidden_size, I = c.intermediate_size;
  auto dw = [&](Proj p) { return wgrad ? wgrad->proj[static_cast<int>(p)].ptr() : nullptr; };
  auto lin = [&](Proj p) { return make_linear(s, layer, w, lora, spec, p); };
  auto t = [&](Proj p) { return a.lora_t[static_cast<int>(p)].empty() ? nullptr : a.lora_t[static_cast<int>(p)].ptr(); };
  auto g = [&](Proj p) { return grads ? &(*grads)[static_cast<int>(p)] : nullptr; };
  auto zero = [](Tensor& x, int64_t n) { std::fill(x.data.begin(), x.data.begin() + n, 0.0f); };
  float* dt = scratch(sc.dt);
  float* xd = scratch(sc.xd);

  // MLP: y = h + down(silu(gate(n2)) * up(n2))
  zero(sc.dact, N * I);
  lora_linear_backward(lin(Proj::Down), a.act.ptr(), N, t(Proj::Down), dy, sc.dact.ptr(), g(Proj::Down), dt, xd, dw(Proj::Down));
  cpu::swiglu_backward(a.gate.ptr(), a.up.ptr(), sc.dact.ptr(), sc.dgate.ptr(), sc.dup.ptr(), N * I);
  zero(sc.dn, N * H);
  lora_linear_backward(lin(Proj::Gate), a.n2.ptr(), N, t(Proj::Gate), sc.dgate.ptr(), sc.dn.ptr(), g(Proj::Gate), dt, xd, dw(Proj::Gate));
  lora_linear_backward(lin(Proj::Up), a.n2.ptr(), N, t(Proj::Up), sc.dup.ptr(), sc.dn.ptr(), g(Proj::Up), dt, xd, dw(Proj::Up));
  std::memcpy(sc.dh.ptr(), dy, sizeof(float) * N * H);
  cpu::rmsnorm_backward(sc.dn.ptr(), a.h.ptr(), w.post_norm.ptr(), a.rstd2.ptr(), sc.dh.ptr(), N, H,
                        wgrad ? wgrad->post_norm.ptr() : nullptr);

  // Attention: h = x + o(attn(...))
  zero(sc.datt, N * c.q_dim());
  lora_linear_backward(lin(Proj::O), a.att.ptr(), N, t(Proj::O), sc.dh.ptr(), sc.datt.ptr(), g(Proj::O), dt, xd, dw(Proj::O));
  cpu::attention_backward(attn_shape(c, s), a.q.ptr(), a.k.ptr(), a.v.ptr(), a.probs.ptr(), sc.datt.ptr(),
                          sc.dq.ptr(), sc.dk.ptr(), sc.dv.ptr());
  cpu::rope_backward(sc.dq.ptr(), s.cos, s.sin, N, c.num_attention_heads, c.head_dim);
  cpu::rope_backward(sc.dk.ptr(), s.cos, s.sin, N, c.num_key_value_heads, c.head_dim);
  zero(sc.dn, N * H);
  lora_linear_backward(lin(Proj::Q), a.n1.ptr(), N, t(Proj::Q), sc.dq.ptr(), sc.dn.ptr(), g(Proj::Q), dt, xd, dw(Proj::Q));
  lora_linear_backward(lin(Proj::K), a.n1.ptr(), N, t(Proj::K), sc.dk.ptr(), sc.dn.ptr(), g(Proj::K), dt, xd, dw(Proj::K));
  lora_linear_backward(lin(Proj::V), a.n1.ptr(), N, t(Proj::V), sc.dv.ptr(), sc.dn.ptr(), g(Proj::V), dt, xd, dw(Proj::V));
  std::memcpy(dy, sc.dh.ptr(), sizeof(float) * N * H);
  cpu::rmsnorm_backward(sc.dn.ptr(), a.x.ptr(), w.input_norm.ptr(), a.rstd1.ptr(), dy, N, H,
                        wgrad ? wgrad->input_norm.ptr() : nullptr);
}

}  // namespace ftune

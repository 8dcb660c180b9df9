// LlamaGpu's layers: the projections with their adapter (forward and backward), attention, a
// decoder layer's forward (its MLP in chunks of rows when asked) and backward, and the head. The
// data flow is the one gpu/llama_gpu.cpp's header describes; this file holds the per-layer math,
// that one the model's buffers, state and step calls.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "core/dropout_hash.h"
#include "core/error.h"
#include "gpu/llama_gpu.h"
#include "ops/cuda/attention.h"
#include "ops/cuda/cross_entropy.h"
#include "ops/cuda/elementwise.h"
#include "ops/cuda/flash_attention.h"
#include "ops/cuda/gemm.h"
#include "ops/cuda/rmsnorm.h"
#include "ops/cuda/rope.h"
#include "ops/cuda/swiglu.h"

namespace ftune {

namespace {
constexpr cuda::Storage F32 = cuda::Storage::F32;
float* f(const cuda::DeviceBuffer& b) { return b.as<float>(); }
}  // namespace

// The adapter's A and B of a projection as GEMM operands (the dt compute copy, or the fp32 masters).
std::pair<const void*, const void*> LlamaGpu::lora_ab(int64_t l, int p) const {
  const char* base = static_cast<const char*>(dt_ == F32 ? lora_p_.data() : lora_c_.data());
  const LoraSlot& s = (dt_ == F32 ? slots_ : cslots_)[l][p];
  return {base + s.a * static_cast<int64_t>(esz_), base + s.b * static_cast<int64_t>(esz_)};
}

// y = x W^T (+ residual) + s * (drop(x) A^T) B^T, t = drop(x) A^T saved. y null: only t (the
// recompute under checkpointing needs t but not the output).
void LlamaGpu::linear_fwd(int64_t l, Proj p, const void* x, const void* residual, void* y, void* t, int64_t rows,
                          int64_t r0) {
  const int i = static_cast<int>(p);
  auto [out, in] = proj_shape(cfg_, p);
  const int64_t m = rows < 0 ? n_ : rows;
  if (y)
    cuda::gemm(*ctx_, m, out, in, 1.0f, {x, dt_, false}, {weight(l, i), dt_, true}, residual ? 1.0f : 0.0f,
               residual, y, dt_);
  if (!adapted(i)) return;
  const auto [A, B] = lora_ab(l, i);
  const GroupPos gp = group_pos(i);
  const bool fuse = fused(gp);
  if (fuse && gp.j == 0) {
    // The group's first member: t^T of every member at once, [A_1; ..; A_g] x^T = [g r, m] (the
    // compute copy keeps a group's A one after another).
    cuda::gemm(*ctx_, gp.g * spec_.r, m, in, 1.0f, {A, dt_, false}, {x, dt_, true}, 0.0f, t, dt_);
  } else if (!fuse) {
    const void* xin = x;
    if (dropout_key_ && spec_.dropout > 0) {
      cuda::dropout_forward(*ctx_, dt_, dropout_key_for(dropout_key_, l, i), static_cast<float>(spec_.dropout), x,
                            xd_.data(), m * in, r0 * in);
      xin = xd_.data();
    }
    cuda::gemm(*ctx_, m, spec_.r, in, 1.0f, {xin, dt_, false}, {A, dt_, true}, 0.0f, t, dt_);
  }
  if (y) cuda::gemm(*ctx_, m, out, spec_.r, spec_.scaling(), {t, dt_, fuse}, {B, dt_, true}, 1.0f, y, dt_);
}

// dx = beta * dx + dy W + (s dy B) A; dB += s dy^T t; dA += (s dy B)^T drop(x). The adapter's
// terms that read x come first, so dx may be x's own buffer (the down projection's act).
void LlamaGpu::linear_bwd(int64_t l, Proj p, const void* x, const void* t, const void* dy, void* dx,
                          cuda::Storage dx_type, float beta, int64_t rows, int64_t r0) {
  const int i = static_cast<int>(p);
  auto [out, in] = proj_shape(cfg_, p);
  const int64_t m = rows < 0 ? n_ : rows;
  const void* W = weight(l, i);
  if (!adapted(i)) {
    // Full fine-tuning: dW += dy^T x, before dx is written (dx may be x's own buffer).
    if (opt_.full)
      cuda::gemm(*ctx_, out, in, m, 1.0f, {dy, dt_, true}, {x, dt_, false}, 1.0f, grad_at(layer_off_[l][i]), F32);
    cuda::gemm(*ctx_, m, in, out, 1.0f, {dy, dt_, false}, {W, dt_, false}, beta, dx, dx_type);
    return;
  }
  const auto [A, B] = lora_ab(l, i);
  float* dA = f(lora_g_) + slots_[l][i].a;
  float* dB = f(lora_g_) + slots_[l][i].b;
  const float s = spec_.scaling();
  const GroupPos gp = group_pos(i);
  if (fused(gp)) {
    // t is [r, m]; this member's (s dy B)^T goes to row block j of dtb_ ([g r, m]). After the
    // group's last member (the backward visits them in call order): its dA in one GEMM ([g r, in],
    // then each member's block added to the gradients) and the (s dy B) A terms of dx in one.
    const int64_t r = spec_.r;
    cuda::gemm(*ctx_, out, r, m, s, {dy, dt_, true}, {t, dt_, true}, 1.0f, dB, F32);
    cuda::gemm(*ctx_, r, m, out, s, {B, dt_, true}, {dy, dt_, true}, 0.0f, dt(dtb_, gp.j * r * m), dt_);
    cuda::gemm(*ctx_, m, in, out, 1.0f, {dy, dt_, false}, {W, dt_, false}, beta, dx, dx_type);
    if (gp.j + 1 < gp.g) return;
    const void* A0 = lora_ab(l, gp.first).first;  // the group's A, [g r, in]
    cuda::gemm(*ctx_, gp.g * r, in, m, 1.0f, {dtb_.data(), dt_, false}, {x, dt_, false}, 0.0f, dag_.data(), F32);
    for (const int q : kGroups[static_cast<size_t>(gp.group)])
      if (q >= 0 && adapted(q))
        cuda::add_into(*ctx_, f(dag_) + group_pos(q).j * r * in, f(lora_g_) + slots_[l][q].a, r * in);
    cuda::gemm(*ctx_, m, in, gp.g * r, 1.0f, {dtb_.data(), dt_, true}, {A0, dt_, false}, 1.0f, dx, dx_type);
    return;
  }
  cuda::gemm(*ctx_, out, spec_.r, m, s, {dy, dt_, true}, {t, dt_, false}, 1.0f, dB, F32);
  cuda::gemm(*ctx_, m, spec_.r, out, s, {dy, dt_, false}, {B, dt_, false}, 0.0f, dtb_.data(), dt_);
  const bool drop = dropout_key_ && spec_.dropout > 0;
  const uint64_t key = drop ? dropout_key_for(dropout_key_, l, i) : 0;
  const float prob = static_cast<float>(spec_.dropout);
  if (drop) {
    cuda::dropout_forward(*ctx_, dt_, key, prob, x, xd_.data(), m * in, r0 * in);  // the forward's dropped input again
    x = xd_.data();
  }
  cuda::gemm(*ctx_, spec_.r, in, m, 1.0f, {dtb_.data(), dt_, true}, {x, dt_, false}, 1.0f, dA, F32);
  cuda::gemm(*ctx_, m, in, out, 1.0f, {dy, dt_, false}, {W, dt_, false}, beta, dx, dx_type);
  if (drop) {
    cuda::gemm(*ctx_, m, in, spec_.r, 1.0f, {dtb_.data(), dt_, false}, {A, dt_, false}, 0.0f, dxd_.data(), F32);
    cuda::dropout_backward_add(*ctx_, key, prob, f(dxd_), dx_type, dx, m * in, r0 * in);
  } else {
    cuda::gemm(*ctx_, m, in, spec_.r, 1.0f, {dtb_.data(), dt_, false}, {A, dt_, false}, 1.0f, dx, dx_type);
  }
}

cuda::AttnShape LlamaGpu::attn_shape() const {
  return {batch_, seq_, cfg_.num_attention_heads, cfg_.num_key_value_heads, cfg_.head_dim,
          static_cast<float>(1.0 / std::sqrt(static_cast<double>(cfg_.head_dim)))};
}

bool LlamaGpu::use_flash(const cuda::AttnShape& a) const {
  if (dt_ == cuda::Storage::F32) return false;
  if (ctx_) return cuda::flash_attention_supported(*ctx_, dt_, a);
  // plan only: bf16 on sm_80+, fp16 on sm_75+
  return sm_ >= (dt_ == cuda::Storage::BF16 ? 80 : 75) && (a.head_dim == 64 || a.head_dim == 128) &&
         a.heads % a.kv_heads == 0;
}

// cuDNN's attention for the largest micro-batch: its plans are built here, before the memory plan,
// so that their workspace is in it; where cuDNN cannot (not loaded, refused shape), ftune's kernels,
// with the reason in attention_kernels().
cuda::AttnShape LlamaGpu::biggest_attn() const {
  return {opt_.max_batch, opt_.max_seq, cfg_.num_attention_heads, cfg_.num_key_value_heads, cfg_.head_dim, 1.0f};
}

// Whether the options ask for cuDNN's attention and the shapes are what its engines take (the plan
// without a GPU then counts its workspace).
bool LlamaGpu::cudnn_eligible() const {
  const cuda::AttnShape a = biggest_attn();  // use_flash: the scratch cuDNN's backward shares is planned
  return opt_.cudnn_attention && !opt_.deterministic && use_flash(a) && cuda::CudnnAttention::takes(dt_, sm_, a);
}

void LlamaGpu::setup_cudnn() {
  const cuda::AttnShape biggest = biggest_attn();
  cudnn_ws_bytes_ = 0;
  if (!cudnn_eligible()) return;
  cudnn_ = std::make_unique<cuda::CudnnAttention>(*ctx_);
  std::string why;
  if (!cudnn_->loaded())
    why = cudnn_->status();
  else if (!cudnn_->supports(dt_, biggest))
    why = cudnn_->refusal();
  if (!why.empty()) {
    cudnn_note_ = " (cuDNN not used: " + why + ")";
    cudnn_.reset();
    return;
  }
  cudnn_ws_bytes_ = std::max(cudnn_->workspace_bytes(dt_, biggest), cuda::cudnn_attention_workspace_estimate(biggest));
}

// Once per micro-batch (prepare): cuDNN or ftune's kernels for its attention, and the name of the choice.
void LlamaGpu::choose_attention() {
  const cuda::AttnShape a = attn_shape();
  // packed documents: ftune's kernels take the per-token ids
  cudnn_now_ = cudnn_ && !has_doc_ && cudnn_->supports(dt_, a) && cudnn_->workspace_bytes(dt_, a) <= cudnn_ws_bytes_;
  attn_kernels_ = cudnn_now_       ? cudnn_->status() + " fused"
                  : !use_flash(a) ? "ftune reference"
                  : cudnn_        ? (has_doc_ ? "ftune flash (packed documents)" : "ftune flash (cuDNN refused the shape)")
                                  : "ftune flash" + cudnn_note_;
}

void LlamaGpu::attention_fwd(Acts& A) {
  const cuda::AttnShape as = attn_shape();
  const int32_t* doc = has_doc_ ? doc_.as<int32_t>() : nullptr;
  if (cudnn_now_)
    cudnn_->forward(dt_, as, A.q.data(), A.k.data(), A.v.data(), A.att.data(), f(A.lse), cudnn_ws_.data());
  else if (use_flash(as))
    cuda::flash_attention_forward(*ctx_, dt_, as, A.q.data(), A.k.data(), A.v.data(), doc, A.att.data(), f(A.lse));
  else
    cuda::attention_forward(*ctx_, dt_, as, A.q.data(), A.k.data(), A.v.data(), doc, A.att.data(), f(A.lse));
}

void LlamaGpu::attention_bwd(const Acts& A) {
  const cuda::AttnShape as = attn_shape();
  const int32_t* doc = has_doc_ ? doc_.as<int32_t>() : nullptr;
  if (cudnn_now_)
    cudnn_->backward(dt_, as, A.q.data(), A.k.data(), A.v.data(), A.att.data(), f(A.lse), datt_.data(), dq_.data(),
                     dk_.data(), dv_.data(), f(delta_), f(attn_scratch_), cudnn_ws_.data());
  else if (use_flash(as))
    cuda::flash_attention_backward(*ctx_, dt_, as, A.q.data(), A.k.data(), A.v.data(), doc, A.att.data(), f(A.lse),
                                   datt_.data(), dq_.data(), dk_.data(), dv_.data(), f(delta_), f(attn_scratch_),
                                   flash_options());
  else
    cuda::attention_backward(*ctx_, dt_, as, A.q.data(), A.k.data(), A.v.data(), doc, A.att.data(), f(A.lse),
                             datt_.data(), dq_.data(), dk_.data(), dv_.data(), f(delta_));
}

void LlamaGpu::layer_forward(int64_t l, bool recompute) {
  Acts& A = acts(l);
  const Layer& Ly = layers_[l];
  const int64_t H = cfg_.hidden_size;
  const float eps = static_cast<float>(cfg_.rms_norm_eps);
  const void* x = xbuf(l);
  auto t = [&](Proj p) { return t_rows(A, p, 0, n_); };
  cuda::rmsnorm_forward(*ctx_, dt_, x, f(Ly.input_norm), A.n1.data(), f(A.rstd1), n_, H, eps);
  linear_fwd(l, Proj::Q, A.n1.data(), nullptr, A.q.data(), t(Proj::Q));
  linear_fwd(l, Proj::K, A.n1.data(), nullptr, A.k.data(), t(Proj::K));
  linear_fwd(l, Proj::V, A.n1.data(), nullptr, A.v.data(), t(Proj::V));
  cuda::rope_forward(*ctx_, dt_, A.q.data(), f(cos_), f(sin_), n_, cfg_.num_attention_heads, cfg_.head_dim);
  cuda::rope_forward(*ctx_, dt_, A.k.data(), f(cos_), f(sin_), n_, cfg_.num_key_value_heads, cfg_.head_dim);
  attention_fwd(A);
  linear_fwd(l, Proj::O, A.att.data(), x, A.h.data(), t(Proj::O));  // h = o(att) + x
  cuda::rmsnorm_forward(*ctx_, dt_, A.h.data(), f(Ly.post_norm), A.n2.data(), f(A.rstd2), n_, H, eps);
  // A chunked MLP is recomputed chunk by chunk in the backward itself.
  if (!(recompute && mlp_chunked()))
    for (int64_t r0 = 0; r0 < n_; r0 += mlp_rows()) mlp_forward(l, recompute, r0, std::min(mlp_rows(), n_ - r0));
  if (overflow_.data() && !recompute) {  // fp16: where activations first leave fp16's range
    int* c = overflow_.as<int32_t>() + l * 3;
    cuda::count_nonfinite(*ctx_, dt_, A.h.data(), n_ * H, c);
    cuda::count_nonfinite(*ctx_, dt_, xbuf(l + 1), n_ * H, c + 2);
  }
}

void LlamaGpu::mlp_forward(int64_t l, bool recompute, int64_t r0, int64_t m) {
  Acts& A = acts(l);
  const int64_t H = cfg_.hidden_size, I = cfg_.intermediate_size;
  auto t = [&](Proj p) { return t_rows(A, p, r0, m); };
  const char* n2 = dt(A.n2, r0 * H);
  linear_fwd(l, Proj::Gate, n2, nullptr, A.gate.data(), t(Proj::Gate), m, r0);
  linear_fwd(l, Proj::Up, n2, nullptr, A.up.data(), t(Proj::Up), m, r0);
  cuda::swiglu_forward(*ctx_, dt_, A.gate.data(), A.up.data(), A.act.data(), m * I);
  // y = down(act) + h; a recompute needs only the adapter's t, not y (already saved as xs_[l+1]).
  linear_fwd(l, Proj::Down, A.act.data(), dt(A.h, r0 * H),
             recompute ? nullptr : static_cast<char*>(xbuf(l + 1)) + r0 * H * static_cast<int64_t>(esz_),
             t(Proj::Down), m, r0);
  if (overflow_.data() && !recompute)  // fp16: the SwiGLU product's count, chunk by chunk
    cuda::count_nonfinite(*ctx_, dt_, A.act.data(), m * I, overflow_.as<int32_t>() + l * 3 + 1);
}

std::string LlamaGpu::forward_overflow() const {
  if (!overflow_.data()) return "";
  ctx_->synchronize();
  const auto c = overflow_.to_host<int32_t>(cfg_.num_hidden_layers * 3);
  static const char* kWhere[] = {"attention output plus residual", "SwiGLU product (silu(gate) x up)",
                                 "output (MLP plus residual)"};
  for (int64_t l = l0_; l < l1_; ++l)
    for (int k = 0; k < 3; ++k)
      if (c[static_cast<size_t>(l * 3 + k)] > 0)
        return fmt::format("fp16 overflow in the forward at layer {}: {} values of its {} went past 65504 to inf or "
                           "NaN (loss scaling cannot help the forward; use train.precision bf16 on sm_80+ or fp32)",
                           l, c[static_cast<size_t>(l * 3 + k)], kWhere[k]);
  return "";
}

// dy_ holds dL/d(layer output) on entry and dL/d(layer input) on exit.
void LlamaGpu::layer_backward(int64_t l) {
  if (opt_.checkpointing) layer_forward(l, true);
  Acts& A = acts(l);
  const Layer& Ly = layers_[l];
  const int64_t H = cfg_.hidden_size, I = cfg_.intermediate_size;
  auto t = [&](Proj p) { return t_rows(A, p, 0, n_); };
  const void* dyo = dy_operand();  // dL/d(layer output)
  // Buffers reused in place: d act overwrites act (linear_bwd reads x before it writes dx), and
  // the gate/up gradients overwrite gate/up (read and written element by element). A chunked MLP
  // is recomputed and differentiated chunk by chunk of rows.
  for (int64_t r0 = 0; r0 < n_; r0 += mlp_rows()) {
    const int64_t m = std::min(mlp_rows(), n_ - r0);
    if (mlp_chunked()) mlp_forward(l, true, r0, m);
    auto tc = [&](Proj p) { return t_rows(A, p, r0, m); };
    const char* n2 = dt(A.n2, r0 * H);
    float* dn = f(dn_) + r0 * H;
    linear_bwd(l, Proj::Down, A.act.data(), tc(Proj::Down), static_cast<const char*>(dyo) + r0 * H * static_cast<int64_t>(esz_), A.act.data(), dt_, 0.0f, m, r0);
    cuda::swiglu_backward(*ctx_, dt_, A.gate.data(), A.up.data(), A.act.data(), A.gate.data(), A.up.data(), m * I);
    linear_bwd(l, Proj::Gate, n2, tc(Proj::Gate), A.gate.data(), dn, F32, 0.0f, m, r0);
    linear_bwd(l, Proj::Up, n2, tc(Proj::Up), A.up.data(), dn, F32, 1.0f, m, r0);
  }
  if (opt_.full) norm_grad(f(dn_), A.h.data(), f(A.rstd2), layer_off_[l][kNumProj + 1]);
  cuda::rmsnorm_backward(*ctx_, dt_, f(dn_), A.h.data(), f(Ly.post_norm), f(A.rstd2), f(dy_), n_, H, dy16());  // dL/dh
  linear_bwd(l, Proj::O, A.att.data(), t(Proj::O), dyo, datt_.data(), dt_, 0.0f);
  attention_bwd(A);
  cuda::rope_backward(*ctx_, dt_, dq_.data(), f(cos_), f(sin_), n_, cfg_.num_attention_heads, cfg_.head_dim);
  cuda::rope_backward(*ctx_, dt_, dk_.data(), f(cos_), f(sin_), n_, cfg_.num_key_value_heads, cfg_.head_dim);
  linear_bwd(l, Proj::Q, A.n1.data(), t(Proj::Q), dq_.data(), dn_.data(), F32, 0.0f);
  linear_bwd(l, Proj::K, A.n1.data(), t(Proj::K), dk_.data(), dn_.data(), F32, 1.0f);
  linear_bwd(l, Proj::V, A.n1.data(), t(Proj::V), dv_.data(), dn_.data(), F32, 1.0f);
  if (opt_.full) norm_grad(f(dn_), xbuf(l), f(A.rstd1), layer_off_[l][kNumProj]);
  cuda::rmsnorm_backward(*ctx_, dt_, f(dn_), xbuf(l), f(Ly.input_norm), f(A.rstd1), f(dy_), n_, H, dy16());
}

// Final norm, lm_head and the per-row losses; with `backward`, dy_ = dL/d(last layer output).
void LlamaGpu::head(bool backward) {
  const int64_t H = cfg_.hidden_size, L = cfg_.num_hidden_layers;
  cuda::rmsnorm_forward(*ctx_, dt_, xbuf(L), f(final_norm_), normed_.data(), f(final_rstd_), n_, H,
                        static_cast<float>(cfg_.rms_norm_eps));
  const void* w = head_w();
  if (backward && z3_) z_grads_begin(z3_->head_unit());
  cuda::lm_head_cross_entropy(*ctx_, dt_, normed_.data(), w, targets_.as<int32_t>(), n_, H, cfg_.vocab_size,
                              backward ? grad_scale_ : 0.0f, f(loss_), backward ? dnormed_.data() : nullptr,
                              logits_.data(), chunk_, backward && opt_.full ? grad_at(head_off_) : nullptr);
  if (!backward) return;
  if (z3_) z_grads_end(z3_->head_unit());
  ctx_->zero(f(dy_), n_ * H * 4);
  cuda::convert(*ctx_, dt_, dnormed_.data(), F32, f(dn_), n_ * H);
  if (opt_.full) norm_grad(f(dn_), xbuf(L), f(final_rstd_), final_off_);
  cuda::rmsnorm_backward(*ctx_, dt_, f(dn_), xbuf(L), f(final_norm_), f(final_rstd_), f(dy_), n_, H, dy16());
}

}  // namespace ftune

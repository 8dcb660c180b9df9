// The CPU Llama model: layer loop, checkpointed recompute, fused head + loss, and the unit gate's
// calls around each unit's use (forward and backward side by side).
#include "model/llama.h"

#include <cstring>

#include "core/error.h"
#include "model/rope.h"
#include "ops/cpu/embedding.h"
#include "ops/cpu/matmul.h"
#include "ops/cpu/rmsnorm.h"

namespace ftune {

LlamaCpu::LlamaCpu(const LlamaConfig& cfg, const LlamaWeights& w, const LoraParams* lora, const ModelOptions& opt,
                   UnitGate* gate)
    : cfg_(cfg),
      w_(w),
      lora_(lora),
      opt_(opt),
      gate_(gate),
      l0_(opt.first_layer),
      l1_(opt.end_layer < 0 ? cfg.num_hidden_layers : opt.end_layer),
      inv_freq_(rope_inv_freq(cfg)) {
  FT_ASSERT(0 <= l0_ && l0_ < l1_ && l1_ <= cfg.num_hidden_layers && opt.slots >= 1);
  const LoraSpec* spec = lora ? &lora->spec : nullptr;
  const int64_t N = opt.max_batch * opt.max_seq, H = cfg.hidden_size;
  slots_.resize(static_cast<size_t>(opt.slots));
  for (Slot& sl : slots_) {
    if (!opt.gradient_checkpointing)
      for (int64_t l = l0_; l < l1_; ++l) sl.acts.push_back(BlockActs::allocate(cfg, spec, opt.max_batch, opt.max_seq));
    for (int64_t l = l0_; l <= l1_; ++l) sl.layer_inputs.emplace_back(std::vector<int64_t>{N, H});
  }
  if (opt.gradient_checkpointing) recompute_ = BlockActs::allocate(cfg, spec, opt.max_batch, opt.max_seq);
  scratch_ = BlockScratch::allocate(cfg, spec, opt.max_batch, opt.max_seq);
  if (last_stage()) {
    normed_ = Tensor({N, H});
    final_rstd_ = Tensor({N});
    dh_ = Tensor({N, H});
  }
  dy_ = Tensor({N, H});
}

StepShape LlamaCpu::prepare(Slot& sl, const Batch& b, const float* in, uint64_t dropout_key) {
  if (b.batch > opt_.max_batch || b.seq > opt_.max_seq)
    fail("internal error: batch {}x{} exceeds the planned {}x{}", b.batch, b.seq, opt_.max_batch, opt_.max_seq);
  rope_tables(inv_freq_, b.pos.data(), b.n(), sl.cos, sl.sin);
  StepShape& s = sl.shape;
  s = StepShape{};
  s.batch = b.batch;
  s.seq = b.seq;
  s.cos = sl.cos.data();
  s.sin = sl.sin.data();
  s.doc = b.doc.empty() ? nullptr : b.doc.data();
  s.dropout_key = dropout_key;
  const int64_t H = cfg_.hidden_size;
  float* x = sl.layer_inputs[0].ptr();
  if (!first_stage()) {  // the previous stage's output
    FT_ASSERT(in != nullptr);
    std::memcpy(x, in, sizeof(float) * static_cast<size_t>(b.n() * H));
    return s;
  }
  // Embedding lookup into the first layer's input.
  gather(kEmbedUnit);
  for (int64_t t = 0; t < b.n(); ++t) {
    const int32_t id = b.ids[t];
    FT_ASSERT(id >= 0 && id < cfg_.vocab_size);
    std::memcpy(x + t * H, w_.embed.ptr() + static_cast<int64_t>(id) * H, sizeof(float) * H);
  }
  release(kEmbedUnit);
  return s;
}

const float* LlamaCpu::run_layers(Slot& sl) {
  const LoraSpec* spec = lora_ ? &lora_->spec : nullptr;
  const StepShape& s = sl.shape;
  for (int64_t l = l0_; l < l1_; ++l) {
    gather(layer_unit(l));
    block_forward(cfg_, s, l, w_.layers[l], layer_lora(l), spec, sl.layer_inputs[l - l0_].ptr(), acts_of(sl, l),
                  sl.layer_inputs[l + 1 - l0_].ptr(), scratch_);
    release(layer_unit(l));
  }
  const float* last = sl.layer_inputs[l1_ - l0_].ptr();
  if (last_stage())
    cpu::rmsnorm_forward(last, w_.final_norm.ptr(), normed_.ptr(), final_rstd_.ptr(), s.n(), cfg_.hidden_size,
                         static_cast<float>(cfg_.rms_norm_eps));
  return last;
}

cpu::CrossEntropyResult LlamaCpu::head(Slot& sl, const Batch& b, bool train, float grad_scale, LlamaWeights* wgrad) {
  const int64_t N = sl.shape.n(), H = cfg_.hidden_size, unit = head_unit(cfg_.num_hidden_layers);
  gather(unit);
  if (!train) {
    const auto res = cpu::lm_head_cross_entropy(normed_.ptr(), w_.head().ptr(), b.targets.data(), N, H,
                                                cfg_.vocab_size, 0.0f, nullptr);
    release(unit);
    return res;
  }
  // The head's forward and backward are one pass; its gradient (the tied embedding's share of it
  // with tied embeddings) is complete right after.
  if (wgrad) begin_grads(unit);
  float* head_grad = wgrad ? (cfg_.tie_word_embeddings ? wgrad->embed.ptr() : wgrad->lm_head.ptr()) : nullptr;
  auto res = cpu::lm_head_cross_entropy(normed_.ptr(), w_.head().ptr(), b.targets.data(), N, H, cfg_.vocab_size,
                                        grad_scale, dh_.ptr(), 64, head_grad);
  if (wgrad) end_grads(unit);
  release(unit);
  // Through model.norm into the gradient of the last layer's output.
  std::vector<float>& dy = dy_.data;
  std::fill(dy.begin(), dy.begin() + N * H, 0.0f);
  cpu::rmsnorm_backward(dh_.ptr(), sl.layer_inputs[l1_ - l0_].ptr(), w_.final_norm.ptr(), final_rstd_.ptr(),
                        dy.data(), N, H, wgrad ? wgrad->final_norm.ptr() : nullptr);
  return res;
}

cpu::CrossEntropyResult LlamaCpu::stage_forward(int64_t slot, const Batch& b, const float* in, float* out, bool train,
                                                float grad_scale, uint64_t dropout_key, LlamaWeights* wgrad) {
  Slot& sl = slots_.at(static_cast<size_t>(slot));
  prepare(sl, b, in, dropout_key);
  const float* last = run_layers(sl);
  if (!last_stage()) {
    FT_ASSERT(out != nullptr);
    std::memcpy(out, last, sizeof(float) * static_cast<size_t>(b.n() * cfg_.hidden_size));
    return {};
  }
  FT_ASSERT(!train || slots_.size() == 1);  // the last stage runs each backward right after its forward
  return head(sl, b, train, grad_scale, wgrad);
}

void LlamaCpu::stage_backward(int64_t slot, const Batch& b, const float* dout, float* din, LoraParams& grads,
                              LlamaWeights* wgrad) {
  Slot& sl = slots_.at(static_cast<size_t>(slot));
  const StepShape& s = sl.shape;
  const int64_t N = s.n(), H = cfg_.hidden_size;
  std::vector<float>& dy = dy_.data;
  if (!last_stage()) {  // the next stage's gradient of this stage's output
    FT_ASSERT(dout != nullptr);
    std::memcpy(dy.data(), dout, sizeof(float) * static_cast<size_t>(N * H));
  }
  const LoraSpec* spec = lora_ ? &lora_->spec : nullptr;
  for (int64_t l = l1_ - 1; l >= l0_; --l) {
    BlockActs& a = acts_of(sl, l);
    gather(layer_unit(l));  // again: the forward gave its weights up
    if (opt_.gradient_checkpointing) {
      // Recompute this layer's activations from its saved input; the output goes to scratch.
      block_forward(cfg_, s, l, w_.layers[l], layer_lora(l), spec, sl.layer_inputs[l - l0_].ptr(), a,
                    scratch_.dh.ptr(), scratch_);
    }
    if (wgrad) begin_grads(layer_unit(l));
    block_backward(cfg_, s, l, w_.layers[l], layer_lora(l), spec, a, dy.data(), lora_ ? &grads.layers[l] : nullptr,
                   scratch_, wgrad ? &wgrad->layers[l] : nullptr);
    if (wgrad) end_grads(layer_unit(l));
    release(layer_unit(l));
  }
  if (!first_stage()) {
    FT_ASSERT(din != nullptr);
    std::memcpy(din, dy.data(), sizeof(float) * static_cast<size_t>(N * H));
    return;
  }
  // dy is now the gradient of the embedding lookup's output (which needs no weights).
  if (wgrad) {
    begin_grads(kEmbedUnit);
    cpu::embedding_backward(b.ids.data(), dy.data(), N, H, wgrad->embed.ptr());
    end_grads(kEmbedUnit);
  }
}

cpu::CrossEntropyResult LlamaCpu::forward_backward(const Batch& b, float grad_scale, LoraParams& grads,
                                                   uint64_t dropout_key, LlamaWeights* wgrad) {
  FT_ASSERT(first_stage() && last_stage());
  const auto res = stage_forward(0, b, nullptr, nullptr, true, grad_scale, dropout_key, wgrad);
  stage_backward(0, b, nullptr, nullptr, grads, wgrad);
  return res;
}

cpu::CrossEntropyResult LlamaCpu::loss(const Batch& b) {
  FT_ASSERT(first_stage() && last_stage());
  return stage_forward(0, b, nullptr, nullptr, false, 0.0f, 0);
}

Tensor LlamaCpu::logits(const Batch& b) {
  FT_ASSERT(first_stage() && last_stage());
  Slot& sl = slots_[0];
  const StepShape s = prepare(sl, b, nullptr, 0);
  run_layers(sl);
  Tensor out({s.n(), cfg_.vocab_size});
  const int64_t head = head_unit(cfg_.num_hidden_layers);
  gather(head);
  cpu::linear(normed_.ptr(), w_.head().ptr(), out.ptr(), s.n(), cfg_.hidden_size, cfg_.vocab_size);
  release(head);
  return out;
}

}  // namespace ftune

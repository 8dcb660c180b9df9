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
    : cfg_(cfg), w_(w), lora_(lora), opt_(opt), gate_(gate), inv_freq_(rope_inv_freq(cfg)) {
  const LoraSpec* spec = lora ? &lora->spec : nullptr;
  const int64_t N = opt.max_batch * opt.max_seq, H = cfg.hidden_size;
  const size_t n_acts = opt.gradient_checkpointing ? 1 : static_cast<size_t>(cfg.num_hidden_layers);
  for (size_t i = 0; i < n_acts; ++i) acts_.push_back(BlockActs::allocate(cfg, spec, opt.max_batch, opt.max_seq));
  for (int64_t l = 0; l <= cfg.num_hidden_layers; ++l) layer_inputs_.emplace_back(std::vector<int64_t>{N, H});
  scratch_ = BlockScratch::allocate(cfg, spec, opt.max_batch, opt.max_seq);
  normed_ = Tensor({N, H});
  final_rstd_ = Tensor({N});
  dh_ = Tensor({N, H});
  dy_ = Tensor({N, H});
}

StepShape LlamaCpu::prepare(const Batch& b, uint64_t dropout_key) {
  if (b.batch > opt_.max_batch || b.seq > opt_.max_seq)
    fail("internal error: batch {}x{} exceeds the planned {}x{}", b.batch, b.seq, opt_.max_batch, opt_.max_seq);
  rope_tables(inv_freq_, b.pos.data(), b.n(), cos_, sin_);
  StepShape s;
  s.batch = b.batch;
  s.seq = b.seq;
  s.cos = cos_.data();
  s.sin = sin_.data();
  s.doc = b.doc.empty() ? nullptr : b.doc.data();
  s.dropout_key = dropout_key;
  // Embedding lookup into the first layer's input.
  const int64_t H = cfg_.hidden_size;
  float* x = layer_inputs_[0].ptr();
  gather(kEmbedUnit);
  for (int64_t t = 0; t < b.n(); ++t) {
    const int32_t id = b.ids[t];
    FT_ASSERT(id >= 0 && id < cfg_.vocab_size);
    std::memcpy(x + t * H, w_.embed.ptr() + static_cast<int64_t>(id) * H, sizeof(float) * H);
  }
  release(kEmbedUnit);
  return s;
}

const float* LlamaCpu::run_layers(const StepShape& s) {
  const LoraSpec* spec = lora_ ? &lora_->spec : nullptr;
  for (int64_t l = 0; l < cfg_.num_hidden_layers; ++l) {
    BlockActs& a = acts_[opt_.gradient_checkpointing ? 0 : l];
    gather(layer_unit(l));
    block_forward(cfg_, s, l, w_.layers[l], layer_lora(l), spec, layer_inputs_[l].ptr(), a,
                  layer_inputs_[l + 1].ptr(), scratch_);
    release(layer_unit(l));
  }
  const float* last = layer_inputs_[cfg_.num_hidden_layers].ptr();
  cpu::rmsnorm_forward(last, w_.final_norm.ptr(), normed_.ptr(), final_rstd_.ptr(), s.n(), cfg_.hidden_size,
                       static_cast<float>(cfg_.rms_norm_eps));
  return last;
}

cpu::CrossEntropyResult LlamaCpu::forward_backward(const Batch& b, float grad_scale, LoraParams& grads,
                                                   uint64_t dropout_key, LlamaWeights* wgrad) {
  const StepShape s = prepare(b, dropout_key);
  const float* last = run_layers(s);
  const int64_t N = s.n(), H = cfg_.hidden_size, head = head_unit(cfg_.num_hidden_layers);
  // The head's forward and backward are one pass; its gradient (the tied embedding's share of it
  // with tied embeddings) is complete right after.
  gather(head);
  if (wgrad) begin_grads(head);
  float* head_grad = wgrad ? (cfg_.tie_word_embeddings ? wgrad->embed.ptr() : wgrad->lm_head.ptr()) : nullptr;
  auto res = cpu::lm_head_cross_entropy(normed_.ptr(), w_.head().ptr(), b.targets.data(), N, H, cfg_.vocab_size,
                                        grad_scale, dh_.ptr(), 64, head_grad);
  if (wgrad) end_grads(head);
  release(head);
  // Through model.norm into the gradient of the last layer's output.
  std::vector<float>& dy = dy_.data;
  std::fill(dy.begin(), dy.begin() + N * H, 0.0f);
  cpu::rmsnorm_backward(dh_.ptr(), last, w_.final_norm.ptr(), final_rstd_.ptr(), dy.data(), N, H,
                        wgrad ? wgrad->final_norm.ptr() : nullptr);

  const LoraSpec* spec = lora_ ? &lora_->spec : nullptr;
  for (int64_t l = cfg_.num_hidden_layers - 1; l >= 0; --l) {
    BlockActs& a = acts_[opt_.gradient_checkpointing ? 0 : l];
    gather(layer_unit(l));  // again: the forward gave its weights up
    if (opt_.gradient_checkpointing) {
      // Recompute this layer's activations from its saved input; the output goes to scratch.
      block_forward(cfg_, s, l, w_.layers[l], layer_lora(l), spec, layer_inputs_[l].ptr(), a, scratch_.dh.ptr(),
                    scratch_);
    }
    if (wgrad) begin_grads(layer_unit(l));
    block_backward(cfg_, s, l, w_.layers[l], layer_lora(l), spec, a, dy.data(), lora_ ? &grads.layers[l] : nullptr,
                   scratch_, wgrad ? &wgrad->layers[l] : nullptr);
    if (wgrad) end_grads(layer_unit(l));
    release(layer_unit(l));
  }
  // dy is now the gradient of the embedding lookup's output (which needs no weights).
  if (wgrad) {
    begin_grads(kEmbedUnit);
    cpu::embedding_backward(b.ids.data(), dy.data(), N, H, wgrad->embed.ptr());
    end_grads(kEmbedUnit);
  }
  return res;
}

cpu::CrossEntropyResult LlamaCpu::loss(const Batch& b) {
  const StepShape s = prepare(b, 0);
  run_layers(s);
  const int64_t head = head_unit(cfg_.num_hidden_layers);
  gather(head);
  const auto res = cpu::lm_head_cross_entropy(normed_.ptr(), w_.head().ptr(), b.targets.data(), s.n(),
                                              cfg_.hidden_size, cfg_.vocab_size, 0.0f, nullptr);
  release(head);
  return res;
}

Tensor LlamaCpu::logits(const Batch& b) {
  const StepShape s = prepare(b, 0);
  run_layers(s);
  Tensor out({s.n(), cfg_.vocab_size});
  const int64_t head = head_unit(cfg_.num_hidden_layers);
  gather(head);
  cpu::linear(normed_.ptr(), w_.head().ptr(), out.ptr(), s.n(), cfg_.hidden_size, cfg_.vocab_size);
  release(head);
  return out;
}

}  // namespace ftune

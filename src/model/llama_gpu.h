// The Llama model on one GPU with LoRA (fp32 storage in this first version): the same
// computation as LlamaCpu, layer by layer, through the CUDA ops. Base weights are uploaded once;
// activations are allocated once for the largest micro-batch.
#pragma once
#include <array>
#include <cstdint>
#include <vector>

#include "model/batch.h"
#include "model/llama_config.h"
#include "model/lora.h"
#include "model/weights.h"
#include "ops/cuda/context.h"

namespace ftune {

class LlamaGpu {
 public:
  LlamaGpu(cuda::Context& ctx, const LlamaConfig& cfg, const LlamaWeights& w, const LoraSpec* spec, int64_t max_batch,
           int64_t max_seq);

  // Copies adapter weights to the device (after init or an optimizer step on the host).
  void upload_lora(const LoraParams& lora);
  // Forward and backward of one micro-batch; LoRA gradients (scaled by grad_scale) are added into
  // `grads` on the host. Returns the summed loss and the number of targets.
  // `dropout_key` != 0 turns LoRA dropout on, with the CPU model's masks.
  std::pair<double, int64_t> forward_backward(const Batch& b, float grad_scale, LoraParams& grads,
                                              uint64_t dropout_key = 0);
  // Loss only.
  std::pair<double, int64_t> loss(const Batch& b);

 private:
  struct Pair {
    cuda::DeviceBuffer a, b;     // A [r, in], B [out, r]
    cuda::DeviceBuffer da, db;   // their gradients
  };
  struct Layer {
    cuda::DeviceBuffer input_norm, post_norm;              // [H]
    std::array<cuda::DeviceBuffer, kNumProj> proj;         // as LayerWeights
    std::array<Pair, kNumProj> lora;                       // empty buffers where not targeted
  };
  struct Acts {  // one layer's saved activations
    cuda::DeviceBuffer x, n1, rstd1, q, k, v, att, lse, h, n2, rstd2, gate, up, act;
    std::array<cuda::DeviceBuffer, kNumProj> t;  // [N, r]
  };
  void prepare(const Batch& b);
  void linear_fwd(int64_t l, Proj p, const float* x, float* y, float* t);
  void linear_bwd(int64_t l, Proj p, const float* x, const float* t, const float* dy, float* dx);
  void layer_forward(int64_t l, const float* x, float* y);
  void layer_backward(int64_t l, float* dy);
  std::pair<double, int64_t> head(const Batch& b, float grad_scale, bool backward);

  cuda::Context& ctx_;
  LlamaConfig cfg_;
  LoraSpec spec_;
  bool has_lora_;
  int64_t max_n_;
  int64_t n_ = 0, batch_ = 0, seq_ = 0;
  cuda::DeviceBuffer embed_, final_norm_, head_;  // [V, H], [H], [V, H] (copy of embed when tied)
  std::vector<Layer> layers_;
  std::vector<Acts> acts_;
  cuda::DeviceBuffer ids_, targets_, doc_, cos_, sin_;  // [N] x3, [N, d/2] x2
  cuda::DeviceBuffer out_, final_rstd_, normed_, dnormed_, dy_, loss_, logits_;
  cuda::DeviceBuffer dh_, dn_, dq_, dk_, dv_, datt_, dgate_, dup_, dact_, dt_, delta_;
  cuda::DeviceBuffer xd_, dxd_;  // [N, max(H, I, heads*d)] dropout scratch
  uint64_t dropout_key_ = 0;
  std::vector<float> inv_freq_;
  bool has_doc_ = false;
};

}  // namespace ftune

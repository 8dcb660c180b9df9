// Causal grouped-query attention from cuDNN's fused flash-attention engines (the cuDNN graph API,
// as PyTorch's SDPA cuDNN backend and cudnn-frontend's sdpa node build it), forward and backward,
// with the same tensors and lse convention as flash_attention.h, so the two are interchangeable
// where supports() says yes. libcudnn.so.9 is loaded at run time: where it is absent (or too old,
// or has no engine for a shape) nothing fails and the caller keeps ftune's own kernels. Packed
// documents (per-token ids) are not expressed here: those batches stay on ftune's kernels.
//
// Why by hand rather than through cudnn-frontend: the frontend is a header-only C++ library that
// Debian does not package; the graph this needs is fixed (about 15 operations each way), so it is
// built here directly on the backend descriptors of cudnn_graph.h.
#pragma once
#include <cstddef>
#include <memory>
#include <string>

#include "ops/cuda/attention.h"
#include "ops/cuda/context.h"
#include "ops/cuda/storage.h"

namespace ftune::cuda {

// The workspace cuDNN 9.19's fused engines ask for on an H200 (measured at batch 4 x 2048 and 1 x
// 32768 / 131072 tokens): 256 bytes, plus, with grouped-query heads, a fp32 [B, heads, T, d]
// buffer. The memory plan counts this without a GPU; the model allocates the larger of it and what
// the plans ask for.
size_t cudnn_attention_workspace_estimate(const AttnShape& a);

class CudnnAttention {
 public:
  // Loads the library and makes a handle on ctx's device; never throws (loaded() says how it went).
  explicit CudnnAttention(const Context& ctx);
  ~CudnnAttention();
  CudnnAttention(const CudnnAttention&) = delete;
  CudnnAttention& operator=(const CudnnAttention&) = delete;

  bool loaded() const;
  // "cuDNN 9.x.y", or why it is not in use (library missing, too old, no handle).
  std::string status() const;

  // What the fused engines are asked for at all, without a GPU or the library: bf16 or fp16 on
  // sm_80+, head_dim 64 or 128 (the sizes ftune's models use), heads a multiple of kv_heads.
  static bool takes(Storage s, int sm, const AttnShape& a);
  // True when cuDNN has fused engines for causal attention of this storage and shape (takes() and
  // a plan). The forward and backward plans are built and kept on the first ask for a shape (a few hundred ms);
  // a shape cuDNN refuses is remembered as refused. Never throws.
  bool supports(Storage s, const AttnShape& a);
  // Why the last refused shape was refused (empty if none was).
  const std::string& refusal() const;
  // Device workspace bytes the two plans of a need (0 unless supports(s, a)); the fp32 dQ
  // accumulator and the row sums of the backward are the caller's, as with flash_attention.h.
  size_t workspace_bytes(Storage s, const AttnShape& a);

  // q: [B*T, heads, d], k/v: [B*T, kv_heads, d], out: [B*T, heads, d] (storage s, 16-byte aligned);
  // lse: [B, heads, T] fp32, natural log of sum_j exp(scale * q.k_j) over j <= i (as
  // flash_attention_forward writes it). workspace: workspace_bytes(s, a) bytes. supports(s, a) first.
  void forward(Storage s, const AttnShape& a, const void* q, const void* k, const void* v, void* out, float* lse,
               void* workspace);
  // dq: [B*T, heads, d], dk/dv: [B*T, kv_heads, d] (storage s), overwritten; out and lse as forward
  // wrote them; row_sums: [B, heads, T] fp32 scratch (rowsum(dO * O)); dq_accum: fp32 scratch of
  // B * heads * T * d floats (flash_attention_scratch_floats(a) is enough).
  void backward(Storage s, const AttnShape& a, const void* q, const void* k, const void* v, const void* out,
                const float* lse, const void* dout, void* dq, void* dk, void* dv, float* row_sums, float* dq_accum,
                void* workspace);

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace ftune::cuda

// Decoding on one GPU with KV caches (what `ftune generate --device gpu`, `ftune serve --device gpu`
// and `ftune eval --device gpu` run): the base weights on the device in bf16, fp16 or fp32, or the
// seven projections in NF4 (double-quantized, blocks of 64, dequantized before each GEMM as QLoRA's
// base is); each sequence's keys and values in its own device cache. A batch's base projections
// are one GEMM over every row, and each adapter's LoRA branch (unmerged, as peft computes it) two
// small GEMMs over the run of rows that use it, so requests for several adapters share one pass
// over the base weights (Punica, S-LoRA). A batch whose sequences all start at position 0 (a
// prefill) runs the tensor-core flash attention with one document per sequence; every other batch
// the split-key decode attention over the caches. Logits come back to the host in fp32.
#pragma once
#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "infer/decoder.h"
#include "model/llama_config.h"
#include "model/lora.h"
#include "model/weights.h"
#include "ops/cuda/context.h"
#include "ops/cuda/device_buffer.h"
#include "ops/cuda/storage.h"

namespace ftune {

struct GpuDecoderOptions {
  cuda::Storage storage = cuda::Storage::BF16;  // weights, activations and caches
  bool nf4 = false;                             // the projections in NF4 (dequantized into `storage`)
  bool graphs = true;                           // decoding batches replayed as CUDA graphs
  bool gemv = true;                             // base projections of <= 8 rows: ops/cuda/gemv.h
};

class GpuKvCache : public KvCache {
 public:
  GpuKvCache(const LlamaConfig& cfg, cuda::Storage s, int64_t capacity);

 private:
  friend class GpuDecoder;
  cuda::DeviceBuffer k_, v_;  // [layers, capacity, kv_dim] storage
};

class GpuDecoder : public Decoder {
 public:
  // Weights tensor by tensor from `w` (a projection bitsandbytes saved in NF4 taken as stored with
  // nf4); null: random weights made on the device from `seed` (benchmarks). Fails with the sizes
  // when the weights do not fit in the device's free memory.
  GpuDecoder(cuda::Context& ctx, const LlamaConfig& cfg, const WeightSource* w, const GpuDecoderOptions& o,
             uint64_t seed = 0);
  int64_t vocab_size() const override { return cfg_.vocab_size; }
  std::unique_ptr<KvCache> new_cache(int64_t capacity) override;
  const std::vector<float>& forward(const std::vector<DecodeRow>& rows) override;
  void forget(const LoraParams* adapter) override {
    graphs_.clear();  // they may hold the adapter's buffers
    adapters_.erase(adapter);
  }
  size_t weight_bytes() const { return weight_bytes_; }  // the base weights on the device
  // The device bytes one sequence's cache of `capacity` positions takes.
  size_t cache_bytes(int64_t capacity) const;
  int64_t flash_batches() const { return flash_batches_; }  // forwards that ran the flash attention
  int64_t graph_captures() const { return graph_captures_; }  // CUDA graphs recorded
  int64_t graph_launches() const { return graph_launches_; }  // forwards replayed from one

 private:
  struct Nf4 {                      // one projection in NF4 (quant/nf4.h's Nf4Tensor on the device)
    cuda::DeviceBuffer packed;      // [(out*in+1)/2] two codes a byte
    cuda::DeviceBuffer absmax_q;    // [nblocks] 8-bit block scales (nested)
    cuda::DeviceBuffer absmax2;     // [ceil(nblocks/256)] fp32 scales of the scales (nested)
    cuda::DeviceBuffer absmax_f32;  // [nblocks] fp32 block scales (not nested)
    cuda::DeviceBuffer code2;       // [256] fp32: a file's own nested map when it differs from ours
    int64_t blocksize = 64;
    float offset = 0.0f;
  };
  struct Layer {
    cuda::DeviceBuffer input_norm, post_norm;       // [H] fp32
    std::array<cuda::DeviceBuffer, kNumProj> proj;  // [out, in] storage (empty with nf4)
    std::array<Nf4, kNumProj> q4;                   // with nf4
  };
  struct Adapter {                                   // an adapter's A and B in the storage type
    cuda::DeviceBuffer flat;                         // every pair, A [r, in] then B [out, r]
    std::vector<std::array<int64_t, kNumProj>> a, b; // [layers] element offsets; -1: not adapted
    int64_t r = 0;
    float scaling = 0;
  };
  void fill(const WeightSource* w, uint64_t seed);
  void upload(const std::vector<float>& v, cuda::DeviceBuffer& dst, bool as_storage);
  const void* weight(int64_t l, int p);  // the projection, dequantized into wbuf_ with nf4
  const Adapter& adapter(const LoraParams* a);
  // y[n, out] = x W^T (+ y when accumulate), then each of runs_ with an adapter += its LoRA.
  void project(int64_t n, int64_t l, Proj p, const void* x, void* y, bool accumulate);
  void reserve(int64_t n, int64_t wanted, int32_t max_pos);  // scratch for a batch of n rows
  // After the batch's launches: waits for them, advances the caches, returns the logits.
  const std::vector<float>& finish(const std::vector<DecodeRow>& rows, int64_t wanted);
  char* at(const cuda::DeviceBuffer& b, int64_t elem) const { return b.as<char>() + elem * esz_; }

  cuda::Context& ctx_;
  LlamaConfig cfg_;
  GpuDecoderOptions opt_;
  cuda::Storage dt_;
  int64_t esz_;
  size_t weight_bytes_ = 0;
  std::vector<float> inv_freq_;  // [d/2]
  cuda::DeviceBuffer embed_, final_norm_, head_;  // [V, H] storage, [H] fp32, [V, H] storage (empty when tied)
  std::vector<Layer> layers_;
  cuda::DeviceBuffer wbuf_, code2_;  // nf4: [max out*in] dequantized weight; [256] fp32 nested map
  std::map<const LoraParams*, Adapter> adapters_;
  struct Run {                  // consecutive rows [begin, end) of the batch with one adapter
    int64_t begin, end;
    const Adapter* adapter;     // null: the base alone
    const LoraParams* lora;
  };
  std::vector<Run> runs_;       // of the batch in forward()
  int64_t max_r_ = 0;
  int64_t flash_batches_ = 0, graph_captures_ = 0, graph_launches_ = 0;
  // Decoding batches' CUDA graphs (cudaGraphExec_t) by shape; null: seen once, not yet recorded.
  std::map<std::vector<int64_t>, std::shared_ptr<void>> graphs_;
  // Per-batch scratch, grown to the largest batch seen.
  int64_t rows_cap_ = 0, wanted_cap_ = 0, attn_cap_ = 0, t_cap_ = 0;
  cuda::DeviceBuffer x_, n_, q_, k_, v_, att_, gate_, up_, t_;  // [n, H|H|Q|KV|KV|Q|I|I|r] storage
  cuda::DeviceBuffer rstd_, lse_, attn_scratch_;                // [n], [heads, n], decode partials: fp32
  cuda::DeviceBuffer meta_;                  // [n] per-row arrays (ids, positions, caches, docs, RoPE)
  cuda::PinnedBuffer meta_host_;             // their host staging
  cuda::DeviceBuffer head_in_, head_n_, logits_dev_;  // [w, H] storage x2, [w, V] fp32
  cuda::PinnedBuffer logits_host_;           // [w, V] fp32
  std::vector<float> logits_;                // [w, V]
  std::vector<float> cos_h_, sin_h_;         // [n, d/2] host RoPE tables
};

}  // namespace ftune

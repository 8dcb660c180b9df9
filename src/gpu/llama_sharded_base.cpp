// LlamaGpu under dist.zero 3 with LoRA or QLoRA (FSDP-QLoRA, as Answer.AI's fsdp_qlora shards a
// 4-bit base over GPUs): the frozen base is cut into units of bytes — the embedding, each layer's
// seven projections (NF4 codes, 8-bit block scales, their fp32 scales, nested map and offset; or
// the projections in the storage type with LoRA), the lm_head — and each rank keeps one piece of
// every unit. A unit is all-gathered into one unit buffer just before it is read and replaced by
// the next, so a rank holds 1/N of the base plus one unit. The norms stay whole on every rank;
// the adapter is data parallel (its gradients summed after each step's backward, as without
// sharding). The gathered bytes are the very bytes an unsharded model holds, so a sharded run
// computes what a data-parallel one does, bit for bit.
#include <algorithm>

#include <cuda_runtime.h>

#include "core/error.h"
#include "gpu/llama_gpu.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/elementwise.h"
#include "ops/cuda/nf4.h"
#include "quant/nf4.h"

namespace ftune {

namespace {
constexpr cuda::Storage F32 = cuda::Storage::F32;
constexpr int64_t kBlock = 64;       // bitsandbytes' QLoRA default, the only layout a sharded unit holds
constexpr int64_t kPieceAlign = 256;  // bytes: every piece, so every part of a unit, stays aligned
int64_t align16(int64_t b) { return (b + 15) / 16 * 16; }
}  // namespace

// Where each projection's parts lie in a layer's unit (the same in every layer), and each unit's
// piece per rank.
void LlamaGpu::layout_sharded_base() {
  const int64_t W = opt_.zero3_world, L = cfg_.num_hidden_layers, VH = cfg_.vocab_size * cfg_.hidden_size;
  int64_t at = 0;
  for (int p = 0; p < kNumProj; ++p) {
    auto [out, in] = proj_shape(cfg_, static_cast<Proj>(p));
    const int64_t n = out * in;
    BasePlace& pl = sb_place_[static_cast<size_t>(p)];
    pl.w = at;
    if (!opt_.nf4) {
      at += align16(n * static_cast<int64_t>(esz_));
      continue;
    }
    const int64_t blocks = (n + kBlock - 1) / kBlock, nb2 = (blocks + kNf4NestedBlocksize - 1) / kNf4NestedBlocksize;
    at += align16((n + 1) / 2);
    pl.absmax_q = at, at += align16(blocks);
    pl.absmax2 = at, at += align16(nb2 * 4);
    pl.code2 = at, at += 256 * 4;
    pl.offset = at, at += 16;
  }
  sb_units_.assign(static_cast<size_t>(L + 2), BaseUnit{});
  sb_units_[0].bytes = VH * static_cast<int64_t>(esz_);
  for (int64_t l = 0; l < L; ++l) sb_units_[static_cast<size_t>(1 + l)].bytes = at;
  sb_units_[static_cast<size_t>(L + 1)].bytes = cfg_.tie_word_embeddings ? 0 : VH * static_cast<int64_t>(esz_);
  int64_t local = 0;
  sb_max_padded_ = 0;
  for (BaseUnit& u : sb_units_) {
    u.piece = ((u.bytes + W - 1) / W + kPieceAlign - 1) / kPieceAlign * kPieceAlign;
    u.local = local, local += u.piece;
    sb_max_padded_ = std::max(sb_max_padded_, u.piece * W);
  }
  sb_local_bytes_ = local;
}

void LlamaGpu::allocate_sharded_base() {  // in the Weights category
  sb_pieces_ = alloc(static_cast<size_t>(sb_local_bytes_));
  sb_unit_ = alloc(static_cast<size_t>(sb_max_padded_));
  // Ranks sharing a GPU without CUDA IPC gather through pinned host memory (gpu/zero3_comm.h).
  plan_.host_pinned += opt_.zero3_world > 1 ? static_cast<size_t>(sb_max_padded_) : 0;
}

// The unit's whole bytes in sb_unit_ (a tied lm_head is the embedding's unit).
const char* LlamaGpu::sb_gather(int64_t u) {
  if (u == cfg_.num_hidden_layers + 1 && cfg_.tie_word_embeddings) u = 0;
  if (sb_held_ != u) {
    if (!zcomm_) fail("internal error: sharded base used before set_zero3_comm");
    const BaseUnit& un = sb_units_[static_cast<size_t>(u)];
    zcomm_->all_gather(sb_pieces_.as<char>() + un.local, sb_unit_.data(), static_cast<size_t>(un.piece));
    sb_held_ = u;
  }
  return sb_unit_.as<char>();
}

const void* LlamaGpu::sharded_weight(int64_t l, int p) {
  const char* u = sb_gather(1 + l);
  const BasePlace& pl = sb_place_[static_cast<size_t>(p)];
  if (!opt_.nf4) return u + pl.w;
  auto [out, in] = proj_shape(cfg_, static_cast<Proj>(p));
  auto at = [&](int64_t off) { return reinterpret_cast<const float*>(u + off); };
  cuda::nf4_dequantize(*ctx_, dt_, reinterpret_cast<const uint8_t*>(u + pl.w),
                       reinterpret_cast<const uint8_t*>(u + pl.absmax_q), at(pl.absmax2), at(pl.offset), at(pl.code2),
                       out * in, kBlock, wbuf_.data());
  return wbuf_.data();
}

// The gathers of one forward (a rank with no rows while the others evaluate).
void LlamaGpu::sharded_forward_without_rows() {
  for (int64_t u = 0; u < cfg_.num_hidden_layers + 2; ++u) sb_gather(u);
}

// Host bytes into the device on the compute stream, landed on return.
void LlamaGpu::upload_bytes(void* dst, const void* src, size_t n) {
  FT_CUDA(cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, ctx_->stream()));
  ctx_->synchronize();
}

// Elements of fp32 `t` whose bytes in the storage type fall in [lo, hi) of dst's tensor (the range
// may start before the tensor and end after it).
void LlamaGpu::upload_range(const Tensor& t, char* dst, int64_t lo, int64_t hi) {
  const int64_t e = static_cast<int64_t>(esz_), n = t.numel();
  const int64_t i0 = std::clamp<int64_t>(lo, 0, n * e) / e, i1 = std::clamp<int64_t>((hi + e - 1) / e, 0, n);
  if (i1 <= i0) return;
  if (dt_ == F32) return upload_bytes(dst + i0 * e, t.data.data() + i0, static_cast<size_t>((i1 - i0) * e));
  const std::vector<uint16_t> h = to_dt16(t.data.data() + i0, static_cast<size_t>(i1 - i0));
  upload_bytes(dst + i0 * e, h.data(), h.size() * 2);
}

// This rank's pieces: each unit built whole in sb_unit_ (from the checkpoint only the parts that
// overlap this rank's piece: a projection is read, and quantized, by the ranks whose piece holds
// it), then its piece kept. Random weights take fill_weights' draws in its order, so every rank's
// pieces are those of the unsharded model's bytes.
void LlamaGpu::fill_sharded_base(const WeightSource* w, uint64_t seed) {
  const int64_t W = opt_.zero3_world, R = opt_.zero3_rank, L = cfg_.num_hidden_layers, H = cfg_.hidden_size;
  const int64_t V = cfg_.vocab_size;
  uint64_t salt = seed * 0x9E3779B97F4A7C15ull;
  char* unit = sb_unit_.as<char>();
  auto begin_unit = [&](int64_t u) { ctx_->zero(unit, static_cast<size_t>(sb_units_[static_cast<size_t>(u)].piece * W)); };
  auto keep_piece = [&](int64_t u) {
    const BaseUnit& un = sb_units_[static_cast<size_t>(u)];
    ctx_->copy(sb_pieces_.as<char>() + un.local, unit + R * un.piece, static_cast<size_t>(un.piece));
  };
  auto mine = [&](int64_t u) {  // this rank's byte range of unit u
    const int64_t piece = sb_units_[static_cast<size_t>(u)].piece;
    return std::pair<int64_t, int64_t>{R * piece, (R + 1) * piece};
  };
  auto matrix = [&](int64_t u, Tensor (WeightSource::*get)() const) {  // the embedding or the lm_head
    begin_unit(u);
    if (w) {
      const auto [lo, hi] = mine(u);
      upload_range((w->*get)(), unit, lo, hi);
    } else {
      cuda::fill_normal(*ctx_, dt_, unit, V * H, ++salt, 0.0f, 0.02f);
    }
    keep_piece(u);
  };
  matrix(0, &WeightSource::embed);
  if (w)
    upload(w->final_norm(), final_norm_, false);
  else
    cuda::fill_normal(*ctx_, F32, final_norm_.data(), H, ++salt, 1.0f, 0.0f);
  if (!cfg_.tie_word_embeddings) matrix(L + 1, &WeightSource::lm_head);
  const QuantMap code2 = dynamic_map(true);
  for (int64_t l = 0; l < L; ++l) {
    Layer& Ly = layers_[static_cast<size_t>(l)];
    if (w) {
      upload(w->norm(l, false), Ly.input_norm, false), upload(w->norm(l, true), Ly.post_norm, false);
    } else {
      cuda::fill_normal(*ctx_, F32, Ly.input_norm.data(), H, ++salt, 1.0f, 0.0f);
      cuda::fill_normal(*ctx_, F32, Ly.post_norm.data(), H, ++salt, 1.0f, 0.0f);
    }
    const int64_t u = 1 + l;
    begin_unit(u);
    const auto [lo, hi] = mine(u);
    for (int p = 0; p < kNumProj; ++p) {
      const BasePlace& pl = sb_place_[static_cast<size_t>(p)];
      auto [out, in] = proj_shape(cfg_, static_cast<Proj>(p));
      const int64_t n = out * in;
      auto put = [&](int64_t off, const void* src, size_t bytes) { upload_bytes(unit + off, src, bytes); };
      if (!w) {  // as fill_weights: uniform NF4 codes with block scales around 0.04, or N(0, 0.02)
        ++salt;
        if (!opt_.nf4) {
          cuda::fill_normal(*ctx_, dt_, unit + pl.w, n, salt, 0.0f, 0.02f);
          continue;
        }
        const float offset = 0.04f;
        cuda::nf4_fill_random(*ctx_, reinterpret_cast<uint8_t*>(unit + pl.w), reinterpret_cast<uint8_t*>(unit + pl.absmax_q),
                              reinterpret_cast<float*>(unit + pl.absmax2), n, kBlock, salt, offset);
        put(pl.code2, code2.data(), 256 * 4), put(pl.offset, &offset, 4);
        continue;
      }
      const int64_t end = p + 1 < kNumProj ? sb_place_[static_cast<size_t>(p + 1)].w : sb_units_[static_cast<size_t>(u)].bytes;
      if (end <= lo || pl.w >= hi) continue;  // no byte of it in this rank's piece
      const Proj pj = static_cast<Proj>(p);
      if (!opt_.nf4) {
        upload_range(w->proj(l, pj), unit + pl.w, lo - pl.w, hi - pl.w);
        continue;
      }
      Nf4Tensor q;
      if (!w->proj_nf4(l, pj, q)) {
        const Tensor t = w->proj(l, pj);
        q = nf4_quantize(t.data.data(), {out, in}, kBlock, true);
      }
      if (!q.nested || q.blocksize != kBlock || q.numel != n)
        fail("layer {} {}: stored in NF4 with blocks of {}{}; dist.zero 3 on the GPU shards bitsandbytes' default layout "
             "only (blocks of 64, double-quantized): split the model with dist.pipeline instead, or start from the "
             "bf16 checkpoint",
             l, proj_name(pj), q.blocksize, q.nested ? "" : " and fp32 scales (not double-quantized)");
      put(pl.w, q.packed.data(), q.packed.size());
      put(pl.absmax_q, q.absmax_q.data(), q.absmax_q.size());
      put(pl.absmax2, q.absmax2.data(), q.absmax2.size() * 4);
      put(pl.code2, q.code2.data(), 256 * 4);
      put(pl.offset, &q.offset, 4);
    }
    keep_piece(u);
  }
  sb_held_ = -1;
}

}  // namespace ftune

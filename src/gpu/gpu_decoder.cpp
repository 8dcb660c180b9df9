// GpuDecoder: weights onto the device, one batch of rows through every layer with the caches,
// then the final norm and lm_head for the rows that want logits.
#include "gpu/gpu_decoder.h"

#include <cuda_runtime.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <unordered_map>

#include "core/dtype.h"
#include "core/error.h"
#include "model/rope.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/decode_attention.h"
#include "ops/cuda/elementwise.h"
#include "ops/cuda/embedding.h"
#include "ops/cuda/flash_attention.h"
#include "ops/cuda/gemm.h"
#include "ops/cuda/gemv.h"
#include "ops/cuda/nf4.h"
#include "ops/cuda/rmsnorm.h"
#include "ops/cuda/rope.h"
#include "ops/cuda/swiglu.h"
#include "quant/dynamic_map.h"
#include "quant/nf4.h"

namespace ftune {

namespace {

using cuda::Storage;
constexpr int64_t kNf4Block = 64;  // bitsandbytes' default for QLoRA

size_t align16(size_t n) { return (n + 15) / 16 * 16; }

// Where forward() puts each per-row array in the staging buffers (16-byte aligned), for `rows` rows:
// the cache pointers, the int32 arrays, the RoPE tables; `bytes` in all. reserve() sizes the buffers
// with the same layout.
struct MetaLayout {
  size_t k, v, cap, pos, ids, doc, sel, cos, sin, bytes;
};
MetaLayout meta_layout(int64_t rows, int64_t half) {
  MetaLayout m{};
  size_t o = 0;
  auto next = [&](size_t bytes) {
    const size_t at = o;
    o += align16(bytes);
    return at;
  };
  const size_t n = static_cast<size_t>(rows);
  m.k = next(n * 8), m.v = next(n * 8);
  m.cap = next(n * 4), m.pos = next(n * 4), m.ids = next(n * 4), m.doc = next(n * 4), m.sel = next(n * 4);
  m.cos = next(n * static_cast<size_t>(half) * 4), m.sin = next(n * static_cast<size_t>(half) * 4);
  m.bytes = o;
  return m;
}

std::string gib(size_t b) { return fmt::format("{:.2f} GiB", static_cast<double>(b) / (1u << 30)); }

}  // namespace

GpuKvCache::GpuKvCache(const LlamaConfig& cfg, Storage s, int64_t capacity)
    : KvCache(capacity),
      k_(static_cast<size_t>(cfg.num_hidden_layers * capacity * cfg.kv_dim() * cuda::storage_bytes(s))),
      v_(k_.bytes()) {}

size_t GpuDecoder::cache_bytes(int64_t capacity) const {
  return 2 * static_cast<size_t>(cfg_.num_hidden_layers * capacity * cfg_.kv_dim() * esz_);
}

std::unique_ptr<KvCache> GpuDecoder::new_cache(int64_t capacity) {
  if (capacity < 1 || capacity > (int64_t{1} << 30)) fail("generation: a cache of {} positions", capacity);
  FT_CUDA(cudaSetDevice(ctx_.device()));  // a server's worker thread calls in, not the thread that built it
  size_t free = 0, total = 0;
  cuda::memory_info(free, total);
  const size_t need = cache_bytes(capacity);
  if (need + (64u << 20) > free)
    fail("generation: the KV cache of a {}-token sequence takes {} and the GPU has {} free; fewer or shorter "
         "sequences at once (max_new_tokens, max_sequences) fit",
         capacity, gib(need), gib(free));
  return std::make_unique<GpuKvCache>(cfg_, dt_, capacity);
}

GpuDecoder::GpuDecoder(cuda::Context& ctx, const LlamaConfig& cfg, const WeightSource* w, const GpuDecoderOptions& o,
                       uint64_t seed)
    : ctx_(ctx), cfg_(cfg), opt_(o), dt_(o.storage), esz_(cuda::storage_bytes(o.storage)), inv_freq_(rope_inv_freq(cfg)) {
  if (cfg.head_dim > 256 || cfg.head_dim % 2 != 0)
    fail("generation on the GPU: head_dim {} is not an even number up to 256", cfg.head_dim);
  if (opt_.nf4 && dt_ == Storage::F32) fail("generation on the GPU: an NF4 base dequantizes into bf16 or fp16, not fp32");
  if (dt_ == Storage::BF16 && ctx.sm_version() < 80)
    fail("generation on the GPU: {} (sm_{}) has no bf16; use fp16", ctx.name(), ctx.sm_version());
  const int64_t H = cfg.hidden_size, V = cfg.vocab_size, L = cfg.num_hidden_layers;
  // What the weights take, checked before anything is allocated.
  size_t need = static_cast<size_t>(V * H * esz_) * (cfg.tie_word_embeddings ? 1 : 2) + static_cast<size_t>(H) * 4;
  int64_t max_w = 0;
  for (int p = 0; p < kNumProj; ++p) {
    const auto [out, in] = proj_shape(cfg, static_cast<Proj>(p));
    max_w = std::max(max_w, out * in);
    const size_t blocks = static_cast<size_t>((out * in + kNf4Block - 1) / kNf4Block);
    need += static_cast<size_t>(L) * (opt_.nf4 ? static_cast<size_t>((out * in + 1) / 2) + blocks + blocks / 256 * 4 + 4
                                               : static_cast<size_t>(out * in * esz_));
  }
  need += static_cast<size_t>(L * 2 * H * 4) + (opt_.nf4 ? static_cast<size_t>(max_w * esz_) : 0);
  size_t free = 0, total = 0;
  cuda::memory_info(free, total);
  if (need > free)
    fail("generation on the GPU: the weights take {} and {} has {} free of {}{}", gib(need), ctx.name(), gib(free),
         gib(total), opt_.nf4 ? "" : "; an NF4 base (--nf4) takes about a quarter");
  weight_bytes_ = need;
  embed_ = cuda::DeviceBuffer(static_cast<size_t>(V * H * esz_));
  final_norm_ = cuda::DeviceBuffer(static_cast<size_t>(H) * 4);
  if (!cfg.tie_word_embeddings) head_ = cuda::DeviceBuffer(static_cast<size_t>(V * H * esz_));
  layers_.resize(static_cast<size_t>(L));
  for (Layer& Ly : layers_) {
    Ly.input_norm = cuda::DeviceBuffer(static_cast<size_t>(H) * 4);
    Ly.post_norm = cuda::DeviceBuffer(static_cast<size_t>(H) * 4);
    for (int p = 0; p < kNumProj; ++p) {
      const auto [out, in] = proj_shape(cfg, static_cast<Proj>(p));
      if (!opt_.nf4) Ly.proj[p] = cuda::DeviceBuffer(static_cast<size_t>(out * in * esz_));
    }
  }
  if (opt_.nf4) {
    wbuf_ = cuda::DeviceBuffer(static_cast<size_t>(max_w * esz_));
    code2_ = cuda::DeviceBuffer(256 * 4);
    code2_.upload(dynamic_map(true).data(), 256 * 4);
  }
  fill(w, seed);
  ctx_.synchronize();
}

void GpuDecoder::upload(const std::vector<float>& v, cuda::DeviceBuffer& dst, bool as_storage) {
  if (!as_storage || dt_ == Storage::F32) return dst.upload(v.data(), v.size() * 4);
  std::vector<uint16_t> h(v.size());
  const bool half = dt_ == Storage::F16;
  for (size_t i = 0; i < h.size(); ++i) h[i] = half ? f32_to_f16(v[i]) : f32_to_bf16(v[i]);
  dst.upload(h.data(), h.size() * 2);
}

void GpuDecoder::fill(const WeightSource* w, uint64_t seed) {
  const int64_t H = cfg_.hidden_size, V = cfg_.vocab_size;
  uint64_t salt = seed * 0x9E3779B97F4A7C15ull;
  auto rnd = [&](cuda::DeviceBuffer& b, int64_t n, bool as_dt, float mean, float std) {
    cuda::fill_normal(ctx_, as_dt ? dt_ : Storage::F32, b.data(), n, ++salt, mean, std);
  };
  if (w) {
    upload(w->embed().data, embed_, true), upload(w->final_norm().data, final_norm_, false);
    if (head_.data()) upload(w->lm_head().data, head_, true);
  } else {
    rnd(embed_, V * H, true, 0.0f, 0.02f), rnd(final_norm_, H, false, 1.0f, 0.0f);
    if (head_.data()) rnd(head_, V * H, true, 0.0f, 0.02f);
  }
  for (int64_t l = 0; l < cfg_.num_hidden_layers; ++l) {
    Layer& Ly = layers_[l];
    if (w)
      upload(w->norm(l, false).data, Ly.input_norm, false), upload(w->norm(l, true).data, Ly.post_norm, false);
    else
      rnd(Ly.input_norm, H, false, 1.0f, 0.0f), rnd(Ly.post_norm, H, false, 1.0f, 0.0f);
    for (int p = 0; p < kNumProj; ++p) {
      const auto [out, in] = proj_shape(cfg_, static_cast<Proj>(p));
      if (!opt_.nf4) {
        if (w)
          upload(w->proj(l, static_cast<Proj>(p)).data, Ly.proj[p], true);
        else
          rnd(Ly.proj[p], out * in, true, 0.0f, 0.02f);
        continue;
      }
      Nf4& q = Ly.q4[p];
      const int64_t blocks = (out * in + kNf4Block - 1) / kNf4Block;
      if (!w) {  // codes uniform over the 16 values: N(0, ~0.02)-like weights
        q.packed = cuda::DeviceBuffer(static_cast<size_t>((out * in + 1) / 2));
        q.absmax_q = cuda::DeviceBuffer(static_cast<size_t>(blocks));
        q.absmax2 = cuda::DeviceBuffer(static_cast<size_t>((blocks + 255) / 256) * 4);
        q.offset = 0.04f;
        cuda::nf4_fill_random(ctx_, q.packed.as<uint8_t>(), q.absmax_q.as<uint8_t>(), q.absmax2.as<float>(), out * in,
                              kNf4Block, ++salt, q.offset);
        continue;
      }
      // As stored when bitsandbytes quantized it; otherwise quantized on the host as it is read.
      Nf4Tensor t;
      if (!w->proj_nf4(l, static_cast<Proj>(p), t)) {
        const Tensor f = w->proj(l, static_cast<Proj>(p));
        t = nf4_quantize(f.data.data(), {out, in}, kNf4Block, true);
      }
      q.blocksize = t.blocksize;
      q.packed = cuda::DeviceBuffer::from(t.packed);
      if (!t.nested) {
        q.absmax_f32 = cuda::DeviceBuffer::from(t.absmax);
        continue;
      }
      q.absmax_q = cuda::DeviceBuffer::from(t.absmax_q);
      q.absmax2 = cuda::DeviceBuffer::from(t.absmax2);
      q.offset = t.offset;
      if (t.code2 != dynamic_map(true)) {
        q.code2 = cuda::DeviceBuffer(256 * 4);
        q.code2.upload(t.code2.data(), 256 * 4);
      }
    }
  }
}

const void* GpuDecoder::weight(int64_t l, int p) {
  const Layer& Ly = layers_[l];
  if (!opt_.nf4) return Ly.proj[p].data();
  const Nf4& q = Ly.q4[p];
  const auto [out, in] = proj_shape(cfg_, static_cast<Proj>(p));
  if (q.absmax_f32.data())
    cuda::nf4_dequantize(ctx_, dt_, q.packed.as<uint8_t>(), q.absmax_f32.as<float>(), out * in, q.blocksize,
                         wbuf_.data());
  else
    cuda::nf4_dequantize(ctx_, dt_, q.packed.as<uint8_t>(), q.absmax_q.as<uint8_t>(), q.absmax2.as<float>(), q.offset,
                         (q.code2.data() ? q.code2 : code2_).as<float>(), out * in, q.blocksize, wbuf_.data());
  return wbuf_.data();
}

const GpuDecoder::Adapter& GpuDecoder::adapter(const LoraParams* a) {
  if (auto it = adapters_.find(a); it != adapters_.end()) return it->second;
  const int64_t L = cfg_.num_hidden_layers;
  if (static_cast<int64_t>(a->layers.size()) != L)
    fail("generation: the adapter has {} layers and the model {}", a->layers.size(), L);
  Adapter d;
  d.scaling = a->spec.scaling();
  d.a.resize(static_cast<size_t>(L)), d.b.resize(static_cast<size_t>(L));
  std::vector<float> flat;
  for (int64_t l = 0; l < L; ++l)
    for (int p = 0; p < kNumProj; ++p) {
      const LoraPair& pr = a->layers[l][p];
      d.a[l][p] = d.b[l][p] = -1;
      if (!pr.active()) continue;
      d.r = std::max(d.r, pr.a.dim(0));
      d.a[l][p] = static_cast<int64_t>(flat.size());
      flat.insert(flat.end(), pr.a.data.begin(), pr.a.data.end());
      d.b[l][p] = static_cast<int64_t>(flat.size());
      flat.insert(flat.end(), pr.b.data.begin(), pr.b.data.end());
    }
  d.flat = cuda::DeviceBuffer(std::max<size_t>(flat.size(), 1) * static_cast<size_t>(esz_));
  upload(flat, d.flat, true);
  max_r_ = std::max(max_r_, d.r);
  return adapters_.emplace(a, std::move(d)).first->second;
}

void GpuDecoder::project(int64_t n, int64_t l, Proj p, const void* x, void* y, bool accumulate) {
  const int pi = static_cast<int>(p);
  const auto [out, in] = proj_shape(cfg_, p);
  const void* W = weight(l, pi);
  if (opt_.gemv && cuda::small_m_linear_supported(dt_, n, in, x, W))
    cuda::small_m_linear(ctx_, dt_, x, W, y, n, in, out, accumulate);
  else
    cuda::gemm(ctx_, n, out, in, 1.0f, {x, dt_, false}, {W, dt_, true}, accumulate ? 1.0f : 0.0f, y, dt_);
  for (const Run& run : runs_) {
    if (!run.adapter || run.adapter->a[l][pi] < 0) continue;
    const Adapter& d = *run.adapter;
    const int64_t r = run.lora->layers[l][pi].a.dim(0), m = run.end - run.begin;
    const char* xb = static_cast<const char*>(x) + run.begin * in * esz_;
    char* yb = static_cast<char*>(y) + run.begin * out * esz_;
    cuda::gemm(ctx_, m, r, in, 1.0f, {xb, dt_, false}, {at(d.flat, d.a[l][pi]), dt_, true}, 0.0f, t_.data(), dt_);
    cuda::gemm(ctx_, m, out, r, d.scaling, {t_.data(), dt_, false}, {at(d.flat, d.b[l][pi]), dt_, true}, 1.0f, yb,
               dt_);
  }
}

void GpuDecoder::reserve(int64_t n, int64_t wanted, int32_t max_pos) {
  const int64_t H = cfg_.hidden_size, I = cfg_.intermediate_size, Q = cfg_.q_dim(), KV = cfg_.kv_dim();
  const int64_t heads = cfg_.num_attention_heads, half = cfg_.head_dim / 2;
  auto dt = [&](int64_t e) { return cuda::DeviceBuffer(static_cast<size_t>(e * esz_)); };
  if (n > rows_cap_) {
    ctx_.synchronize();
    graphs_.clear();  // they hold the old buffers' addresses
    rows_cap_ = std::max(n, 2 * rows_cap_);
    const int64_t c = rows_cap_;
    x_ = dt(c * H), n_ = dt(c * H), q_ = dt(c * Q), k_ = dt(c * KV), v_ = dt(c * KV), att_ = dt(c * Q);
    gate_ = dt(c * I), up_ = dt(c * I);
    rstd_ = cuda::DeviceBuffer(static_cast<size_t>(c) * 4);
    lse_ = cuda::DeviceBuffer(static_cast<size_t>(heads * c) * 4);
    const size_t meta = meta_layout(c, half).bytes;
    meta_ = cuda::DeviceBuffer(meta), meta_host_ = cuda::PinnedBuffer(meta);
    t_cap_ = 0;
  }
  if (n * max_r_ > t_cap_) {
    ctx_.synchronize();
    graphs_.clear();
    t_cap_ = std::max<int64_t>(n * max_r_, 1);
    t_ = dt(t_cap_);
  }
  const int64_t attn = cuda::decode_attention_scratch_floats(n, heads, cfg_.head_dim, max_pos);
  if (attn > attn_cap_) {
    ctx_.synchronize();
    graphs_.clear();
    attn_cap_ = std::max(attn, 2 * attn_cap_);
    attn_scratch_ = cuda::DeviceBuffer(static_cast<size_t>(attn_cap_) * 4);
  }
  if (wanted > wanted_cap_) {
    ctx_.synchronize();
    graphs_.clear();
    wanted_cap_ = std::max(wanted, 2 * wanted_cap_);
    head_in_ = dt(wanted_cap_ * H), head_n_ = dt(wanted_cap_ * H);
    logits_dev_ = cuda::DeviceBuffer(static_cast<size_t>(wanted_cap_ * cfg_.vocab_size) * 4);
    logits_host_ = cuda::PinnedBuffer(static_cast<size_t>(wanted_cap_ * cfg_.vocab_size) * 4);
  }
}

const std::vector<float>& GpuDecoder::forward(const std::vector<DecodeRow>& rows) {
  const int64_t n = static_cast<int64_t>(rows.size());
  const int64_t H = cfg_.hidden_size, KV = cfg_.kv_dim(), I = cfg_.intermediate_size;
  const int64_t d = cfg_.head_dim, heads = cfg_.num_attention_heads, kvh = cfg_.num_key_value_heads;
  const int64_t L = cfg_.num_hidden_layers, V = cfg_.vocab_size, half = d / 2;
  logits_.clear();
  if (n == 0) return logits_;
  FT_CUDA(cudaSetDevice(ctx_.device()));  // as in new_cache
  // Positions, checked before anything is written, so that a refused batch leaves every cache as
  // it was; a batch is a prefill when every sequence in it starts at position 0 with its rows
  // together (then each sequence is one document of a flash attention over the batch).
  std::vector<int32_t> pos(static_cast<size_t>(n)), doc(static_cast<size_t>(n)), sel;
  std::vector<GpuKvCache*> cache(static_cast<size_t>(n));
  std::unordered_map<const KvCache*, int64_t> added;
  bool prefill = true;
  int32_t max_pos = 0, docs = 0;
  for (int64_t r = 0; r < n; ++r) {
    const DecodeRow& row = rows[r];
    if (row.token < 0 || row.token >= V) fail("generation: token id {} is outside the vocabulary of {}", row.token, V);
    cache[r] = dynamic_cast<GpuKvCache*>(row.cache);
    if (!cache[r]) fail("generation: a KV cache of another decoder was given to the GPU decoder");
    const int64_t k = added[row.cache]++;
    const int64_t p = row.cache->length() + k;
    if (p >= row.cache->capacity())
      fail("generation: a sequence reached its planned length of {} tokens", row.cache->capacity());
    pos[r] = static_cast<int32_t>(p), max_pos = std::max(max_pos, pos[r]);
    if (k == 0) ++docs;
    doc[r] = docs - 1;
    prefill = prefill && p == k && (k == 0 || rows[r - 1].cache == row.cache);
    if (row.logits) sel.push_back(static_cast<int32_t>(r));
  }
  // The runs of consecutive rows with one adapter, once for every projection of the batch (each
  // adapter uploaded at its first use).
  runs_.clear();
  for (int64_t b = 0; b < n;) {
    int64_t e = b + 1;
    while (e < n && rows[e].adapter == rows[b].adapter) ++e;
    runs_.push_back({b, e, rows[b].adapter ? &adapter(rows[b].adapter) : nullptr, rows[b].adapter});
    b = e;
  }
  const int64_t wanted = static_cast<int64_t>(sel.size());
  reserve(n, wanted, max_pos);
  // The per-row arrays in one upload.
  ctx_.synchronize();  // the staging buffer is free again
  rope_tables(inv_freq_, pos.data(), n, cos_h_, sin_h_);
  // The per-row arrays written straight into the pinned staging buffer, at meta_layout's places.
  const MetaLayout m = meta_layout(n, half);
  char* hb = meta_host_.as<char>();
  char* db = meta_.as<char>();
  auto* kp = reinterpret_cast<void**>(hb + m.k);
  auto* vp = reinterpret_cast<void**>(hb + m.v);
  auto* cap = reinterpret_cast<int32_t*>(hb + m.cap);
  auto* ids = reinterpret_cast<int32_t*>(hb + m.ids);
  for (int64_t r = 0; r < n; ++r)
    kp[r] = cache[r]->k_.data(), vp[r] = cache[r]->v_.data(), cap[r] = static_cast<int32_t>(cache[r]->capacity()),
    ids[r] = rows[r].token;
  std::memcpy(hb + m.pos, pos.data(), pos.size() * 4);
  std::memcpy(hb + m.doc, doc.data(), doc.size() * 4);
  if (!sel.empty()) std::memcpy(hb + m.sel, sel.data(), sel.size() * 4);
  std::memcpy(hb + m.cos, cos_h_.data(), static_cast<size_t>(n * half) * 4);
  std::memcpy(hb + m.sin, sin_h_.data(), static_cast<size_t>(n * half) * 4);
  cuda::DecodeRows dr{};
  dr.k = reinterpret_cast<void* const*>(db + m.k);
  dr.v = reinterpret_cast<void* const*>(db + m.v);
  dr.cap = reinterpret_cast<const int32_t*>(db + m.cap);
  dr.pos = reinterpret_cast<const int32_t*>(db + m.pos);
  dr.rows = n, dr.max_pos = max_pos;
  const auto* ids_d = reinterpret_cast<const int32_t*>(db + m.ids);
  const auto* doc_d = reinterpret_cast<const int32_t*>(db + m.doc);
  const auto* sel_d = reinterpret_cast<const int32_t*>(db + m.sel);
  const auto* cos_d = reinterpret_cast<const float*>(db + m.cos);
  const auto* sin_d = reinterpret_cast<const float*>(db + m.sin);
  const size_t off = m.bytes;
  FT_ASSERT(off <= meta_.bytes());  // reserve() sized it for at least n rows
  const cuda::AttnShape shape{1, n, heads, kvh, d, 1.0f / std::sqrt(static_cast<float>(d))};
  const bool flash = prefill && dt_ != Storage::F32 && cuda::flash_attention_supported(ctx_, dt_, shape);
  flash_batches_ += flash ? 1 : 0;
  const float eps = static_cast<float>(cfg_.rms_norm_eps);
  // Every launch of the batch, from the upload of its per-row arrays to the download of its logits.
  auto launch = [&] {
    FT_CUDA(cudaMemcpyAsync(meta_.data(), hb, off, cudaMemcpyHostToDevice, ctx_.stream()));
    cuda::embedding_forward(ctx_, dt_, embed_.data(), ids_d, n, H, V, x_.data());
    for (int64_t l = 0; l < L; ++l) {
      const Layer& Ly = layers_[l];
      cuda::rmsnorm_forward(ctx_, dt_, x_.data(), Ly.input_norm.as<float>(), n_.data(), rstd_.as<float>(), n, H, eps);
      project(n, l, Proj::Q, n_.data(), q_.data(), false);
      project(n, l, Proj::K, n_.data(), k_.data(), false);
      project(n, l, Proj::V, n_.data(), v_.data(), false);
      cuda::rope_forward(ctx_, dt_, q_.data(), cos_d, sin_d, n, heads, d);
      cuda::rope_forward(ctx_, dt_, k_.data(), cos_d, sin_d, n, kvh, d);
      cuda::kv_cache_write(ctx_, dt_, dr, l, KV, k_.data(), v_.data());
      if (flash)
        cuda::flash_attention_forward(ctx_, dt_, shape, q_.data(), k_.data(), v_.data(), doc_d, att_.data(),
                                      lse_.as<float>());
      else
        cuda::decode_attention(ctx_, dt_, dr, l, heads, kvh, d, shape.scale, q_.data(), att_.data(),
                               attn_scratch_.as<float>());
      project(n, l, Proj::O, att_.data(), x_.data(), true);  // + residual
      cuda::rmsnorm_forward(ctx_, dt_, x_.data(), Ly.post_norm.as<float>(), n_.data(), rstd_.as<float>(), n, H, eps);
      project(n, l, Proj::Gate, n_.data(), gate_.data(), false);
      project(n, l, Proj::Up, n_.data(), up_.data(), false);
      cuda::swiglu_forward(ctx_, dt_, gate_.data(), up_.data(), gate_.data(), n * I);
      project(n, l, Proj::Down, gate_.data(), x_.data(), true);
    }
    // The final norm and lm_head only for the rows that want logits.
    if (wanted > 0) {
      cuda::gather_row_bytes(ctx_, x_.data(), sel_d, wanted, H * esz_, head_in_.data());
      cuda::rmsnorm_forward(ctx_, dt_, head_in_.data(), final_norm_.as<float>(), head_n_.data(), rstd_.as<float>(),
                            wanted, H, eps);
      const void* head = head_.data() ? head_.data() : embed_.data();
      cuda::gemm(ctx_, wanted, V, H, 1.0f, {head_n_.data(), dt_, false}, {head, dt_, true}, 0.0f, logits_dev_.data(),
                 Storage::F32);
      FT_CUDA(cudaMemcpyAsync(logits_host_.as<float>(), logits_dev_.data(), static_cast<size_t>(wanted * V) * 4,
                              cudaMemcpyDeviceToHost, ctx_.stream()));
    }
  };
  // A decoding batch of a shape seen before runs as one CUDA graph: its launches recorded once
  // and replayed (the per-row arrays are data in device memory, so the positions and caches may
  // change; the shape is the rows, the logits wanted, the key chunks and the adapters' runs).
  // The first batch of a shape runs as launched, so that cuBLASLt has planned its GEMMs (host
  // work that must not happen inside a capture) before the second records it.
  if (!opt_.graphs || flash) return launch(), finish(rows, wanted);
  std::vector<int64_t> key = {n, wanted, (max_pos + cuda::kDecodeChunk) / cuda::kDecodeChunk};
  for (const Run& run : runs_)
    key.push_back(static_cast<int64_t>(reinterpret_cast<intptr_t>(run.lora))), key.push_back(run.end - run.begin);
  auto it = graphs_.find(key);
  if (it == graphs_.end()) {
    if (graphs_.size() >= 64) graphs_.clear();  // shapes of other batch sizes and adapter mixes
    graphs_.emplace(key, nullptr);
    return launch(), finish(rows, wanted);
  }
  if (!it->second) {
    cudaGraph_t g = nullptr;
    FT_CUDA(cudaStreamBeginCapture(ctx_.stream(), cudaStreamCaptureModeThreadLocal));
    try {
      launch();
    } catch (...) {
      cudaStreamEndCapture(ctx_.stream(), &g);
      if (g) cudaGraphDestroy(g);
      throw;
    }
    FT_CUDA(cudaStreamEndCapture(ctx_.stream(), &g));
    cudaGraphExec_t exec = nullptr;
    const cudaError_t err = cudaGraphInstantiate(&exec, g, 0);
    cudaGraphDestroy(g);
    FT_CUDA(err);
    it->second = std::shared_ptr<void>(exec, [](void* x) { cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(x)); });
    ++graph_captures_;
  }
  FT_CUDA(cudaGraphLaunch(static_cast<cudaGraphExec_t>(it->second.get()), ctx_.stream()));
  ++graph_launches_;
  return finish(rows, wanted);
}

const std::vector<float>& GpuDecoder::finish(const std::vector<DecodeRow>& rows, int64_t wanted) {
  ctx_.synchronize();
  for (const DecodeRow& r : rows) r.cache->advance(1);
  logits_.assign(logits_host_.as<float>(), logits_host_.as<float>() + wanted * cfg_.vocab_size);
  return logits_;
}

}  // namespace ftune

// LlamaGpu: the CPU model's forward and backward (model/block.cpp, model/llama.cpp) on the GPU:
// here the buffers, weights, adapter and optimizer state and the step calls; the per-layer math in
// gpu/llama_gpu_layers.cpp.
// Data flow per layer, with dt the activation storage (bf16, fp16 or fp32):
//   x -> rmsnorm -> n1 -> q,k,v (+LoRA) -> rope -> attention -> att -> o (+LoRA) + x = h
//   h -> rmsnorm -> n2 -> gate, up (+LoRA) -> swiglu -> act -> down (+LoRA) + h = y
// Residual adds ride in the GEMM epilogue (C = the residual, D = the output). The backward keeps
// the residual-stream gradient dy in fp32; GEMMs read a dt copy of it.
#include "gpu/llama_gpu.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "core/dtype.h"
#include "core/error.h"
#include "core/host_memory.h"
#include "model/rope.h"
#include "quant/nf4.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/elementwise.h"
#include "ops/cuda/embedding.h"
#include "ops/cuda/flash_attention.h"
#include "ops/cuda/gemm.h"
#include "ops/cuda/nf4.h"

namespace ftune {

namespace {
constexpr cuda::Storage F32 = cuda::Storage::F32;
constexpr int64_t kNf4Block = 64;  // bitsandbytes' default for QLoRA
float* f(const cuda::DeviceBuffer& b) { return b.as<float>(); }
constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

}  // namespace

GpuOptimizer gpu_optimizer(const std::string& name) {
  if (name == "adamw") return GpuOptimizer::AdamW;
  if (name == "adamw_8bit") return GpuOptimizer::AdamW8bit;
  if (name == "paged_adamw_8bit") return GpuOptimizer::PagedAdamW8bit;
  fail("unknown optimizer '{}' (adamw, adamw_8bit, paged_adamw_8bit)", name);
}

cuda::DeviceBuffer LlamaGpu::alloc(size_t bytes) {
  count(bytes);
  return dry_ ? cuda::DeviceBuffer() : cuda::DeviceBuffer(bytes);
}

void LlamaGpu::count(size_t bytes) {
  planned_ += bytes;
  plan_[cat_] += bytes;
}

// fp32 values [n] in the 16-bit storage dt_ (bf16 or fp16), rounded to nearest.
std::vector<uint16_t> LlamaGpu::to_dt16(const float* x, size_t n) const {
  std::vector<uint16_t> h(n);
  const bool half = dt_ == cuda::Storage::F16;
  for (size_t i = 0; i < n; ++i) h[i] = half ? f32_to_f16(x[i]) : f32_to_bf16(x[i]);
  return h;
}

// fp32 from the host into a device buffer of storage dt_ (as_dt) or fp32.
void LlamaGpu::upload(const Tensor& t, cuda::DeviceBuffer& dst, bool as_dt) {
  if (!as_dt || dt_ == F32) return dst.upload(t.data.data(), t.data.size() * 4);
  const std::vector<uint16_t> h = to_dt16(t.data.data(), t.data.size());
  dst.upload(h.data(), h.size() * 2);
}

LlamaGpu::LlamaGpu(cuda::Context& ctx, const LlamaConfig& cfg, const WeightSource* w, const LoraSpec* spec,
                   const GpuModelOptions& opt, uint64_t seed)
    : LlamaGpu(&ctx, ctx.sm_version(), cfg, spec, opt) {
  setup_cudnn();
  // Plan first: a model that cannot fit says so before it allocates anything, with the settings
  // that would fit.
  const size_t need = plan_bytes(opt_);
  size_t free = 0, total = 0;
  cuda::memory_info(free, total);
  if (opt.memory_cap && need > opt.memory_cap) fail("{}", over_cap(need));
  if (need > free) fail("{}", does_not_fit(need, free, total, ctx_->name()));
  // Pinned host memory (offloaded layer inputs, paged optimizer states): cudaHostAlloc of more than
  // the machine has would fail deep inside, or push everything else into swap.
  if (const size_t host = plan_.host_pinned, avail = host_memory_available(); avail && host > avail)
    fail("the step needs {:.2f} GiB of pinned host memory ({:.2f} GiB of it the offloaded layer inputs), but this "
         "machine has {:.2f} GiB available; shorten data.max_seq_len or train.micro_batch_size",
         static_cast<double>(host) / kGiB,
         static_cast<double>(opt_.offload ? offload_host_bytes() : 0) / kGiB,
         static_cast<double>(avail) / kGiB);
  dry_ = false;
  planned_ = 0, plan_ = {};
  allocate();
  fill(w, seed);
  ctx_->synchronize();
}

MemoryPlan LlamaGpu::plan(const LlamaConfig& cfg, const LoraSpec* spec, const GpuModelOptions& opt, int sm) {
  LlamaGpu m(nullptr, sm, cfg, spec, opt);
  m.dry_ = true;
  m.allocate();
  return m.plan_;
}

std::string LlamaGpu::fit_advice(const LlamaConfig& cfg, const LoraSpec* spec, const GpuModelOptions& opt, int sm,
                                 size_t free, size_t total, const std::string& gpu) {
  LlamaGpu m(nullptr, sm, cfg, spec, opt);
  const size_t need = m.plan_bytes(opt);
  return need <= free ? std::string() : m.does_not_fit(need, free, total, gpu);
}

// The layout (parameter table, adapter slots), nothing allocated.
LlamaGpu::LlamaGpu(cuda::Context* ctx, int sm, const LlamaConfig& cfg, const LoraSpec* spec,
                   const GpuModelOptions& opt)
    : ctx_(ctx),
      cfg_(cfg),
      spec_(spec ? *spec : LoraSpec{}),
      has_lora_(spec != nullptr),
      opt_(opt),
      dt_(opt.storage),
      esz_(static_cast<size_t>(cuda::storage_bytes(dt_))),
      max_n_(opt.max_batch * opt.max_seq),
      sm_(sm) {
  if (opt.nf4 && dt_ == F32) fail("internal error: NF4 base weights dequantize into bf16 or fp16");
  if (opt.offload && !opt.checkpointing) fail("internal error: activation offload needs checkpointing");
  if (opt.full && (opt.nf4 || spec)) fail("internal error: full fine-tuning trains the base itself (no NF4, no adapter)");
  l0_ = opt.first_layer, l1_ = opt.end_layer < 0 ? cfg.num_hidden_layers : opt.end_layer;
  FT_ASSERT(0 <= l0_ && l0_ < l1_ && l1_ <= cfg.num_hidden_layers && opt.slots >= 1);
  const bool staged = l0_ > 0 || l1_ < cfg.num_hidden_layers || opt.slots > 1;
  if (staged && opt.zero3_world > 0)
    fail("internal error: dist.pipeline with dist.zero 3");
  if (staged && (opt.full || opt.offload))
    fail("dist.pipeline on the GPU trains LoRA and QLoRA in this version, without train.offload_activations (full "
         "fine-tuning pipelines on train.device cpu)");
  slot_key_.assign(static_cast<size_t>(opt.slots), 0);
  if (ctx_) ctx_->set_gemm_tuning(opt.tune_gemms && !opt.deterministic);
  // cuDNN's attention workspace as the plan counts it; a model on a device replaces this in setup_cudnn().
  if (cudnn_eligible()) cudnn_ws_bytes_ = cuda::cudnn_attention_workspace_estimate(biggest_attn());
  if (opt.full) {
    table_ = ParamTable::full(cfg);
    layer_off_.resize(cfg.num_hidden_layers);
    for (const ParamSpec& ps : table_.specs()) {
      switch (ps.role) {
        case ParamRole::Embed: embed_off_ = ps.offset; break;
        case ParamRole::FinalNorm: final_off_ = ps.offset; break;
        case ParamRole::LmHead: head_off_ = ps.offset; break;
        case ParamRole::Proj: layer_off_[ps.layer][ps.proj] = ps.offset; break;
        case ParamRole::InputNorm: layer_off_[ps.layer][kNumProj] = ps.offset; break;
        case ParamRole::PostNorm: layer_off_[ps.layer][kNumProj + 1] = ps.offset; break;
      }
    }
    if (cfg.tie_word_embeddings) head_off_ = embed_off_;  // the lm_head's gradient is the embedding's
  }
  if (opt.zero3_world > 0 && !opt.full) layout_sharded_base();
  if (opt.zero3_world > 0 && opt.full) {
    z3_ = std::make_unique<dist::Zero3Layout>(table_, cfg, opt.zero3_rank, opt.zero3_world);
    for (int64_t u = 0; u < z3_->units(); ++u)
      z_max_piece_ = std::max(z_max_piece_, z3_->unit(u).piece);
    z_max_padded_ = z_max_piece_ * opt.zero3_world;
    for (const dist::Zero3Run& r : z3_->runs())
      if (r.local >= z3_->sharded_numel()) z_norm_local_.emplace_back(r.table, r.local);
  }
  // The adapter's flat layout: per layer and projection, A [r, in] then B [out, r]. The compute
  // copy's, where groups fuse: per layer and group, the A of its adapted members, then their B
  // (otherwise the same as the masters', one run).
  slots_.resize(cfg.num_hidden_layers), cslots_.resize(cfg.num_hidden_layers);
  if (!has_lora_) return;
  for (size_t k = 0; k < kGroups.size(); ++k) {
    GroupPos gp;
    gp.group = static_cast<int>(k);
    for (int q : kGroups[k])
      if (q >= 0 && spec_.targets[q]) {
        if (gp.first < 0) gp.first = q;
        ++gp.g;
      }
    for (int q : kGroups[k])
      if (q >= 0 && spec_.targets[q]) gpos_[q] = gp, ++gp.j;
    if (fused(gp)) widest_group_ = std::max<int64_t>(widest_group_, gp.g);
  }
  for (int64_t l = l0_; l < l1_; ++l)
    for (int p = 0; p < kNumProj; ++p)
      if (spec_.targets[p]) {
        auto [out, in] = proj_shape(cfg, static_cast<Proj>(p));
        slots_[l][p].a = lora_n_, lora_n_ += spec_.r * in;
        slots_[l][p].b = lora_n_, lora_n_ += out * spec_.r;
      }
  int64_t c = 0;
  auto run = [&](int64_t from, int64_t n) {
    if (!copy_runs_.empty() && copy_runs_.back().from + copy_runs_.back().n == from &&
        copy_runs_.back().to + copy_runs_.back().n == c)
      copy_runs_.back().n += n;
    else
      copy_runs_.push_back({from, c, n});
    c += n;
  };
  auto place = [&](int64_t l, const std::array<int, 3>& group) {
    for (int p : group)
      if (p >= 0 && spec_.targets[p])
        cslots_[l][p].a = c, run(slots_[l][p].a, spec_.r * proj_shape(cfg, static_cast<Proj>(p))[1]);
    for (int p : group)
      if (p >= 0 && spec_.targets[p])
        cslots_[l][p].b = c, run(slots_[l][p].b, proj_shape(cfg, static_cast<Proj>(p))[0] * spec_.r);
  };
  for (int64_t l = l0_; l < l1_; ++l)
    if (fuses())
      for (const auto& group : kGroups) place(l, group);
    else  // one projection at a time: the runs merge into one copy of the whole
      for (int p = 0; p < kNumProj; ++p) place(l, {p, -1, -1});
  FT_ASSERT(c == lora_n_);
}

void* LlamaGpu::t_rows(Acts& A, Proj p, int64_t r0, int64_t m) const {
  if (!adapted(static_cast<int>(p))) return nullptr;
  const GroupPos gp = group_pos(static_cast<int>(p));
  const int64_t r = spec_.r;
  const cuda::DeviceBuffer& t = A.t[gp.first];
  return fused(gp) ? dt(t, (r0 * gp.g + gp.j * m) * r) : dt(t, (gp.j * max_n_ + r0) * r);
}

void LlamaGpu::refresh_lora_copy() {
  if (dt_ == F32) return;
  for (const CopyRun& c : copy_runs_)
    cuda::convert(*ctx_, F32, f(lora_p_) + c.from, dt_, dt(lora_c_, c.to), c.n);
}

size_t LlamaGpu::plan_bytes(const GpuModelOptions& o) {
  const GpuModelOptions keep = opt_;
  const int64_t keep_n = max_n_;
  opt_ = o, max_n_ = o.max_batch * o.max_seq;
  dry_ = true, planned_ = 0, plan_ = {};
  allocate();
  const size_t bytes = planned_;
  opt_ = keep, max_n_ = keep_n;
  dry_ = false, planned_ = 0, plan_ = {};
  return bytes;
}

// The one-line error of a model that does not fit, naming its need and the nearest settings that
// would fit (each planned the same way).
std::string LlamaGpu::does_not_fit(size_t need, size_t free, size_t total, const std::string& gpu) {
  constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
  struct Option {
    std::string what;
    GpuModelOptions o;
  };
  std::vector<Option> tries;
  GpuModelOptions o = opt_;
  if (!o.checkpointing) o.checkpointing = true, tries.push_back({"train.gradient_checkpointing: true", o});
  if (!o.offload) o.offload = true, tries.push_back({"+ train.offload_activations: true", o});
  if (o.full) {  // the full fine-tuning optimizers: 8-bit moments, then everything on the host
    if (!o.optimizer_offload && o.optimizer == GpuOptimizer::AdamW)
      o.optimizer = GpuOptimizer::AdamW8bit, tries.push_back({"+ train.optimizer: adamw_8bit", o});
    if (!o.optimizer_offload)
      o.optimizer = GpuOptimizer::AdamW, o.optimizer_offload = true,
      tries.push_back({"+ train.optimizer: adamw, train.optimizer_offload: true", o});
  } else {
    if (o.optimizer != GpuOptimizer::PagedAdamW8bit)
      o.optimizer = GpuOptimizer::PagedAdamW8bit, tries.push_back({"+ train.optimizer: paged_adamw_8bit", o});
    if (!o.nf4 && o.storage != F32) o.nf4 = true, tries.push_back({"+ train.method: qlora", o});
  }
  for (int64_t b = o.max_batch / 2; b >= 1; b /= 2) {
    GpuModelOptions ob = o;
    ob.max_batch = b;
    tries.push_back({fmt::format("+ train.micro_batch_size: {}", b), ob});
  }
  std::string fits;
  for (const Option& t : tries) {
    const size_t bytes = plan_bytes(t.o);
    fits += fmt::format("{}{} ({:.2f} GiB)", fits.empty() ? "" : ", ", t.what, static_cast<double>(bytes) / kGiB);
    if (bytes <= free) break;
  }
  return fmt::format(
      "the model needs {:.2f} GiB of device memory for micro-batches of {} x {} tokens, but {} has {:.2f} GiB free of "
      "{:.2f}; planned with: {}",
      static_cast<double>(need) / kGiB, opt_.max_batch, opt_.max_seq, gpu, static_cast<double>(free) / kGiB,
      static_cast<double>(total) / kGiB, fits.empty() ? "nothing smaller to try" : fits);
}

// The cap's version of does_not_fit: the same nearest settings, planned against the cap.
std::string LlamaGpu::over_cap(size_t need) {
  constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
  const size_t cap = opt_.memory_cap;
  std::string text = does_not_fit(need, cap, cap, ctx_ ? ctx_->name() : "the GPU");
  const std::string from = "planned with: ";
  const size_t at = text.find(from);
  return fmt::format("train.max_memory: the model needs {:.2f} GiB of device memory for micro-batches of {} x {} tokens, "
                     "over the {:.2f} GiB the cap leaves after the CUDA context; {}",
                     static_cast<double>(need) / kGiB, opt_.max_batch, opt_.max_seq, static_cast<double>(cap) / kGiB,
                     at == std::string::npos ? text : text.substr(at));
}

// Every device buffer, sized for the largest micro-batch. With dry_ set, only counts the bytes.
void LlamaGpu::allocate() {
  const int64_t N = max_n_, H = cfg_.hidden_size, I = cfg_.intermediate_size, Q = cfg_.q_dim(), KV = cfg_.kv_dim();
  const int64_t V = cfg_.vocab_size, L = cfg_.num_hidden_layers, r = spec_.r, d2 = cfg_.head_dim / 2;
  cat_ = MemCategory::Weights;
  final_norm_ = alloc(H * 4);
  // the weights themselves on this rank (else pieces, gathered into one unit buffer)
  const bool whole = (!z3_ || opt_.zero_whole_weights) && !base_sharded();
  if (z3_) allocate_zero3();
  if (base_sharded()) allocate_sharded_base();
  if (whole) {  // a pipeline stage: the embedding on the first, the lm_head on the last (tied: the embedding)
    if (first_stage() || (last_stage() && cfg_.tie_word_embeddings)) embed_ = alloc_dt(V * H);
    if (last_stage() && !cfg_.tie_word_embeddings) head_ = alloc_dt(V * H);
  }
  layers_.clear();
  layers_.resize(L);
  int64_t widest_w = 0;  // elements of the largest projection
  for (int64_t l = l0_; l < l1_; ++l) {
    Layer& Ly = layers_[l];
    Ly.input_norm = alloc(H * 4), Ly.post_norm = alloc(H * 4);
    for (int p = 0; p < kNumProj; ++p) {
      auto [out, in] = proj_shape(cfg_, static_cast<Proj>(p));
      widest_w = std::max(widest_w, out * in);
      if (!whole) continue;  // pieces in z_c_, gathered into z_buf_
      if (!opt_.nf4) {
        Ly.proj[p] = alloc_dt(out * in);
        continue;
      }
      const int64_t blocks = (out * in + kNf4Block - 1) / kNf4Block;
      Ly.q4[p].packed = alloc((out * in + 1) / 2), Ly.q4[p].absmax_q = alloc(blocks);
      Ly.q4[p].absmax2 = alloc((blocks + kNf4NestedBlocksize - 1) / kNf4NestedBlocksize * 4);
    }
  }
  if (opt_.nf4) wbuf_ = alloc_dt(widest_w), code2_ = alloc(256 * 4);
  if (lora_n_ > 0) {
    cat_ = MemCategory::Trainable;
    lora_p_ = alloc(lora_n_ * 4);
    if (dt_ != F32) lora_c_ = alloc_dt(lora_n_);
    cat_ = MemCategory::Gradients;
    lora_g_ = alloc(lora_n_ * 4);
    cat_ = MemCategory::Optimizer;
    switch (opt_.optimizer) {
      case GpuOptimizer::AdamW: lora_m_ = alloc(lora_n_ * 4), lora_v_ = alloc(lora_n_ * 4); break;
      // The 8-bit optimizers allocate their own states in fill(); counted here.
      case GpuOptimizer::AdamW8bit: count(DeviceAdamW8bit::device_bytes_for(lora_n_)); break;
      case GpuOptimizer::PagedAdamW8bit:
        count(PagedAdamW8bit::device_bytes_for(lora_n_));
        plan_.host_pinned += Adam8bitLayout{lora_n_, lora_n_ >= kMin8bitSize}.bytes();
        break;
    }
  }
  // Activations: every layer's, or one reused set when checkpointing.
  cat_ = MemCategory::Activations;
  acts_.clear();
  acts_.resize(opt_.checkpointing ? 1 : (l1_ - l0_) * opt_.slots);
  for (Acts& A : acts_) {
    A.n1 = alloc_dt(N * H), A.q = alloc_dt(N * Q), A.k = alloc_dt(N * KV), A.v = alloc_dt(N * KV);
    A.att = alloc_dt(N * Q), A.h = alloc_dt(N * H), A.n2 = alloc_dt(N * H);
    const int64_t NI = mlp_chunked() ? opt_.mlp_chunk : N;  // the MLP's rows at a time
    A.gate = alloc_dt(NI * I), A.up = alloc_dt(NI * I), A.act = alloc_dt(NI * I);
    A.rstd1 = alloc(N * 4), A.rstd2 = alloc(N * 4), A.lse = alloc(N * cfg_.num_attention_heads * 4);
    for (int p = 0; p < kNumProj; ++p)
      if (adapted(p) && group_pos(p).first == p) A.t[p] = alloc_dt(N * r * group_pos(p).g);
  }
  xs_.clear();
  xs_.resize(opt_.offload ? std::min<int64_t>(L + 1, ActivationOffload::kSlots) : (l1_ - l0_ + 1) * opt_.slots);
  for (auto& x : xs_) x = alloc_dt(N * H);
  if (opt_.offload) plan_.host_pinned += offload_host_bytes();
  cat_ = MemCategory::Scratch;
  ids_ = alloc(N * 4), targets_ = alloc(N * 4), doc_ = alloc(N * 4), pos_ = alloc(N * 4);
  cos_tab_ = alloc(opt_.max_seq * d2 * 4), sin_tab_ = alloc(opt_.max_seq * d2 * 4);
  cos_ = alloc(N * d2 * 4), sin_ = alloc(N * d2 * 4);
  chunk_ = std::clamp<int64_t>((int64_t{64} << 20) / (V * static_cast<int64_t>(esz_)), 16, N);
  normed_ = alloc_dt(N * H), dnormed_ = alloc_dt(N * H), logits_ = alloc_dt(chunk_ * V), loss_ = alloc(N * 4);
  final_rstd_ = alloc(N * 4);
  dy_ = alloc(N * H * 4), dn_ = alloc(N * H * 4);
  dyb_ = dt_ == F32 ? cuda::DeviceBuffer() : alloc_dt(N * H);
  datt_ = alloc_dt(N * Q), dq_ = alloc_dt(N * Q), dk_ = alloc_dt(N * KV), dv_ = alloc_dt(N * KV);
  dtb_ = alloc_dt(N * std::max<int64_t>(r, 1) * widest_group_);
  if (widest_group_ > 1) dag_ = alloc(widest_group_ * r * H * 4);
  delta_ = alloc(N * cfg_.num_attention_heads * 4);
  const cuda::AttnShape biggest = biggest_attn();
  attn_scratch_ = use_flash(biggest) ? alloc(static_cast<size_t>(cuda::flash_attention_scratch_floats(biggest, flash_options())) * 4)
                                     : cuda::DeviceBuffer();
  if (cudnn_ws_bytes_) cudnn_ws_ = alloc(cudnn_ws_bytes_);
  if (has_lora_ && spec_.dropout > 0) {
    const int64_t widest = std::max({H, I, Q});
    xd_ = alloc_dt(N * widest), dxd_ = alloc(N * widest * 4);
  }
  norm_acc_ = alloc(8);
  if (dt_ == cuda::Storage::F16) overflow_ = alloc(L * 3 * 4);
  if (opt_.full) allocate_full();
}

// Base weights from the source (tensor by tensor) or random on the device (with full
// fine-tuning the masters too); the adapter and optimizer states zeroed; the RoPE tables.
void LlamaGpu::fill(const WeightSource* w, uint64_t seed) {
  const int64_t L = cfg_.num_hidden_layers, H = cfg_.hidden_size;
  if (opt_.full && !z3_)
    full_opt_ = make_full_optimizer(full_optimizer_kind(), *ctx_, table_.trainable_numel(), compute_slots());
  if (base_sharded()) {
    fill_sharded_base(w, seed);
  } else if (z3_) {
    if (opt_.zero_whole_weights) fill_weights(w, seed);  // the same values fill_zero3 gives the pieces
    fill_zero3(w, seed);
  } else if (opt_.full && w) {  // the masters from the checkpoint, the compute copy from the masters
    fill_masters(*w);
    full_opt_->refresh_compute();
  } else {
    fill_weights(w, seed);
    if (opt_.full) full_opt_->masters_from_compute();
  }
  if (opt_.nf4) code2_.upload(dynamic_map(true).data(), 256 * 4);
  if (opt_.offload)
    offload_ = std::make_unique<ActivationOffload>(*ctx_, L + 1, static_cast<size_t>(max_n_ * H) * esz_);
  if (lora_n_ > 0 && opt_.optimizer == GpuOptimizer::AdamW8bit) adam8_ = std::make_unique<DeviceAdamW8bit>(*ctx_, lora_n_);
  if (lora_n_ > 0 && opt_.optimizer == GpuOptimizer::PagedAdamW8bit)
    paged8_ = std::make_unique<PagedAdamW8bit>(*ctx_, lora_n_);
  for (auto* b : {&lora_p_, &lora_g_, &lora_m_, &lora_v_, &lora_c_, &full_g_, &overflow_})
    if (b->data()) ctx_->zero(b->data(), b->bytes());
  std::vector<int32_t> pos(opt_.max_seq);
  for (int64_t i = 0; i < opt_.max_seq; ++i) pos[i] = static_cast<int32_t>(i);
  std::vector<float> c, s;
  rope_tables(rope_inv_freq(cfg_), pos.data(), opt_.max_seq, c, s);
  cos_tab_.upload(c.data(), c.size() * 4), sin_tab_.upload(s.data(), s.size() * 4);
}

// The weights as the model computes with them: uploaded tensor by tensor, or random.
void LlamaGpu::fill_weights(const WeightSource* w, uint64_t seed) {
  const int64_t H = cfg_.hidden_size, V = cfg_.vocab_size;
  uint64_t salt = seed * 0x9E3779B97F4A7C15ull;
  auto rnd = [&](cuda::DeviceBuffer& b, int64_t n, bool as_dt, float mean, float std) {
    cuda::fill_normal(*ctx_, as_dt ? dt_ : F32, b.data(), n, ++salt, mean, std);
  };
  // (a pipeline stage holds some of them: embed_ and head_ are allocated where they are used)
  if (w) {
    if (embed_.data()) upload(w->embed(), embed_, true);
    upload(w->final_norm(), final_norm_, false);
    if (head_.data()) upload(w->lm_head(), head_, true);
  } else {
    if (embed_.data()) rnd(embed_, V * H, true, 0.0f, 0.02f);
    rnd(final_norm_, H, false, 1.0f, 0.0f);
    if (head_.data()) rnd(head_, V * H, true, 0.0f, 0.02f);
  }
  for (int64_t l = l0_; l < l1_; ++l) {
    Layer& Ly = layers_[l];
    if (w) {
      upload(w->norm(l, false), Ly.input_norm, false), upload(w->norm(l, true), Ly.post_norm, false);
    } else {
      rnd(Ly.input_norm, H, false, 1.0f, 0.0f), rnd(Ly.post_norm, H, false, 1.0f, 0.0f);
    }
    for (int p = 0; p < kNumProj; ++p) {
      auto [out, in] = proj_shape(cfg_, static_cast<Proj>(p));
      if (!opt_.nf4) {
        if (w)
          upload(w->proj(l, static_cast<Proj>(p)), Ly.proj[p], true);
        else
          rnd(Ly.proj[p], out * in, true, 0.0f, 0.02f);
        continue;
      }
      Nf4Weight& q = Ly.q4[p];
      if (!w) {  // codes uniform over the 16 values: N(0, ~0.02)-like weights
        q.offset = 0.04f;
        cuda::nf4_fill_random(*ctx_, q.packed.as<uint8_t>(), q.absmax_q.as<uint8_t>(), q.absmax2.as<float>(), out * in,
                              kNf4Block, ++salt, q.offset);
        continue;
      }
      // A weight bitsandbytes already quantized is taken as stored; any other is quantized on the
      // host as it is read, so host memory holds one projection at a time.
      Nf4Tensor n4;
      if (!w->proj_nf4(l, static_cast<Proj>(p), n4)) {
        const Tensor t = w->proj(l, static_cast<Proj>(p));
        n4 = nf4_quantize(t.data.data(), {out, in}, kNf4Block, true);
      }
      upload_nf4(q, n4);
    }
  }
}

void LlamaGpu::set_lora(const LoraParams& lora) {
  FT_ASSERT(has_lora_);
  std::vector<float> flat(lora_n_);
  for (int64_t l = l0_; l < l1_; ++l)
    for (int p = 0; p < kNumProj; ++p)
      if (adapted(p)) {
        const LoraPair& pr = lora.layers[l][p];
        FT_ASSERT(pr.active());
        std::copy(pr.a.data.begin(), pr.a.data.end(), flat.begin() + slots_[l][p].a);
        std::copy(pr.b.data.begin(), pr.b.data.end(), flat.begin() + slots_[l][p].b);
      }
  ctx_->synchronize();
  lora_p_.upload(flat.data(), flat.size() * 4);
  refresh_lora_copy();
}

void LlamaGpu::get_lora(LoraParams& lora) const {
  ctx_->synchronize();
  const auto flat = lora_p_.to_host<float>(lora_n_);
  for (int64_t l = l0_; l < l1_; ++l)
    for (int p = 0; p < kNumProj; ++p)
      if (adapted(p)) {
        LoraPair& pr = lora.layers[l][p];
        std::copy_n(flat.begin() + slots_[l][p].a, pr.a.numel(), pr.a.data.begin());
        std::copy_n(flat.begin() + slots_[l][p].b, pr.b.numel(), pr.b.data.begin());
      }
}

// The adapter's state in its flat device layout (names prefixed gpu., since the CPU backend keeps
// another layout), or the full fine-tuning optimizer's.
void LlamaGpu::save_state(StateDict& out) const {
  if (opt_.full) return full_opt_->save(out);
  ctx_->synchronize();
  out.f32["gpu.lora.p"] = lora_p_.to_host<float>(lora_n_);
  if (adam8_ || paged8_) {
    save_adam8bit(adam8_ ? adam8_->to_host() : paged8_->to_host(), "gpu.adam8.", out);
  } else {
    out.f32["gpu.adam.m"] = lora_m_.to_host<float>(lora_n_), out.f32["gpu.adam.v"] = lora_v_.to_host<float>(lora_n_);
  }
  out.ints["gpu.adam.t"] = adam_t_;
}

void LlamaGpu::load_state(const StateDict& in) {
  if (opt_.full) {
    full_opt_->load(in);
    z_held_ = -1;
    if (z3_ && opt_.zero_whole_weights) publish_pieces();
    return;
  }
  ctx_->synchronize();
  lora_p_.upload(in.f32_of("gpu.lora.p", lora_n_).data(), lora_n_ * 4);
  if (adam8_ || paged8_) {
    Adam8bitState st(lora_n_);
    load_adam8bit(st, "gpu.adam8.", in);
    if (adam8_) adam8_->load(st);
    if (paged8_) paged8_->load(st);
  } else {
    lora_m_.upload(in.f32_of("gpu.adam.m", lora_n_).data(), lora_n_ * 4);
    lora_v_.upload(in.f32_of("gpu.adam.v", lora_n_).data(), lora_n_ * 4);
  }
  adam_t_ = in.int_of("gpu.adam.t");
  refresh_lora_copy();
  ctx_->synchronize();
}

std::string LlamaGpu::optimizer_description() const {
  if (opt_.full) return full_opt_->describe();
  return adam8_    ? "8-bit AdamW moments on the device"
         : paged8_ ? "paged 8-bit AdamW moments in pinned host memory"
                   : "fp32 AdamW moments on the device";
}

void LlamaGpu::reduce_gradients(const std::function<void(float*, size_t)>& reduce) {
  const auto [g, n] = gradient_buffer();
  if (!n) return;
  ctx_->synchronize();
  std::vector<float> host(n);
  FT_CUDA(cudaMemcpy(host.data(), g, n * 4, cudaMemcpyDeviceToHost));
  reduce(host.data(), n);
  // On the compute stream, so that the optimizer's kernels wait for it (a pageable cudaMemcpy may
  // return before its DMA lands, and the context's streams do not wait for the legacy one).
  FT_CUDA(cudaMemcpyAsync(g, host.data(), n * 4, cudaMemcpyHostToDevice, ctx_->stream()));
  ctx_->synchronize();  // `host` goes away on return
}

std::pair<float*, size_t> LlamaGpu::gradient_buffer() const {
  if (z3_)  // the norms' gradients: the pieces were reduce-scattered in the backward
    return {full_g_.as<float>() + z3_->sharded_numel(), static_cast<size_t>(z3_->norm_numel())};
  if (opt_.full) return {full_g_.as<float>(), static_cast<size_t>(table_.trainable_numel())};
  return {lora_g_.as<float>(), static_cast<size_t>(lora_n_)};
}

void LlamaGpu::zero_grads() {
  if (overflow_.data()) ctx_->zero(overflow_.data(), overflow_.bytes());  // the counts cover one step's forwards
  if (lora_n_) ctx_->zero(lora_g_.data(), lora_n_ * 4);
  if (opt_.full) ctx_->zero(full_g_.data(), full_g_.bytes());
}

void LlamaGpu::add_grads_to(LoraParams& grads) const {
  ctx_->synchronize();
  const auto flat = lora_g_.to_host<float>(lora_n_);
  for (int64_t l = l0_; l < l1_; ++l)
    for (int p = 0; p < kNumProj; ++p)
      if (adapted(p)) {
        LoraPair& g = grads.layers[l][p];
        for (int64_t i = 0; i < g.a.numel(); ++i) g.a.data[i] += flat[slots_[l][p].a + i];
        for (int64_t i = 0; i < g.b.numel(); ++i) g.b.data[i] += flat[slots_[l][p].b + i];
      }
}

double LlamaGpu::grad_norm() const {
  if (z3_) return zero3_grad_norm();
  const int64_t n = opt_.full ? table_.trainable_numel() : lora_n_;
  if (!n) return 0.0;
  ctx_->zero(norm_acc_.data(), 8);
  cuda::sum_squares(*ctx_, f(opt_.full ? full_g_ : lora_g_), n, norm_acc_.as<double>());
  ctx_->synchronize();
  return std::sqrt(norm_acc_.to_host<double>(1)[0]);
}

void LlamaGpu::optimizer_step(const cuda::AdamWStep& s, float grad_coef) {
  if (opt_.full) {
    cuda::AdamWStep st = s;
    st.grad_coef = grad_coef;
    full_opt_->step(st, f(full_g_));
    z_held_ = -1;  // the pieces changed
    if (z3_ && opt_.zero_whole_weights) publish_pieces();
    return;
  }
  if (!lora_n_) return;
  adam_t_ = s.t;
  if (adam8_ || paged8_) {  // bitsandbytes' AdamW8bit: decay applied after the step
    const AdamW8bitStep st{s.lr, s.beta1, s.beta2, s.eps, s.weight_decay, s.t, grad_coef};
    if (adam8_) adam8_->step(st, f(lora_p_), f(lora_g_));
    if (paged8_) paged8_->step(st, f(lora_p_), f(lora_g_));
  } else {
    cuda::AdamWStep st = s;
    st.grad_coef = grad_coef;
    cuda::adamw_update(*ctx_, st, f(lora_p_), f(lora_g_), f(lora_m_), f(lora_v_), lora_n_);
  }
  refresh_lora_copy();
}

void LlamaGpu::prepare(const Batch& b, bool embed) {
  if (b.n() > max_n_ || b.seq > opt_.max_seq)
    fail("internal error: batch of {}x{} tokens exceeds the planned {}x{}", b.batch, b.seq, opt_.max_batch,
         opt_.max_seq);
  n_ = b.n(), batch_ = b.batch, seq_ = b.seq;
  for (int64_t i = 0; i < n_; ++i)
    if (b.pos[i] < 0 || b.pos[i] >= opt_.max_seq) fail("internal error: position {} out of range", b.pos[i]);
  ctx_->synchronize();  // the uploads below are outside the stream
  ids_.upload(b.ids.data(), n_ * 4);
  targets_.upload(b.targets.data(), n_ * 4);
  pos_.upload(b.pos.data(), n_ * 4);
  // Document ids matter only where a row holds two documents: rows of one document each are plain
  // causal attention (which cuDNN's fused kernels can take).
  has_doc_ = false;
  if (!b.doc.empty())
    for (int64_t i = 1; i < n_ && !has_doc_; ++i) has_doc_ = i % b.seq != 0 && b.doc[i] != b.doc[i - 1];
  if (has_doc_) doc_.upload(b.doc.data(), n_ * 4);
  choose_attention();
  const int64_t d2 = cfg_.head_dim / 2;
  cuda::gather_rows(*ctx_, f(cos_tab_), pos_.as<int32_t>(), n_, d2, f(cos_));
  cuda::gather_rows(*ctx_, f(sin_tab_), pos_.as<int32_t>(), n_, d2, f(sin_));
  if (opt_.full) prepare_full(b);
  if (!embed || !first_stage()) return;  // the previous stage's output is the input
  if (offload_) offload_->before_write(0);
  cuda::embedding_forward(*ctx_, dt_, embed_w(), ids_.as<int32_t>(), n_, cfg_.hidden_size, cfg_.vocab_size, xbuf(0));
  if (offload_) offload_->after_write(0, xbuf(0), x_bytes());
}

// Device copies of an NF4 weight; the buffers planned for blocks of 64 with nesting are replaced
// when a file stored another layout.
void LlamaGpu::upload_nf4(Nf4Weight& q, const Nf4Tensor& t) {
  q.blocksize = t.blocksize;
  q.packed.upload(t.packed.data(), t.packed.size());
  if (!t.nested) {
    q.absmax_q = cuda::DeviceBuffer(), q.absmax2 = cuda::DeviceBuffer();
    q.absmax_f32 = alloc(t.absmax.size() * 4);
    q.absmax_f32.upload(t.absmax.data(), t.absmax.size() * 4);
    return;
  }
  if (q.absmax_q.bytes() != t.absmax_q.size()) q.absmax_q = alloc(t.absmax_q.size());
  if (q.absmax2.bytes() != t.absmax2.size() * 4) q.absmax2 = alloc(t.absmax2.size() * 4);
  q.absmax_q.upload(t.absmax_q.data(), t.absmax_q.size());
  q.absmax2.upload(t.absmax2.data(), t.absmax2.size() * 4);
  q.offset = t.offset;
  if (t.code2 != dynamic_map(true)) {
    q.code2 = alloc(256 * 4);
    q.code2.upload(t.code2.data(), 256 * 4);
  }
}

const void* LlamaGpu::weight(int64_t l, int p) {
  if (base_sharded()) return sharded_weight(l, p);
  if (!opt_.nf4) return proj_w(l, p);
  const Nf4Weight& q = layers_[l].q4[p];
  auto [out, in] = proj_shape(cfg_, static_cast<Proj>(p));
  if (q.absmax_f32.data())
    cuda::nf4_dequantize(*ctx_, dt_, q.packed.as<uint8_t>(), q.absmax_f32.as<float>(), out * in, q.blocksize,
                         wbuf_.data());
  else
    cuda::nf4_dequantize(*ctx_, dt_, q.packed.as<uint8_t>(), q.absmax_q.as<uint8_t>(), q.absmax2.as<float>(), q.offset,
                         (q.code2.data() ? q.code2 : code2_).as<float>(), out * in, q.blocksize, wbuf_.data());
  return wbuf_.data();
}

double LlamaGpu::read_loss() {
  ctx_->synchronize();
  const auto losses = loss_.to_host<float>(n_);
  double sum = 0;
  for (float x : losses) sum += x;
  return sum;
}

// Every layer's forward; with offload, each output goes to the host as soon as it is written.
void LlamaGpu::forward_layers() {
  for (int64_t l = l0_; l < l1_; ++l) {
    if (offload_) offload_->before_write(l + 1);
    layer_forward(l, false);
    if (offload_) offload_->after_write(l + 1, xbuf(l + 1), x_bytes());
  }
}

std::pair<double, int64_t> LlamaGpu::forward_backward(const Batch& b, float grad_scale, uint64_t dropout_key) {
  slot_ = 0;
  prepare(b);
  dropout_key_ = dropout_key;
  grad_scale_ = grad_scale;
  forward_layers();
  head(true);
  // With offload the last three inputs are still on the device; each earlier one comes back while
  // the layer above it runs its backward.
  FT_ASSERT(first_stage() && last_stage() && slot_ == 0);
  const int64_t L = cfg_.num_hidden_layers, resident = L + 1 - ActivationOffload::kSlots;
  for (int64_t l = L - 1; l >= 0; --l) {
    if (offload_ && l < resident) offload_->wait(l);
    if (offload_ && l >= 1 && l - 1 < resident) offload_->prefetch(l - 1, xbuf(l - 1), x_bytes());
    if (z3_) z_grads_begin(dist::Zero3Layout::layer_unit(l));
    layer_backward(l);
    if (z3_) z_grads_end(dist::Zero3Layout::layer_unit(l));
  }
  if (z3_) z_grads_begin(0);
  if (opt_.full) embedding_grad();
  if (z3_) z_grads_end(0);
  return {read_loss(), b.count_targets()};
}

std::pair<double, int64_t> LlamaGpu::loss(const Batch& b) {
  FT_ASSERT(first_stage() && last_stage());
  slot_ = 0;
  prepare(b);
  dropout_key_ = 0;
  forward_layers();
  head(false);
  return {read_loss(), b.count_targets()};
}

// A pipeline stage: the layers between a host input and a host output (the transfers are
// synchronous: the stages exchange through host memory).
std::pair<double, int64_t> LlamaGpu::stage_forward(int64_t slot, const Batch& b, const void* in, void* out, bool train,
                                                   float grad_scale, uint64_t dropout_key) {
  FT_ASSERT(slot >= 0 && slot < opt_.slots && (first_stage() || in) && (last_stage() || out));
  slot_ = slot;
  slot_key_[static_cast<size_t>(slot)] = train ? dropout_key : 0;
  prepare(b);
  dropout_key_ = slot_key_[static_cast<size_t>(slot)];
  grad_scale_ = grad_scale;
  // On the compute stream: a plain cudaMemcpy from pageable memory may return before its DMA ends,
  // and the stream's kernels would not wait for it.
  if (!first_stage())
    FT_CUDA(cudaMemcpyAsync(xbuf(l0_), in, x_bytes(), cudaMemcpyHostToDevice, ctx_->stream()));
  forward_layers();
  if (!last_stage()) {
    ctx_->synchronize();
    FT_CUDA(cudaMemcpy(out, xbuf(l1_), x_bytes(), cudaMemcpyDeviceToHost));
    return {0.0, 0};
  }
  FT_ASSERT(!train || opt_.slots == 1);  // the last stage runs each backward right after its forward
  head(train);
  return {read_loss(), b.count_targets()};
}

void LlamaGpu::stage_backward(int64_t slot, const Batch& b, const void* dout, void* din) {
  FT_ASSERT(slot >= 0 && slot < opt_.slots && (last_stage() || dout) && (first_stage() || din));
  slot_ = slot;
  prepare(b, false);  // the micro-batch's tables again; its layer inputs are the slot's
  dropout_key_ = slot_key_[static_cast<size_t>(slot)];
  const size_t g = static_cast<size_t>(n_ * cfg_.hidden_size) * 4;
  if (!last_stage()) {  // (on the compute stream, as the stage input above; on the last stage head() left it)
    FT_CUDA(cudaMemcpyAsync(f(dy_), dout, g, cudaMemcpyHostToDevice, ctx_->stream()));
    if (void* c = dy16()) cuda::convert(*ctx_, F32, dy_.data(), dt_, c, n_ * cfg_.hidden_size);
  }
  for (int64_t l = l1_ - 1; l >= l0_; --l) layer_backward(l);
  if (!first_stage()) {
    ctx_->synchronize();
    FT_CUDA(cudaMemcpy(din, f(dy_), g, cudaMemcpyDeviceToHost));
  }
}

}  // namespace ftune

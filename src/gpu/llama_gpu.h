// The Llama model on one GPU with LoRA or full fine-tuning: the same computation as LlamaCpu, layer by layer, through
// the CUDA ops, with weights and activations in bf16 (or fp32, the exact twin of the CPU model),
// fp32 gradients along the residual stream, and the adapter, its gradients and its AdamW moments
// resident on the device in fp32 (one flat buffer each, so the optimizer step is one launch).
// Every buffer is allocated once, at construction, for the largest micro-batch.
#pragma once
#include <array>
#include <functional>
#include <memory>
#include <string>
#include <cstdint>
#include <utility>
#include <vector>

#include "model/batch.h"
#include "model/llama_config.h"
#include "model/lora.h"
#include "model/weights.h"
#include "ops/cuda/attention.h"
#include "ops/cuda/cudnn_attention.h"
#include "ops/cuda/flash_attention.h"
#include "ops/cuda/adamw.h"
#include "ops/cuda/context.h"
#include "ops/cuda/storage.h"
#include "gpu/activation_offload.h"
#include "gpu/adamw8bit_states.h"
#include "core/state_dict.h"
#include "gpu/full_optimizer.h"
#include "dist/zero3.h"
#include "gpu/zero3_comm.h"
#include "params/param_table.h"
#include "plan/memory_plan.h"

namespace ftune {

enum class GpuOptimizer { AdamW, AdamW8bit, PagedAdamW8bit };
// From train.optimizer's names: adamw, adamw_8bit, paged_adamw_8bit (others fail).
GpuOptimizer gpu_optimizer(const std::string& name);

struct GpuModelOptions {
  int64_t max_batch = 1;  // rows per micro-batch
  int64_t max_seq = 2048;  // tokens per row
  // Weights and activations: bf16; fp32 throughout (the CPU's twin); or fp16 (GPUs without bf16,
  // with loss scaling by the caller).
  cuda::Storage storage = cuda::Storage::BF16;
  bool checkpointing = false;  // keep only each layer's input; recompute the layer in the backward
  bool nf4 = false;  // QLoRA: the seven projections frozen in NF4 (double-quantized, blocks of 64),
                     // dequantized into the storage (bf16, or fp16 on GPUs without bf16) before each GEMM
  GpuOptimizer optimizer = GpuOptimizer::AdamW;  // the adapter's: fp32 moments, 8-bit, or 8-bit paged
  bool offload = false;  // with checkpointing: layer inputs in pinned host memory (3 on the device)
  // With checkpointing: the MLP's intermediate activations (gate, up, SwiGLU) for this many tokens
  // at a time, recomputed chunk by chunk in the backward (0, or >= the tokens: all at once). The
  // MLP works token by token, so this changes only the order of the adapter's gradient sums; it
  // cuts the longest per-token buffers (3 x intermediate_size values) for long sequences.
  int64_t mlp_chunk = 0;
  bool deterministic = false;  // the flash attention backward's dQ in a fixed order (FlashOptions)
  // Attention from cuDNN's fused engines (ops/cuda/cudnn_attention.h) where libcudnn.so.9 loads and
  // has plans for the micro-batch's shape, and the batch has no packed-document ids; ftune's flash
  // kernels otherwise, always with `deterministic`, and when false.
  bool cudnn_attention = true;
  // The adapter's A projections that read one input (q/k/v; gate/up) as one GEMM, forward and
  // backward, where no dropout draws a mask per projection and the storage is 16-bit (off: one GEMM
  // each, for comparison). The fp32 masters, gradients and moments keep one layout either way.
  bool fuse_lora = true;
  // cuBLASLt's candidate algorithms timed on each large GEMM problem's first calls, the fastest kept
  // (ops/cuda/gemm.cu; Context::set_gemm_tuning); never with `deterministic`. Off by default: on an
  // H100 it changed a 7B LoRA step by +0.3% (TinyLlama -0.7%), within run-to-run noise, while the
  // choice it makes can differ run to run; off keeps the heuristic's first choice, bitwise repeatable.
  bool tune_gemms = false;
  // Full fine-tuning: every weight trains. The fp32 gradients live on the device in the parameter
  // table's flat layout (params/param_table.h); the fp32 masters and the moments belong to a
  // FullOptimizer (gpu/full_optimizer.h): on the device (optimizer AdamW or AdamW8bit) or in host
  // memory (optimizer_offload); the dt weights are the compute copy it refreshes after each step.
  bool full = false;
  bool optimizer_offload = false;  // full only: masters and moments on the host, updated by the CPU
  // dist.zero 3, full: this rank keeps its piece of every unit (dist/zero3.h): compute copy,
  // masters, moments and gradients; a unit's weights are all-gathered (set_zero3_comm) into one
  // unit buffer just before they are read, and its gradient reduce-scattered after its backward.
  // With an adapter (FSDP-QLoRA): its piece of every unit of the frozen base, NF4 or the storage
  // type (gpu/llama_sharded_base.cpp), gathered the same way; the adapter stays whole.
  int zero3_world = 0;  // 0: off
  int zero3_rank = 0;
  // dist.zero 1 and 2: the same pieces of gradients, masters and moments, but the weights stay
  // whole on every rank (nothing gathered in the forward): after each step the updated pieces are
  // all-gathered into them.
  bool zero_whole_weights = false;
  // train.max_memory: the bytes the model's buffers may take (the rank's cap less what the process
  // held before the model); 0: only the GPU's free memory limits them.
  size_t memory_cap = 0;
  // dist.pipeline (LoRA and QLoRA): this stage's layers [first_layer, end_layer) (-1: to the last),
  // with the embedding on the stage of layer 0 and norm, lm_head and loss on the stage of the last;
  // `slots` micro-batches in flight, each with its own layer inputs (and activations without
  // checkpointing). Only the stage's weights and adapter are on the device.
  int64_t first_layer = 0, end_layer = -1;
  int64_t slots = 1;
};

class LlamaGpu {
 public:
  // Base weights come tensor by tensor from `w`; null: random weights generated on the device
  // (N(0, 0.02), norms 1) from `seed`, so benchmarks need no checkpoint. `spec` null: no adapter.
  // Fails, before allocating anything, when the planned buffers exceed the device's free memory.
  LlamaGpu(cuda::Context& ctx, const LlamaConfig& cfg, const WeightSource* w, const LoraSpec* spec,
           const GpuModelOptions& opt, uint64_t seed = 0);

  // The adapter from the host (fp32 masters) and back.
  void set_lora(const LoraParams& lora);
  void get_lora(LoraParams& lora) const;
  // Forward and backward of one micro-batch; LoRA gradients scaled by grad_scale accumulate on
  // the device until zero_grads(). `dropout_key` != 0 turns LoRA dropout on, with the CPU model's
  // masks. Returns the summed loss and the number of targets.
  std::pair<double, int64_t> forward_backward(const Batch& b, float grad_scale, uint64_t dropout_key = 0);
  // Loss only.
  std::pair<double, int64_t> loss(const Batch& b);
  // Pipeline stage calls (host buffers; the hidden state in the storage type, its gradient in fp32):
  // micro-batch b in activation `slot` through this stage's layers. `in` is the previous stage's
  // output (nullptr on the first stage); `out` receives this stage's (nullptr on the last, which
  // computes the loss, and when `train` the head's backward). stage_backward takes the gradient of
  // the output (nullptr on the last stage) and writes that of the input (nullptr on the first).
  std::pair<double, int64_t> stage_forward(int64_t slot, const Batch& b, const void* in, void* out, bool train,
                                           float grad_scale, uint64_t dropout_key);
  void stage_backward(int64_t slot, const Batch& b, const void* dout, void* din);
  size_t stage_act_bytes(const Batch& b) const { return static_cast<size_t>(b.n() * cfg_.hidden_size) * esz_; }
  size_t stage_grad_bytes(const Batch& b) const { return static_cast<size_t>(b.n() * cfg_.hidden_size) * 4; }
  bool first_stage() const { return l0_ == 0; }
  bool last_stage() const { return l1_ == cfg_.num_hidden_layers; }
  void zero_grads();
  // fp16: where the forwards since zero_grads() first overflowed (a layer's attention residual, SwiGLU product or
  // output went past 65504 to inf/NaN), as one line naming the layer; "" when none did or in bf16/fp32.
  std::string forward_overflow() const;
  // Which kernels the last micro-batch's attention ran on: "cuDNN 9.x.y fused" or "ftune flash"
  // (or "ftune reference" for fp32), and why cuDNN was not used when it was asked for and is not.
  std::string attention_kernels() const { return attn_kernels_; }
  // The accumulated gradients (adapter or full) through `reduce` on the host, then back: the
  // host-staged gradient all-reduce of data parallelism.
  void reduce_gradients(const std::function<void(float*, size_t)>& reduce);
  // The same buffer on the device (NCCL sums it in place on the compute stream).
  std::pair<float*, size_t> gradient_buffer() const;
  void add_grads_to(LoraParams& grads) const;  // host copy of the accumulated gradients, added in
  double grad_norm() const;                    // global L2 norm of the accumulated gradients
  // One optimizer update of what trains (the adapter, or every weight with weight decay on the
  // table's decayed tensors only) with the gradients multiplied by grad_coef (clipping, loss-scale
  // removal), then the compute copy refreshed.
  void optimizer_step(const cuda::AdamWStep& s, float grad_coef);
  // What continues the run: the trainable weights and the optimizer's state (checkpoints).
  void save_state(StateDict& out) const;
  void load_state(const StateDict& in);
  std::string optimizer_description() const;

  int64_t lora_parameters() const { return lora_n_; }
  // A pipeline stage: where its adapter starts in the whole model's flat layout (the layers'
  // adapters lie in layer order, all of one size) and that layout's size.
  std::pair<int64_t, int64_t> lora_place() const {
    const int64_t per = lora_n_ / (l1_ - l0_);
    return {per * l0_, per * cfg_.num_hidden_layers};
  }
  // Full fine-tuning: the master weights as host tensors, and the accumulated gradients as one
  // host vector in the table's layout.
  void get_weights(LlamaWeights& w) const;
  std::vector<float> full_grads() const;  // [table().trainable_numel()]
  const ParamTable& table() const { return table_; }
  // ZeRO-3: the layout (null without it), the comm the units go through (before the first forward),
  // the sizes that comm must take, and this rank's fp32 masters [local_numel] on the host.
  const dist::Zero3Layout* zero3() const { return z3_.get(); }
  void set_zero3_comm(Zero3Comm* c) { zcomm_ = c; }
  size_t zero3_max_unit_bytes() const { return static_cast<size_t>(z_max_padded_) * 4; }  // fp32 gradient
  size_t zero3_max_piece() const { return static_cast<size_t>(z_max_piece_); }
  std::vector<float> local_masters() const;
  // A rank with no rows while the others evaluate: the gathers of one forward, nothing computed.
  void zero3_forward_without_rows();
  // dist.zero 3 with an adapter: the frozen base sharded. The bytes of the largest gathered unit,
  // and this rank's pieces (one device allocation: ranks sharing a GPU map each other's).
  bool base_sharded() const { return opt_.zero3_world > 0 && !opt_.full; }
  size_t sharded_base_unit_bytes() const { return static_cast<size_t>(sb_max_padded_); }
  std::pair<const void*, size_t> sharded_base_pieces() const { return {sb_pieces_.data(), sb_pieces_.bytes()}; }
  const GpuModelOptions& options() const { return opt_; }
  size_t planned_bytes() const { return planned_; }  // every device buffer the model holds
  const MemoryPlan& memory_plan() const { return plan_; }  // the same, per category, and the host's

  // The memory plan of a model with these options on a GPU of compute capability `sm` (e.g. 90),
  // without a GPU: the very allocation the constructor makes, counted instead of allocated.
  static MemoryPlan plan(const LlamaConfig& cfg, const LoraSpec* spec, const GpuModelOptions& opt, int sm);
  // "" when that plan fits in `free` bytes; otherwise the error the constructor would give, with
  // the nearest settings that fit.
  static std::string fit_advice(const LlamaConfig& cfg, const LoraSpec* spec, const GpuModelOptions& opt, int sm,
                                size_t free, size_t total, const std::string& gpu);

 private:
  struct Nf4Weight {  // one projection in NF4 (quant/nf4.h's Nf4Tensor on the device)
    cuda::DeviceBuffer packed;      // [(out*in+1)/2] two codes a byte
    cuda::DeviceBuffer absmax_q;    // [nblocks] 8-bit block scales (nested)
    cuda::DeviceBuffer absmax2;     // [ceil(nblocks/256)] fp32 scales of the scales (nested)
    cuda::DeviceBuffer absmax_f32;  // [nblocks] fp32 block scales (a file saved without nesting)
    cuda::DeviceBuffer code2;       // [256] fp32: a file's own nested map when it differs from ours
    int64_t blocksize = 64;
    float offset = 0.0f;            // mean block scale (nested)
  };
  void upload_nf4(Nf4Weight& q, const Nf4Tensor& t);
  struct Layer {
    cuda::DeviceBuffer input_norm, post_norm;       // [H] fp32
    std::array<cuda::DeviceBuffer, kNumProj> proj;  // as LayerWeights, storage dt_ (empty with nf4)
    std::array<Nf4Weight, kNumProj> q4;             // with nf4
  };
  struct Acts {  // one layer's saved activations (all layers, or one reused under checkpointing)
    cuda::DeviceBuffer n1, q, k, v, att, h, n2, gate, up, act;  // [N, H|Q|KV|I] storage dt_ (gate, up,
                                                                // act: [mlp_chunk, I] when chunked)
    cuda::DeviceBuffer rstd1, rstd2, lse;                       // [N], [N], [B, heads, T] fp32
    // x A^T of each adapted projection, storage dt_, in the buffer of its group's first adapted
    // member (kGroups): g x [N, r] one after another, or, fused, per MLP chunk of m rows the
    // members' transposes [r, m] one after another ([g r, m]: the fused GEMM's output).
    std::array<cuda::DeviceBuffer, kNumProj> t;
  };
  struct LoraSlot {
    int64_t a = -1, b = -1;  // element offsets of A [r, in] and B [out, r] in a flat buffer
  };
  // The projections that read one input, in call order (-1: none).
  static constexpr std::array<std::array<int, 3>, 4> kGroups{{{0, 1, 2}, {3, -1, -1}, {4, 5, -1}, {6, -1, -1}}};
  struct GroupPos {
    int group = -1;                // p's index in kGroups
    int first = -1, g = 0, j = 0;  // the group's first adapted member, its adapted members, p's index among them
  };
  GroupPos group_pos(int p) const { return gpos_[static_cast<size_t>(p)]; }
  bool fuses() const {  // whether groups of more than one adapted member run as one GEMM
    return has_lora_ && opt_.fuse_lora && dt_ != cuda::Storage::F32 && spec_.dropout == 0;
  }
  bool fused(const GroupPos& gp) const { return fuses() && gp.g > 1; }
  void refresh_lora_copy();  // lora_c_ from lora_p_ (copy_runs_)
  LlamaGpu(cuda::Context* ctx, int sm, const LlamaConfig& cfg, const LoraSpec* spec, const GpuModelOptions& opt);
  cuda::DeviceBuffer alloc(size_t bytes);
  void count(size_t bytes);  // bytes that another object allocates, in the current category
  cuda::DeviceBuffer alloc_dt(int64_t n) { return alloc(static_cast<size_t>(n) * esz_); }
  void allocate();
  size_t plan_bytes(const GpuModelOptions& o);  // what allocate() would take with these options
  std::string does_not_fit(size_t need, size_t free, size_t total, const std::string& gpu);
  std::string over_cap(size_t need);  // the plan exceeds opt_.memory_cap
  void fill(const WeightSource* w, uint64_t seed);
  void upload(const Tensor& t, cuda::DeviceBuffer& dst, bool as_dt);
  char* dt(const cuda::DeviceBuffer& b, int64_t elem_offset = 0) const {
    return b.as<char>() + elem_offset * static_cast<int64_t>(esz_);
  }
  bool adapted(int p) const { return has_lora_ && spec_.targets[p]; }
  const void* weight(int64_t l, int p);  // the projection in dt_, dequantized into wbuf_ when NF4
  // The micro-batch's ids, targets, positions, documents and RoPE tables; with `embed` on the
  // first stage also its embedding into the first layer's input.
  void prepare(const Batch& b, bool embed = true);
  // rows: of x, y, t, dy, dx (-1: the micro-batch's), of which x's first is row r0 of the
  // micro-batch (for the dropout mask).
  void linear_fwd(int64_t l, Proj p, const void* x, const void* residual, void* y, void* t, int64_t rows = -1,
                  int64_t r0 = 0);
  void linear_bwd(int64_t l, Proj p, const void* x, const void* t, const void* dy, void* dx, cuda::Storage dx_type,
                  float beta, int64_t rows = -1, int64_t r0 = 0);
  void layer_forward(int64_t l, bool recompute);
  bool mlp_chunked() const { return opt_.checkpointing && opt_.mlp_chunk > 0 && opt_.mlp_chunk < max_n_; }
  int64_t mlp_rows() const { return mlp_chunked() ? opt_.mlp_chunk : n_; }  // the MLP's rows at a time
  // The adapter's saved x A^T of projection p for rows [r0, r0 + m) (null where p has no adapter):
  // [m, r], or [r, m] when its group is fused.
  void* t_rows(Acts& A, Proj p, int64_t r0, int64_t m) const;
  // Rows [r0, r0 + m) through the MLP: gate, up, SwiGLU (in the chunk buffers) and, unless
  // recomputing, the layer's output.
  void mlp_forward(int64_t l, bool recompute, int64_t r0, int64_t m);
  void layer_backward(int64_t l);
  void attention_fwd(Acts& A);
  void attention_bwd(const Acts& A);
  void head(bool backward);
  double read_loss();
  bool use_flash(const cuda::AttnShape& a) const;
  void choose_attention();  // cudnn_now_ and attn_kernels_ for the micro-batch prepare() set up
  void setup_cudnn();  // cudnn_ and its workspace for the largest micro-batch, before the plan
  bool cudnn_eligible() const;
  cuda::AttnShape biggest_attn() const;  // of max_batch x max_seq
  cuda::FlashOptions flash_options() const {
    cuda::FlashOptions o;
    o.deterministic = opt_.deterministic;
    return o;
  }
  cuda::AttnShape attn_shape() const;  // of the current micro-batch
  std::pair<const void*, const void*> lora_ab(int64_t l, int p) const;
  // The residual gradient as a GEMM operand: dy_ in fp32, else its 16-bit copy dyb_, which every
  // writer of dy_ refreshes (the RMSNorm backwards through dy16(), a stage's upload by a conversion).
  const void* dy_operand() const { return dt_ == cuda::Storage::F32 ? dy_.data() : dyb_.data(); }
  void* dy16() const { return dt_ == cuda::Storage::F32 ? nullptr : dyb_.data(); }
  Acts& acts(int64_t l) { return acts_[opt_.checkpointing ? 0 : slot_ * (l1_ - l0_) + (l - l0_)]; }
  // Pinned host bytes of the offloaded layer inputs (every layer's, and the last output), at max_batch x max_seq.
  size_t offload_host_bytes() const {
    return static_cast<size_t>(cfg_.num_hidden_layers + 1) * static_cast<size_t>(max_n_ * cfg_.hidden_size) * esz_;
  }
  size_t x_bytes() const { return static_cast<size_t>(n_ * cfg_.hidden_size) * esz_; }  // one layer input
  // Layer i's input (i = l1_: the stage's output), of the current slot.
  void* xbuf(int64_t i) const {
    return xs_[offload_ ? i % ActivationOffload::kSlots : slot_ * (l1_ - l0_ + 1) + (i - l0_)].data();
  }
  void forward_layers();
  // Full fine-tuning (gpu/llama_full.cpp).
  void allocate_full();
  void fill_masters(const WeightSource& w);  // the checkpoint's fp32 values into the masters
  std::vector<ComputeSlot> compute_slots() const;  // every trainable tensor's compute copy, in table order
  FullOptimizerKind full_optimizer_kind() const;
  void prepare_full(const Batch& b);         // the embedding-gradient index of the micro-batch
  void embedding_grad();                     // dy_ (the embedding output's gradient) into the table's rows
  void norm_grad(const float* dn, const void* x, const float* rstd, int64_t off);  // dw += of one RMSNorm
  float* grad_at(int64_t off) const;        // the gradient of table element off (ZeRO-3: in the unit's buffer)
  // The weights the layers read: whole buffers, or under ZeRO-3 the gathered unit's.
  const void* embed_w();
  const void* head_w();
  const void* proj_w(int64_t l, int p);
  // ZeRO-3 (gpu/llama_zero3.cpp): unit u's weights into the unit buffer (nothing when they are
  // there); its gradient buffer zeroed, then reduce-scattered into this rank's accumulator.
  void z_gather(int64_t u);
  void z_grads_begin(int64_t u);
  void z_grads_end(int64_t u);
  void allocate_zero3();
  void publish_pieces();  // dist.zero 1/2: every unit's new pieces into the whole weights
  void fill_zero3(const WeightSource* w, uint64_t seed);
  std::vector<ComputeSlot> zero3_slots() const;
  double zero3_grad_norm() const;
  void fill_weights(const WeightSource* w, uint64_t seed);
  // The sharded frozen base (gpu/llama_sharded_base.cpp).
  struct BaseUnit {     // 0: the embedding, 1 + l: layer l's projections, L + 1: the lm_head (empty when tied)
    int64_t bytes = 0;  // the unit's own
    int64_t piece = 0;  // bytes per rank: bytes / world rounded up to 256
    int64_t local = 0;  // where this rank's piece starts in sb_pieces_
  };
  struct BasePlace {  // a projection's parts as byte offsets in its layer's unit (NF4; `w` alone otherwise)
    int64_t w = 0, absmax_q = 0, absmax2 = 0, code2 = 0, offset = 0;
  };
  void layout_sharded_base();
  void allocate_sharded_base();
  void fill_sharded_base(const WeightSource* w, uint64_t seed);
  const char* sb_gather(int64_t u);  // unit u's bytes, gathered into sb_unit_
  const void* sharded_weight(int64_t l, int p);
  void sharded_forward_without_rows();
  void upload_bytes(void* dst, const void* src, size_t n);
  void upload_range(const Tensor& t, char* dst, int64_t lo, int64_t hi);
  std::vector<uint16_t> to_dt16(const float* x, size_t n) const;

  cuda::Context* ctx_;  // null in a plan-only object
  LlamaConfig cfg_;
  LoraSpec spec_;
  bool has_lora_;
  GpuModelOptions opt_;
  cuda::Storage dt_;
  size_t esz_;
  int64_t max_n_;
  int64_t l0_ = 0, l1_ = 0;           // this stage's layers (all of them without a pipeline)
  int64_t slot_ = 0;                  // the micro-batch slot being computed
  std::vector<uint64_t> slot_key_;    // [slots] each slot's dropout key, for its backward
  int sm_ = 0;
  size_t planned_ = 0;
  MemoryPlan plan_;                           // planned_ per category, and the host memory
  MemCategory cat_ = MemCategory::Scratch;    // of the allocations being planned
  bool dry_ = false;  // allocate() only counts
  int64_t n_ = 0, batch_ = 0, seq_ = 0;
  bool has_doc_ = false;
  uint64_t dropout_key_ = 0;
  float grad_scale_ = 0.0f;

  cuda::DeviceBuffer wbuf_, code2_;  // nf4: [max out*in] bf16 dequantized weight, [256] fp32 absmax code
  cuda::DeviceBuffer embed_, final_norm_, head_;  // [V, H] dt, [H] fp32, [V, H] dt (the embedding when tied)
  std::vector<Layer> layers_;
  std::vector<Acts> acts_;
  std::vector<cuda::DeviceBuffer> xs_;  // [slots * (stage layers + 1)] x [N, H] dt: each layer's input,
                                        // then the stage's output (3 rotating slots with offload_)
  std::unique_ptr<ActivationOffload> offload_;
  // The adapter's offsets: in the fp32 masters, gradients and moments (per layer and projection, A
  // then B: the checkpoints' layout), and in the compute copy lora_c_ (per layer and group, the A of
  // its adapted members one after another, [g r, in], then their B), with the runs that map one onto
  // the other.
  std::vector<std::array<LoraSlot, kNumProj>> slots_, cslots_;
  struct CopyRun {
    int64_t from = 0, to = 0, n = 0;  // elements: lora_p_ offset, lora_c_ offset, count
  };
  std::vector<CopyRun> copy_runs_;
  std::array<GroupPos, kNumProj> gpos_{};  // per projection, set with the layout
  int64_t widest_group_ = 1;               // adapted members of the largest fused group (1: none fused)
  int64_t lora_n_ = 0;
  cuda::DeviceBuffer lora_p_, lora_g_, lora_m_, lora_v_;  // [lora_n_] fp32: masters, grads, AdamW moments
  std::unique_ptr<DeviceAdamW8bit> adam8_;                // the moments in 8 bits (instead of lora_m_/v_)
  std::unique_ptr<PagedAdamW8bit> paged8_;                // ... paged to pinned host memory
  cuda::DeviceBuffer lora_c_;                             // [lora_n_] dt: the compute copy (bf16 only)
  int64_t adam_t_ = 0;
  cuda::DeviceBuffer ids_, targets_, doc_, pos_;  // [N] int32
  cuda::DeviceBuffer cos_tab_, sin_tab_;          // [max_seq, d/2] fp32, per position
  cuda::DeviceBuffer cos_, sin_;                  // [N, d/2] fp32, gathered per batch
  cuda::DeviceBuffer normed_, dnormed_, logits_, loss_;  // [N, H] dt x2, [chunk, V] dt, [N] fp32
  cuda::DeviceBuffer final_rstd_;                        // [N] fp32
  cuda::DeviceBuffer dy_, dn_;                           // [N, H] fp32: residual gradient, norm input gradient
  cuda::DeviceBuffer dyb_, datt_, dq_, dk_, dv_;        // [N, H|Q|Q|KV|KV] dt (dyb_: dy_ in 16 bits, not in fp32)
  cuda::DeviceBuffer dtb_;                               // [N, widest_group_ r] dt: s dy B (of a group's members)
  cuda::DeviceBuffer dag_;                               // [widest_group_ r, H] fp32: a fused group's dA (when one fuses)
  cuda::DeviceBuffer delta_, attn_scratch_;              // [B, heads, T] fp32; flash backward fp32 scratch
  std::unique_ptr<cuda::CudnnAttention> cudnn_;          // null: ftune's kernels only
  size_t cudnn_ws_bytes_ = 0;  // its plans' workspace for the largest micro-batch (plan only: the estimate)
  cuda::DeviceBuffer cudnn_ws_;                          // [cudnn_ws_bytes_] bytes
  bool cudnn_now_ = false;                               // this micro-batch's attention on cudnn_
  std::string attn_kernels_;                             // attention_kernels()
  std::string cudnn_note_;                               // why cudnn_ is null though asked for
  cuda::DeviceBuffer xd_, dxd_, norm_acc_;               // dropout: [N, max(H, I, Q)] dt and fp32; [1] f64
  cuda::DeviceBuffer overflow_;                          // fp16: [L, 3] int32 non-finite counts (h, act, output)
  int64_t chunk_ = 0;                                    // lm_head rows per chunk

  // Full fine-tuning.
  ParamTable table_;                                     // every tensor, trainable, flat layout
  cuda::DeviceBuffer full_g_;                            // [P] fp32 gradients
  std::unique_ptr<FullOptimizer> full_opt_;              // the masters and moments
  cuda::DeviceBuffer emb_uniq_, emb_off_, emb_tok_;      // [N], [N + 1], [N] int32: token rows per id
  int64_t emb_n_uniq_ = 0;
  cuda::DeviceBuffer norm_ws_;                           // RMSNorm weight-gradient partial sums
  int64_t embed_off_ = 0, final_off_ = 0, head_off_ = 0; // table offsets (head_off_: embed's when tied)
  std::vector<std::array<int64_t, kNumProj + 2>> layer_off_;  // per layer: 7 projections, input, post norm

  // ZeRO-3 (the layout is set when opt_.zero3_world > 0; full_g_ is then the local range's [local_numel]).
  std::unique_ptr<dist::Zero3Layout> z3_;
  Zero3Comm* zcomm_ = nullptr;
  cuda::DeviceBuffer z_c_;    // [sharded_numel] dt: this rank's pieces of the compute copy (padding zero)
  cuda::DeviceBuffer z_buf_;  // [max piece * W] dt: the gathered unit
  cuda::DeviceBuffer z_g_;    // [max piece * W] fp32: the running unit's gradient
  int64_t z_max_piece_ = 0, z_max_padded_ = 0;
  int64_t z_held_ = -1;       // the unit in z_buf_ (a tied lm_head counts as unit 0)
  int64_t z_grad_unit_ = -1;  // the unit whose gradient z_g_ holds
  std::vector<std::pair<int64_t, int64_t>> z_norm_local_;  // (table offset, local offset) of each norm

  // The sharded frozen base (dist.zero 3 with an adapter; the gathers go through zcomm_).
  std::vector<BaseUnit> sb_units_;             // [L + 2]
  std::array<BasePlace, kNumProj> sb_place_{};  // the same in every layer
  cuda::DeviceBuffer sb_pieces_;  // [sb_local_bytes_] bytes: this rank's piece of every unit
  cuda::DeviceBuffer sb_unit_;    // [sb_max_padded_] bytes: the gathered unit
  int64_t sb_local_bytes_ = 0, sb_max_padded_ = 0;
  int64_t sb_held_ = -1;          // the unit in sb_unit_
};

}  // namespace ftune

// Where a training step runs: the CPU reference model or the GPU model, behind one interface so
// the trainer loop is the same for both. A backend owns the adapter during training, its
// gradients and its optimizer state (on the GPU all of them stay on the device).
#pragma once
#include <functional>
#include <memory>
#include <string>

#include "model/batch.h"
#include "model/llama.h"
#include "model/lora.h"
#include "core/error.h"
#include "dist/communicator.h"
#include "dist/topology.h"
#include "io/checkpoint.h"
#include "ops/cpu/cross_entropy.h"
#include "optim/adamw.h"
#include "params/param_table.h"
#include "recipe/run_plan.h"
#include "train/run_checkpoint.h"

namespace ftune {

struct StepResult {
  double grad_norm = 0.0;  // before clipping (unscaled); not finite when the step was skipped
  bool skipped = false;
};

class TrainBackend {
 public:
  virtual ~TrainBackend() = default;
  virtual std::string name() const = 0;
  // Loss gradients scaled by grad_scale accumulate in the backend until the next step().
  virtual cpu::CrossEntropyResult forward_backward(const Batch& b, float grad_scale, uint64_t dropout_key) = 0;
  virtual cpu::CrossEntropyResult loss(const Batch& b) = 0;
  // Whether forward_backward and loss are collective (ZeRO-3 gathers each unit's weights from every
  // rank as it runs), so that every rank must make the same number of calls.
  virtual bool collective_forward() const { return false; }
  // Under collective_forward: this rank's part in the collectives of one loss() of the other ranks,
  // computing nothing (a rank with no rows left to evaluate).
  virtual void forward_without_rows() { FT_ASSERT(false && "the forward is not collective"); }
  // Pipeline stage (dist.pipeline > 1; BackendOptions::model names the stage's layers): the
  // engine moves each micro-batch through the stages. stage_bytes: the hidden state one stage hands
  // the next for `b` (and its gradient, the same size). stage_forward runs `b` in activation `slot`
  // through this stage: `in` is the previous stage's output (nullptr on the first stage), `out`
  // receives this stage's (nullptr on the last, which computes the loss, and when `train` also its
  // gradient, scaled by grad_scale). stage_backward takes the gradient of the stage's output
  // (nullptr on the last stage), accumulates the weight gradients, and writes the gradient of its
  // input to `din` (nullptr on the first stage). Buffers are host memory.
  virtual size_t stage_bytes(const Batch& b) const {
    FT_ASSERT(false && "not a pipeline stage");
    return 0;
  }
  virtual size_t stage_grad_bytes(const Batch& b) const { return stage_bytes(b); }  // the gradient's, when it differs
  virtual cpu::CrossEntropyResult stage_forward(int64_t slot, const Batch& b, const void* in, void* out, bool train,
                                                float grad_scale, uint64_t dropout_key) {
    FT_ASSERT(false && "not a pipeline stage");
    return {};
  }
  virtual void stage_backward(int64_t slot, const Batch& b, const void* dout, void* din) {
    FT_ASSERT(false && "not a pipeline stage");
  }
  // Clips the accumulated gradients to a global norm of max_norm (0: no clipping), applies one
  // AdamW update at lr and zeroes the gradients. Returns the norm before clipping, and whether
  // fp16 loss scaling skipped the update (the gradients overflowed).
  virtual StepResult step(double lr, double max_norm) = 0;
  // Data parallelism: the accumulated gradients summed over the ranks, in place (before step()).
  virtual void all_reduce_gradients(dist::Communicator& comm) = 0;
  // What trains, as it is now: the adapter (LoRA, QLoRA) or every weight (full fine-tuning).
  virtual void read_adapter(LoraParams& out) const { FT_ASSERT(false && "not a LoRA backend"); }
  virtual void read_weights(LlamaWeights& out) const { FT_ASSERT(false && "not a full fine-tuning backend"); }
  // Full fine-tuning with the weights spread over the ranks (ZeRO-3): the trained weights one tensor
  // at a time, for writing the model without holding it whole. Collective: every rank asks for every
  // tensor, in the same order. Empty when read_weights serves instead.
  virtual std::function<Tensor(const ParamSpec&)> weight_stream() { return {}; }
  // Checkpoints: the state that continues the run exactly (trainable weights, optimizer moments,
  // step counts, loss scaler).
  virtual BackendState save_state() const = 0;
  // Whether save_state is collective (ZeRO: every rank contributes its shard), so every rank must call it.
  virtual bool collective_state() const { return false; }
  virtual void load_state(const BackendState&) = 0;
  // Device memory: what the backend planned (every buffer, allocated once up front) and what the
  // process has in use on the device beyond what it held before the model, in bytes (0 on the CPU).
  virtual size_t planned_bytes() const { return 0; }
  virtual size_t measured_bytes() const { return 0; }
  // The kernels the last micro-batch's attention ran on ("" on the CPU).
  virtual std::string attention_kernels() const { return {}; }
};

struct BackendOptions {
  ModelOptions model;  // micro-batch shape (model.gradient_checkpointing follows plan.checkpointing)
  RunPlan plan;        // method, precision, optimizer, device, offload, AdamW settings
  // Several ranks: where this one sits and the run's store (the GPU backend picks its GPU and, when
  // every rank has one of its own, sums gradients with NCCL; ranks sharing a GPU go through host memory).
  dist::Topology topology;
  dist::Store* store = nullptr;
  double timeout_s = 300.0;
  dist::Communicator* comm = nullptr;  // the ranks' host collectives (ZeRO's sharded optimizer uses them)
  // Pipeline: the stages of this rank's pipeline (rank = stage). The gradient norm is summed over
  // them, and what trains (read_adapter, read_weights, save_state) is put together from them, so
  // those calls are collective (collective_state()). nullptr without a pipeline.
  dist::Communicator* pipe = nullptr;
};

// Pipeline: an adapter holding this stage's layers (zeros elsewhere) becomes the whole adapter,
// summed over the pipeline's stages (x + 0 is exactly x). Collective over `pipe`.
void sum_adapter_over_stages(LoraParams& adapter, dist::Communicator* pipe);

// plan.device: cpu, cuda, or auto (cuda when this build has it and a GPU is present). The base
// weights are read from `ckpt` (the CPU model loads them all; the GPU one uploads tensor by
// tensor). `lora` is the adapter to start from (unused for full fine-tuning).
std::unique_ptr<TrainBackend> make_backend(const LlamaConfig& cfg, const CheckpointReader& ckpt, const LoraParams& lora,
                                           const BackendOptions& opt);

// Full fine-tuning on the CPU under dist.zero 3, with more than one rank (train/cpu_zero3_backend.cpp).
std::unique_ptr<TrainBackend> make_cpu_zero3_backend(const LlamaConfig& cfg, const CheckpointReader& ckpt,
                                                     const BackendOptions& opt);

// Part of the CUDA build only.
std::unique_ptr<TrainBackend> make_gpu_backend(const LlamaConfig& cfg, const CheckpointReader& ckpt,
                                               const LoraParams& lora, const BackendOptions& opt);
std::unique_ptr<TrainBackend> make_gpu_full_backend(const LlamaConfig& cfg, const CheckpointReader& ckpt,
                                                    const BackendOptions& opt);
bool gpu_available();
// Whether plan.device puts the run on the GPU (cuda, or auto with a GPU present).
bool runs_on_gpu(const RunPlan& plan);

}  // namespace ftune

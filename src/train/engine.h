// One optimizer step of a run, the same on every backend: the micro-batches of the step are
// drawn and their trained tokens counted first, so the loss is the mean over every trained token
// of the step (gradient accumulation equals one large batch); forward and backward per
// micro-batch with its own dropout key; then the backend's update (clipping, fp16 loss scaling,
// the optimizer, the refresh of compute copies). A step whose loss or gradient norm is not finite,
// and that loss scaling did not skip, is an error naming the step: the run has diverged.
// Data parallel over W ranks: a step is grad_accum x W micro-batches, drawn by every rank in the
// same order; rank r computes those whose index i has i % W == r (their dropout keys are those of
// index i), the gradients are summed over the ranks before the update, and the loss is normalised
// by the trained tokens of all W x grad_accum micro-batches. So W ranks with grad_accum g compute
// what one rank computes with grad_accum W x g: the same rows, masks and normalisation.
// A pipeline (dist.pipeline P): every rank holds the layers of one stage; the step's micro-batches
// of each pipeline run through its stages in the 1F1B order (dist/pipeline.h), each stage receiving
// the hidden state from the one before and the gradient from the one after; the pipelines are the
// data-parallel replicas (micro-batch i goes to replica i % R) and sum their stages' gradients.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "data/batcher.h"
#include "data/dataset.h"
#include "dist/communicator.h"
#include "dist/pipeline.h"
#include "recipe/run_plan.h"
#include "train/backend.h"

namespace ftune {

struct StepOutcome {
  double loss = 0.0;       // mean over the step's trained tokens
  double grad_norm = 0.0;  // before clipping
  int64_t targets = 0;     // trained tokens of the step
  int64_t tokens = 0;      // input tokens (padding excluded)
  bool skipped = false;    // fp16 overflow: no update
  bool aborted = false;    // stopped between micro-batches (see Engine::step): no update, nothing else valid
};

// Asked between the micro-batches of a step with how many are done and how many the step has: true
// abandons the step (the stop signal's grace period would end before the step does).
using AbortCheck = std::function<bool(int64_t done, int64_t total)>;

// Where a rank sits in a pipelined run: its place, the communicator of its pipeline (rank = stage)
// and that of its stage's replicas (rank = replica; nullptr for a single pipeline).
struct PipelineComms {
  dist::PipelinePlace place;
  dist::Communicator* pipe = nullptr;
  dist::Communicator* data = nullptr;
};

class Engine {
 public:
  // comm: the ranks of a data-parallel run (a single rank when null), or all ranks of a pipelined
  // one, whose groups `pipeline` gives.
  Engine(TrainBackend& backend, const RunPlan& plan, uint64_t seed, dist::Communicator* comm = nullptr,
         const PipelineComms* pipeline = nullptr);
  // Step `step` (0-based) at learning rate lr, with grad_accum micro-batches from `batches`.
  // `abort`, when given, may abandon the step between micro-batches: the backend's weights and
  // optimizer then stay as the previous step left them (only its gradient buffers hold partial sums).
  StepOutcome step(MicroBatcher& batches, int64_t step, double lr, const AbortCheck& abort = {});
  // Whether a stop was asked on any rank (every rank must call it at the same point).
  bool stop_requested(bool here) { return any_rank(here); }
  int rank() const { return comm_->rank(); }
  int world() const { return comm_->world(); }
  // Mean loss over every trained token of `val` (no dropout), in micro-batches of the plan's size
  // (split over the ranks, the sums added).
  double validation_loss(const std::vector<Example>& val, int32_t pad, int64_t pad_multiple);

 private:
  // Whether any rank asks to stop (collective when there are several ranks).
  bool any_rank(bool mine);
  // The pipeline's part of step(): the 1F1B schedule over this stage's micro-batches; returns the
  // sum of the losses (non-zero on the last stage only).
  double run_pipeline(int64_t step, const std::vector<int64_t>& index, float scale);
  // One micro-batch's forward through the pipeline without gradients; its loss on the last stage.
  cpu::CrossEntropyResult pipeline_loss(const Batch& b);

  TrainBackend& backend_;
  RunPlan plan_;
  uint64_t seed_;
  std::unique_ptr<dist::Communicator> single_;  // when no communicator was given
  dist::Communicator* comm_;
  std::vector<Batch> micro_;  // [grad_accum], reused
  bool piped_ = false;
  PipelineComms pipe_;
  std::vector<uint8_t> act_in_, act_out_, grad_in_, grad_out_;  // hidden states and gradients between stages
};

// NaN and infinity as a user reads them (fmt prints "-nan").
std::string shown_number(double v);

}  // namespace ftune

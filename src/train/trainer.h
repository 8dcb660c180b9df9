// `ftune train`: the LoRA training loop on the CPU reference backend.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "recipe/train_config.h"

namespace ftune {

struct StepMetrics {
  int64_t step = 0;        // 1-based optimizer step
  double loss = 0.0;       // mean over the step's trained tokens
  double lr = 0.0;
  double grad_norm = 0.0;  // before clipping
  int64_t tokens = 0;      // input tokens processed in the step (padding excluded)
  double tokens_per_s = 0.0;
  double elapsed_s = 0.0;
  bool skipped = false;    // fp16 loss scaling skipped the update (overflowed gradients)
  int64_t skipped_steps = 0;  // steps skipped so far in the run (this one included)
  double memory_gib = 0.0; // memory in use: the run's device memory on the GPU, the process's resident memory on the CPU
};

struct TrainReport {
  std::vector<StepMetrics> steps;
  int64_t examples = 0;
  int64_t truncated = 0, dropped = 0;
  std::vector<std::pair<int64_t, double>> val_losses;  // (step, validation loss)
  int64_t skipped_steps = 0;  // fp16 steps whose update was skipped (a resumed run's earlier ones included)
  int64_t first_step = 0;     // steps done before this run (a resumed run's checkpoint step)
  bool stopped_early = false; // train.early_stopping_patience ended the run
  bool wrote_outputs = true;  // false on the ranks other than 0 of a distributed run
};

// Runs the whole recipe: validates inputs first (output dir, model, data), trains, and writes the
// adapter, metrics.jsonl and config.yaml into cfg.output_dir, all at once when the run completes
// (they are staged in output_dir/.ftune-partial until then). A non-finite loss or gradient norm
// stops the run with an error naming the step. `on_step` (optional) sees each step.
TrainReport run_training(const TrainConfig& cfg, const std::function<void(const StepMetrics&)>& on_step = {});

}  // namespace ftune

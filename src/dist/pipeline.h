// Pipeline parallelism (dist.pipeline): where a rank sits among dp x pp ranks, how the decoder
// layers are split over the stages, and the 1F1B schedule of one step (PipeDream-Flush, as
// Megatron-LM runs it: each stage warms up with P - 1 - s forwards, then alternates one forward
// and one backward, then drains the backwards), so that at most P - s micro-batches are in flight
// on stage s and the idle share of a step is (P - 1) / (M + P - 1).
#pragma once
#include <cstdint>
#include <vector>

#include "model/llama_config.h"

namespace ftune::dist {

// Consecutive ranks form one pipeline (stage = rank % stages); the pipelines are data-parallel
// replicas of each other (replica = rank / stages).
struct PipelinePlace {
  int stages = 1, stage = 0;
  int replicas = 1, replica = 0;
  int rank_of(int stage_, int replica_) const { return replica_ * stages + stage_; }
};
// Fails with one line when world is not a multiple of stages.
PipelinePlace pipeline_place(int rank, int world, int stages);

// Boundaries [stages + 1] of contiguous layer groups, every stage at least one layer, that make
// the largest stage cost smallest: stage i holds layers [b[i], b[i+1]) and costs the sum of their
// layer_cost, plus first_extra on stage 0 (the embedding) and last_extra on the last (norm, head).
std::vector<int64_t> split_layers(const std::vector<double>& layer_cost, double first_extra, double last_extra,
                                  int stages);
// The split of a Llama model by weight memory as its backend stores it: on the GPU the layers in
// 16 bits, or NF4 codes and scales (about 0.56 bytes a parameter) with `nf4`, and the embedding and
// lm_head in 16 bits; on the CPU everything in fp32 (QLoRA's base dequantized).
std::vector<int64_t> split_llama_layers(const LlamaConfig& cfg, int stages, bool nf4, bool gpu);

// Micro-batches in flight at once on `stage` (the activation slots it needs).
int64_t pipeline_slots(int stages, int stage, int64_t micro_batches);
// The idle share of a 1F1B step: (P - 1) / (M + P - 1).
double pipeline_bubble(int stages, int64_t micro_batches);

// One entry of a stage's schedule: the forward or the backward of micro-batch `micro`.
struct PipeOp {
  bool forward;
  int64_t micro;
  bool operator==(const PipeOp&) const = default;
};
// Stage `stage`'s order of work in one step of `micro_batches` micro-batches.
std::vector<PipeOp> one_f_one_b(int stages, int stage, int64_t micro_batches);

}  // namespace ftune::dist

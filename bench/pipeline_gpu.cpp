// A pipelined QLoRA/LoRA run of a Llama shape on the GPU with random weights (no checkpoint file):
// --stages P processes, one per stage, each holding only its layers (the split of `ftune train`)
// and capped by --max-memory (train.max_memory), run ftune's training step (train/engine.cpp's
// 1F1B schedule, hidden states and gradients through host memory and Gloo), so ranks that share
// one GPU show each stage's memory as P GPUs would hold it. Every rank prints one JSON line: its
// layers, planned and measured device memory (NVML's count for this process, sampled every 2 ms
// from before the model to the end, beyond what the process held before the model), the step time
// and the time its own forward and backward took (the stage's compute, from which a step on P GPUs
// is estimated: every stage computes at once, so a step takes about (M + P - 1) x the slowest
// stage's time per micro-batch).
//   bench_pipeline_gpu --shape llama2-70b --stages 8 [--seq 2048] [--micro-batch 1] [--grad-accum 4]
//                      [--rank 16] [--qlora] [--fp16] [--checkpointing] [--optimizer paged_adamw_8bit]
//                      [--max-memory GIB] [--steps 10] [--warmup 1] [--port 29611]
#include <fmt/format.h>

#include <chrono>
#include <cmath>

#include "core/error.h"
#include "data/batcher.h"
#include "dist/communicator.h"
#include "dist/pipeline.h"
#include "dist/rendezvous.h"
#include "gpu/llama_gpu.h"
#include "gpu/process_memory.h"
#include "lora_bench.h"
#include "rank_processes.h"
#include "model/presets.h"
#include "train/backend.h"
#include "train/engine.h"

namespace ftune {
namespace {

using bench::Clock;
using bench::since;

// One stage's LlamaGpu as a training backend: the stage calls, timed, and the step (the gradient
// norm summed over the stages, clipping at 1, the adapter's optimizer).
class StageBackend final : public TrainBackend {
 public:
  StageBackend(cuda::Context& ctx, LlamaGpu& m, dist::Communicator& pipe) : ctx_(ctx), m_(m), pipe_(pipe) {}
  std::string name() const override { return "bench stage"; }
  cpu::CrossEntropyResult forward_backward(const Batch&, float, uint64_t) override { FT_ASSERT(false); return {}; }
  cpu::CrossEntropyResult loss(const Batch&) override { FT_ASSERT(false); return {}; }
  size_t stage_bytes(const Batch& b) const override { return m_.stage_act_bytes(b); }
  size_t stage_grad_bytes(const Batch& b) const override { return m_.stage_grad_bytes(b); }
  cpu::CrossEntropyResult stage_forward(int64_t slot, const Batch& b, const void* in, void* out, bool train,
                                        float scale, uint64_t key) override {
    const auto t = Clock::now();
    const auto [sum, count] = m_.stage_forward(slot, b, in, out, train, scale, key);
    ctx_.synchronize();
    if (const std::string where = m_.forward_overflow(); !where.empty()) fail("stage {}", where);
    compute_s += since(t);
    return {sum, count};
  }
  void stage_backward(int64_t slot, const Batch& b, const void* dout, void* din) override {
    const auto t = Clock::now();
    m_.stage_backward(slot, b, dout, din);
    ctx_.synchronize();
    compute_s += since(t);
  }
  StepResult step(double lr, double max_norm) override {
    const double norm = dist::norm_over_ranks(m_.grad_norm(), &pipe_);
    m_.optimizer_step({static_cast<float>(lr), 0.9f, 0.999f, 1e-8f, 0.0f, ++t_},
                      static_cast<float>(clip_coefficient(norm, max_norm)));
    m_.zero_grads();
    return {norm, false};
  }
  void all_reduce_gradients(dist::Communicator&) override {}
  BackendState save_state() const override { return {}; }
  void load_state(const BackendState&) override {}
  double compute_s = 0;  // this stage's own forward and backward time

 private:
  cuda::Context& ctx_;
  LlamaGpu& m_;
  dist::Communicator& pipe_;
  int64_t t_ = 0;
};

struct Args : bench::RankArgs {
  bool qlora = false;
};

int run_rank(const Args& a, int r) {
  const LlamaConfig cfg = preset_config(a.shape);
  const bench::RankComm rc = bench::rank_comm(a, r);
  dist::Communicator* comm = rc.comm.get();
  const std::vector<int64_t> b = dist::split_llama_layers(cfg, a.ranks, a.qlora, true);
  cuda::Context ctx;
  ctx.synchronize();
  const size_t before = process_device_memory(ctx.device());
  bench::ProcessPeak peak(ctx.device());
  const LoraSpec spec = bench::all_projections(a.rank, 2.0 * static_cast<double>(a.rank));
  GpuModelOptions mo{a.mb, a.seq, a.fp16 ? cuda::Storage::F16 : cuda::Storage::BF16, a.ckpt, a.qlora,
                     gpu_optimizer(a.optimizer), false};
  mo.first_layer = b[r], mo.end_layer = b[r + 1], mo.slots = dist::pipeline_slots(a.ranks, r, a.accum);
  if (a.max_gib > 0) mo.memory_cap = static_cast<size_t>(a.max_gib * 1073741824.0) - before;
  LlamaGpu model(ctx, cfg, nullptr, &spec, mo, 1);
  bench::set_adapter(model, cfg, spec, 2);
  StageBackend backend(ctx, model, *comm);
  RunPlan plan;
  plan.micro_batch = a.mb, plan.grad_accum = a.accum, plan.pipeline = a.ranks;
  PipelineComms pc{dist::pipeline_place(r, a.ranks, a.ranks), comm, nullptr};
  Engine engine(backend, plan, 7, comm, &pc);
  const std::vector<Example> rows = bench::random_rows(a.seq, cfg.vocab_size);
  MicroBatcher batches(rows, a.mb, false, 7, 0);
  double first = 0, last = 0;
  for (int64_t i = 0; i < a.warmup; ++i) first = engine.step(batches, i, 1e-4).loss;
  backend.compute_s = 0;
  comm->barrier();
  const auto t0 = Clock::now();
  for (int64_t i = 0; i < a.steps; ++i) last = engine.step(batches, a.warmup + i, 1e-4).loss;
  const double secs = since(t0);
  const size_t peak_bytes = peak.stop();
  const double gib = 1073741824.0;
  fmt::print("{{\"bench\": \"pipeline_{}_{}_{}stages_seq{}_mb{}_accum{}\", \"stage\": {}, \"layers\": [{}, {}], "
             "\"planned_gib\": {:.3f}, \"measured_peak_gib\": {:.3f}, \"cap_gib\": {:.1f}, \"step_s\": {:.3f}, "
             "\"stage_compute_s_per_step\": {:.3f}, \"bubble\": {:.4f}, \"loss_first\": {:.4f}, \"loss_last\": {:.4f}, "
             "\"tok_s\": {:.1f}, \"steps\": {}, \"precision\": \"{}\", \"optimizer\": \"{}\"}}\n",
             a.qlora ? "qlora" : "lora", a.shape, a.ranks, a.seq, a.mb, a.accum, r, b[r], b[r + 1],
             static_cast<double>(model.planned_bytes()) / gib, static_cast<double>(peak_bytes - before) / gib, a.max_gib,
             secs / static_cast<double>(a.steps), backend.compute_s / static_cast<double>(a.steps),
             dist::pipeline_bubble(a.ranks, a.accum), first, last,
             static_cast<double>(a.steps * a.accum * a.mb * a.seq) / secs, a.steps, a.fp16 ? "fp16" : "bf16",
             a.optimizer);
  std::fflush(stdout);
  comm->barrier();
  return 0;
}

}  // namespace
}  // namespace ftune

int main(int argc, char** argv) {
  using namespace ftune;
  Args a;
  return bench::rank_main(argc, argv, "bench_pipeline_gpu", a, "--stages",
                         [&](const std::string& s, const std::function<std::string()>&) {
      if (s != "--qlora") return false;
      a.qlora = true;
      return true;
                         },
                         [&](int r) { return run_rank(a, r); });
}

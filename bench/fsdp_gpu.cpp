// FSDP-QLoRA (dist.zero 3 with an adapter) of a Llama shape on the GPU with random weights (no
// checkpoint file): --ranks W processes, each holding 1/W of the frozen base (NF4 codes and scales,
// or bf16 with --lora) and the whole adapter, capped by --max-memory (train.max_memory), run
// ftune's data-parallel training step (train/engine.cpp: micro-batch i on rank i % W, the
// adapter's gradients summed over the ranks through host memory and Gloo); each unit of the base
// is gathered just before it runs (CUDA IPC between ranks that share a GPU, or host memory with
// --no-ipc). Every rank prints one JSON line: planned and measured device memory (NVML's count for
// this process, sampled every 2 ms from before the model to the end, beyond what the process held
// before it), the step time, and its own forward and backward time.
//   bench_fsdp_gpu --shape llama2-70b --ranks 8 [--seq 2048] [--micro-batch 1] [--grad-accum 1]
//                  [--rank 16] [--lora] [--fp16] [--checkpointing] [--optimizer paged_adamw_8bit]
//                  [--max-memory GIB] [--steps 10] [--warmup 1] [--no-ipc] [--port 29621]
#include <fmt/format.h>

#include <chrono>

#include "core/error.h"
#include "data/batcher.h"
#include "dist/communicator.h"
#include "dist/rendezvous.h"
#include "gpu/llama_gpu.h"
#include "gpu/process_memory.h"
#include "gpu/zero3_comm.h"
#include "lora_bench.h"
#include "model/presets.h"
#include "rank_processes.h"
#include "train/backend.h"
#include "train/engine.h"

namespace ftune {
namespace {

using bench::Clock;
using bench::since;

// One rank's LlamaGpu with its sharded base as a data-parallel training backend, timed.
class FsdpBackend final : public TrainBackend {
 public:
  FsdpBackend(cuda::Context& ctx, LlamaGpu& m) : ctx_(ctx), m_(m) {}
  std::string name() const override { return "bench fsdp rank"; }
  cpu::CrossEntropyResult forward_backward(const Batch& b, float scale, uint64_t key) override {
    const auto t = Clock::now();
    const auto [sum, count] = m_.forward_backward(b, scale, key);
    if (const std::string where = m_.forward_overflow(); !where.empty()) fail("{}", where);
    compute_s += since(t);
    return {sum, count};
  }
  cpu::CrossEntropyResult loss(const Batch& b) override {
    const auto [sum, count] = m_.loss(b);
    return {sum, count};
  }
  bool collective_forward() const override { return true; }
  void forward_without_rows() override { m_.zero3_forward_without_rows(); }
  StepResult step(double lr, double max_norm) override {
    const double norm = m_.grad_norm();  // the adapter is whole on every rank, its gradient summed
    m_.optimizer_step({static_cast<float>(lr), 0.9f, 0.999f, 1e-8f, 0.0f, ++t_},
                      static_cast<float>(clip_coefficient(norm, max_norm)));
    m_.zero_grads();
    return {norm, false};
  }
  void all_reduce_gradients(dist::Communicator& comm) override {
    const auto t = Clock::now();
    m_.reduce_gradients([&](float* g, size_t n) { comm.all_reduce_sum(g, n); });
    reduce_s += since(t);
  }
  BackendState save_state() const override { return {}; }
  void load_state(const BackendState&) override {}
  double compute_s = 0;  // this rank's own forwards and backwards
  double reduce_s = 0;   // the adapter's gradient sums

 private:
  cuda::Context& ctx_;
  LlamaGpu& m_;
  int64_t t_ = 0;
};

struct Args : bench::RankArgs {
  bool lora = false, ipc = true;
};

int run_rank(const Args& a, int r) {
  const LlamaConfig cfg = preset_config(a.shape);
  const bench::RankComm rc = bench::rank_comm(a, r);
  dist::Communicator* comm = rc.comm.get();
  cuda::Context ctx;
  ctx.synchronize();
  const size_t before = process_device_memory(ctx.device());
  bench::ProcessPeak peak(ctx.device());
  const LoraSpec spec = bench::all_projections(a.rank, 2.0 * static_cast<double>(a.rank));
  GpuModelOptions mo{a.mb, a.seq, a.fp16 ? cuda::Storage::F16 : cuda::Storage::BF16, a.ckpt, !a.lora,
                     gpu_optimizer(a.optimizer), false};
  mo.zero3_world = a.ranks, mo.zero3_rank = r;
  if (a.max_gib > 0) mo.memory_cap = static_cast<size_t>(a.max_gib * 1073741824.0) - before;
  const auto t_init = Clock::now();
  LlamaGpu model(ctx, cfg, nullptr, &spec, mo, 1);
  bench::set_adapter(model, cfg, spec, 2);
  const auto [pieces, bytes] = model.sharded_base_pieces();
  auto gathers = make_frozen_gather_comm(ctx, *comm, nullptr, pieces, bytes, model.sharded_base_unit_bytes(), a.ipc);
  model.set_zero3_comm(gathers.get());
  const double init_s = since(t_init);
  FsdpBackend backend(ctx, model);
  RunPlan plan;
  plan.micro_batch = a.mb, plan.grad_accum = a.accum;
  Engine engine(backend, plan, 7, comm);
  const std::vector<Example> rows = bench::random_rows(a.seq, cfg.vocab_size);
  MicroBatcher batches(rows, a.mb, false, 7, 0);
  double first = 0, last = 0;
  for (int64_t i = 0; i < a.warmup; ++i) first = engine.step(batches, i, 1e-4).loss;
  backend.compute_s = backend.reduce_s = 0;
  comm->barrier();
  const auto t0 = Clock::now();
  for (int64_t i = 0; i < a.steps; ++i) last = engine.step(batches, a.warmup + i, 1e-4).loss;
  const double secs = since(t0);
  const size_t peak_bytes = peak.stop();
  const double gib = 1073741824.0, steps = static_cast<double>(a.steps);
  fmt::print("{{\"bench\": \"fsdp_{}_{}_{}ranks_seq{}_mb{}_accum{}\", \"rank\": {}, \"gathers\": \"{}\", "
             "\"planned_gib\": {:.3f}, \"measured_peak_gib\": {:.3f}, \"cap_gib\": {:.1f}, \"init_s\": {:.1f}, "
             "\"step_s\": {:.3f}, \"rank_compute_s_per_step\": {:.3f}, \"grad_sum_s_per_step\": {:.3f}, "
             "\"loss_first\": {:.4f}, \"loss_last\": {:.4f}, \"tok_s\": {:.1f}, \"steps\": {}, \"precision\": \"{}\", "
             "\"optimizer\": \"{}\"}}\n",
             a.lora ? "lora" : "qlora", a.shape, a.ranks, a.seq, a.mb, a.accum, r, gathers->transport(),
             static_cast<double>(model.planned_bytes()) / gib, static_cast<double>(peak_bytes - before) / gib, a.max_gib,
             init_s, secs / steps, backend.compute_s / steps, backend.reduce_s / steps, first, last,
             static_cast<double>(a.steps * a.accum * a.ranks * a.mb * a.seq) / secs, a.steps,
             a.fp16 ? "fp16" : "bf16", a.optimizer);
  std::fflush(stdout);
  comm->barrier();  // no rank frees its pieces while another may still read them
  return 0;
}

}  // namespace
}  // namespace ftune

int main(int argc, char** argv) {
  using namespace ftune;
  Args a;
  a.accum = 1, a.port = 29621;
  return bench::rank_main(argc, argv, "bench_fsdp_gpu", a, "--ranks",
                         [&](const std::string& s, const std::function<std::string()>&) {
      if (s == "--lora") a.lora = true;
      else if (s == "--no-ipc") a.ipc = false;
      else return false;
      return true;
                         },
                         [&](int r) { return run_rank(a, r); });
}

// LoRA training throughput of ftune on one GPU: a Llama shape with random bf16 weights generated
// on the device (no checkpoint file), LoRA on all seven projections, AdamW on the device, random
// token ids. After the warmup steps, the timed steps run end to end (forward, backward, gradient
// norm, optimizer) and one JSON line reports tokens/s, model TFLOP/s and device memory, each
// memory figure beyond what the process held just before the model was built (the CUDA context,
// stream and cuBLASLt workspace): ftune_peak_gib is the peak of the device memory in use
// (cudaMemGetInfo total - free) sampled every 1 ms by a background thread over the warmup and
// timed steps (bench/memory_peak.h), so cuBLAS's own allocations and anything short-lived count;
// ftune_end_gib is the memory in use after the run; ftune_planned_gib is every buffer the model
// planned and allocated up front. bench/peer_lora.py samples the peer's device memory the same way
// (its peer_sampled_peak_gib), so the two peaks compare like with like. loss_first is the loss of
// the first step (warmup included), loss_last that of the last timed step.
//   bench_lora_gpu --shape llama2-7b [--seq 2048] [--micro-batch 4] [--rank 16] [--alpha 32]
//                  [--checkpointing] [--fp32 | --fp16] [--qlora] [--steps 10] [--warmup 3] [--gpu-name NAME]
//                  [--max-memory GIB]
// --fp16: fp16 storage (the T4's; no loss scaling here, which changes no time or memory).
// --max-memory: the model's buffers planned within GIB less what the process held before it
// (train.max_memory), so a run that fits a T4 says so.
// --qlora: the projections in NF4 (random codes generated on the device), as `method: qlora`.
// --optimizer adamw|adamw_8bit|paged_adamw_8bit: as train.optimizer. --offload: with
// --checkpointing, layer inputs in pinned host memory (train.offload_activations).
// --mlp-chunk N: the MLP's intermediate buffers for N tokens at a time (default: as `ftune train`
// chooses, 8192 beyond 16384 tokens under checkpointing). --build-only: build the model (every
// buffer of a step is allocated then, as planned) and report its memory, without training: for
// lengths whose step outlasts the time at hand. --deterministic: train.deterministic (the attention
// backward's dQ in a fixed order). --no-cudnn: ftune's flash kernels for attention even where
// cuDNN's fused engines would be used (GpuModelOptions::cudnn_attention); the line names the kernels.
// --no-fuse-lora: one GEMM per adapter A projection instead of one per group that shares an input
// (GpuModelOptions::fuse_lora); the line says which ("lora_a_gemms": "fused" or "separate").
// --tune-gemms: the fastest of cuBLASLt's candidate algorithms timed on the first steps for every
// large GEMM instead of its first heuristic choice (GpuModelOptions::tune_gemms; "gemm_tuning").
#include <fmt/format.h>

#include <chrono>
#include <cstring>
#include <string>

#include "core/error.h"
#include "gpu/llama_gpu.h"
#include "gpu/run_options.h"
#include "lora_bench.h"
#include "memory_peak.h"
#include "model/presets.h"
#include "plan/run_estimate.h"
#include "bench_args.h"


int main(int argc, char** argv) {
  using namespace ftune;
  std::string shape = "llama2-7b", gpu_name, optimizer = "adamw";
  int64_t mlp_chunk = -1;  // -1: as ftune train chooses
  bool build_only = false, deterministic = false, cudnn = true, fuse_lora = true, tune = false;
  int64_t seq = 2048, mb = 4, rank = 16, steps = 10, warmup = 3;
  double alpha = 32;
  bool ckpt = false, fp32 = false, fp16 = false, qlora = false, offload = false;
  double max_gib = 0;
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      auto val = [&] { return bench::flag_value(argc, argv, i); };
      if (a == "--shape") shape = val();
      else if (a == "--seq") seq = std::stoll(val());
      else if (a == "--micro-batch") mb = std::stoll(val());
      else if (a == "--rank") rank = std::stoll(val());
      else if (a == "--alpha") alpha = std::stod(val());
      else if (a == "--steps") steps = std::stoll(val());
      else if (a == "--warmup") warmup = std::stoll(val());
      else if (a == "--gpu-name") gpu_name = val();
      else if (a == "--optimizer") optimizer = val();
      else if (a == "--checkpointing") ckpt = true;
      else if (a == "--fp32") fp32 = true;
      else if (a == "--fp16") fp16 = true;
      else if (a == "--max-memory") max_gib = std::stod(val());
      else if (a == "--qlora") qlora = true;
      else if (a == "--offload") offload = true;
      else if (a == "--mlp-chunk") mlp_chunk = std::stoll(val());
      else if (a == "--build-only") build_only = true;
      else if (a == "--deterministic") deterministic = true;
      else if (a == "--no-cudnn") cudnn = false;
      else if (a == "--no-fuse-lora") fuse_lora = false;
      else if (a == "--tune-gemms") tune = true;
      else fail("unknown argument '{}'", a);
    }
    const LlamaConfig cfg = preset_config(shape);
    cuda::Context ctx;
    if (gpu_name.empty()) gpu_name = ctx.name();
    ctx.synchronize();
    const size_t before = cuda::memory_in_use();
    const LoraSpec spec = bench::all_projections(rank, alpha);
    const GpuOptimizer opt = gpu_optimizer(optimizer);
    GpuModelOptions mo{mb, seq, fp32 ? cuda::Storage::F32 : fp16 ? cuda::Storage::F16 : cuda::Storage::BF16, ckpt, qlora,
                       opt, offload && ckpt};
    if (max_gib > 0) mo.memory_cap = static_cast<size_t>(max_gib * 1073741824.0) - before;
    mo.mlp_chunk = mlp_chunk < 0 ? mlp_chunk_for(ckpt, mb * seq) : mlp_chunk;
    mo.deterministic = deterministic;
    mo.cudnn_attention = cudnn;
    mo.fuse_lora = fuse_lora;
    mo.tune_gemms = tune;
    LlamaGpu model(ctx, cfg, nullptr, &spec, mo, 1);
    bench::set_adapter(model, cfg, spec, 2);
    if (build_only) {
      ctx.synchronize();
      fmt::print("{{\"bench\": \"build_{}_{}_seq{}_mb{}_r{}\", \"planned_gib\": {:.3f}, \"in_use_gib\": {:.3f}, "
                 "\"host_pinned_gib\": {:.2f}, \"mlp_chunk\": {}, \"cap_gib\": {:.1f}}}\n",
                 qlora ? "qlora" : "lora", shape, seq, mb, rank, static_cast<double>(model.planned_bytes()) / 1073741824.0,
                 static_cast<double>(cuda::memory_in_use() - before) / 1073741824.0,
                 static_cast<double>(model.memory_plan().host_pinned) / 1073741824.0, mo.mlp_chunk, max_gib);
      return 0;
    }
    const Batch batch = bench::random_batch(mb, seq, cfg.vocab_size, 3);
    double first = 0, last = 0;
    int64_t t = 0;
    auto step = [&]() {
      const double loss = bench::train_step(model, batch, ++t);
      if (t == 1) first = loss;
      return loss;
    };
    ctx.synchronize();
    bench::MemoryPeakSampler sampler;  // over the warmup and timed steps, as the peer's
    for (int64_t i = 0; i < warmup; ++i) step();
    ctx.synchronize();
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < steps; ++i) last = step();
    ctx.synchronize();
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const size_t peak = sampler.stop();
    const size_t end = cuda::memory_in_use();
    const double tok_s = static_cast<double>(steps * mb * seq) / secs;
    const double tflops = train_flops_per_token(cfg, Method::Lora, model.lora_parameters(), seq) * tok_s / 1e12;
    const double gib = 1024.0 * 1024.0 * 1024.0;
    auto beyond = [&](size_t bytes) { return static_cast<double>(bytes > before ? bytes - before : 0) / gib; };
    fmt::print(
        "{{\"bench\": \"{}_{}_seq{}_mb{}_r{}{}{}\", \"gpu\": \"{}\", \"ftune_tok_s\": {:.1f}, \"ftune_peak_gib\": {:.2f}, "
        "\"ftune_end_gib\": {:.2f}, \"ftune_planned_gib\": {:.2f}, \"ftune_tflops\": {:.1f}, \"loss_first\": {:.4f}, "
        "\"loss_last\": {:.4f}, \"steps\": {}, \"step_s\": {:.2f}, \"mlp_chunk\": {}, \"precision\": \"{}\", \"optimizer\": \"{}\", \"attention\": \"{}\", "
        "\"lora_a_gemms\": \"{}\", \"gemm_tuning\": \"{}\"}}\n",
        qlora ? "qlora" : "lora", shape, seq, mb, rank, ckpt ? (offload ? "_ckpt_offload" : "_ckpt") : "", fp32 ? "_fp32" : fp16 ? "_fp16" : "", gpu_name, tok_s,
        beyond(peak), beyond(end), static_cast<double>(model.planned_bytes()) / gib, tflops, first, last, steps,
        secs / static_cast<double>(steps), mo.mlp_chunk, fp32 ? "fp32" : fp16 ? "fp16" : "bf16", optimizer,
        model.attention_kernels(), fuse_lora && !fp32 ? "fused" : "separate", tune && !deterministic ? "on" : "off");
  } catch (const std::exception& e) {
    fmt::print(stderr, "bench_lora_gpu: {}\n", e.what());
    return 1;
  }
  return 0;
}

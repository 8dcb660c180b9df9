// Full fine-tuning throughput of ftune on one GPU: a Llama shape with random bf16 weights generated
// on the device (no checkpoint file), every weight trained with fp32 masters and AdamW moments on
// the device, random token ids. After the warmup steps, the timed steps run end to end (forward,
// backward with every weight gradient, gradient norm, AdamW, refresh of the bf16 compute copy) and
// one JSON line reports tokens/s, model TFLOP/s and device memory, measured as bench/lora_gpu.cpp
// measures it (the device memory in use sampled every 1 ms, beyond what the process held before the
// model; bench/peer_full.py samples the peer the same way).
// --optimizer adamw_8bit keeps the moments in 8 bits on the device; --optimizer-offload keeps the
// masters and moments in host memory and updates them on the CPU; --grad-accum N sums N
// micro-batches per optimizer step (tokens/s counts every micro-batch). The host's peak resident
// memory (VmHWM) is reported too.
//   bench_full_gpu --shape tinyllama [--seq 2048] [--micro-batch 4] [--grad-accum 1] [--checkpointing]
//                  [--offload] [--optimizer adamw|adamw_8bit] [--optimizer-offload] [--steps 10]
//                  [--warmup 3] [--gpu-name NAME]
#include <fmt/format.h>

#include <chrono>
#include <fstream>
#include <string>

#include "core/error.h"
#include "lora_bench.h"
#include "memory_peak.h"
#include "gpu/llama_gpu.h"
#include "model/presets.h"
#include "plan/run_estimate.h"
#include "bench_args.h"

namespace {


// The process's peak resident host memory in bytes (Linux VmHWM), 0 when unknown.
size_t host_peak_bytes() {
  std::ifstream f("/proc/self/status");
  for (std::string line; std::getline(f, line);)
    if (line.starts_with("VmHWM:")) return static_cast<size_t>(std::stoull(line.substr(6))) * 1024;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace ftune;
  std::string shape = "tinyllama", gpu_name;
  int64_t seq = 2048, mb = 4, steps = 10, warmup = 3, accum = 1;
  bool ckpt = false, offload = false, opt_offload = false;
  std::string optimizer = "adamw";
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      auto val = [&] { return bench::flag_value(argc, argv, i); };
      if (a == "--shape") shape = val();
      else if (a == "--seq") seq = std::stoll(val());
      else if (a == "--micro-batch") mb = std::stoll(val());
      else if (a == "--steps") steps = std::stoll(val());
      else if (a == "--warmup") warmup = std::stoll(val());
      else if (a == "--gpu-name") gpu_name = val();
      else if (a == "--checkpointing") ckpt = true;
      else if (a == "--offload") offload = true;
      else if (a == "--grad-accum") accum = std::stoll(val());
      else if (a == "--optimizer") optimizer = val();
      else if (a == "--optimizer-offload") opt_offload = true;
      else fail("unknown argument '{}'", a);
    }
    const LlamaConfig cfg = preset_config(shape);
    cuda::Context ctx;
    if (gpu_name.empty()) gpu_name = ctx.name();
    ctx.synchronize();
    const size_t before = cuda::memory_in_use();
    GpuModelOptions o{mb, seq, cuda::Storage::BF16, ckpt, false, gpu_optimizer(optimizer), offload && ckpt};
    o.full = true;
    o.optimizer_offload = opt_offload;
    LlamaGpu model(ctx, cfg, nullptr, nullptr, o, 1);
    const Batch batch = bench::random_batch(mb, seq, cfg.vocab_size, 3);
    double first = 0, last = 0;
    int64_t t = 0;
    auto step = [&]() {
      double sum = 0;
      int64_t count = 0;
      for (int64_t a = 0; a < accum; ++a) {
        const auto [s, c] = model.forward_backward(batch, 1.0f / static_cast<float>(accum * batch.count_targets()));
        sum += s, count += c;
      }
      const double coef = clip_coefficient(model.grad_norm(), 1.0);
      model.optimizer_step({1e-5f, 0.9f, 0.999f, 1e-8f, 0.0f, ++t}, static_cast<float>(coef));
      model.zero_grads();
      const double loss = sum / static_cast<double>(count);
      if (t == 1) first = loss;
      return loss;
    };
    ctx.synchronize();
    bench::MemoryPeakSampler sampler;
    for (int64_t i = 0; i < warmup; ++i) step();
    ctx.synchronize();
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < steps; ++i) last = step();
    ctx.synchronize();
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const size_t peak = sampler.stop();
    const double tok_s = static_cast<double>(steps * accum * mb * seq) / secs;
    const double tflops = train_flops_per_token(cfg, Method::Full, 0, seq) * tok_s / 1e12;
    const double gib = 1024.0 * 1024.0 * 1024.0;
    fmt::print(
        "{{\"bench\": \"full_{}_seq{}_mb{}{}\", \"gpu\": \"{}\", \"ftune_tok_s\": {:.1f}, \"ftune_peak_gib\": {:.2f}, "
        "\"ftune_planned_gib\": {:.2f}, \"ftune_tflops\": {:.1f}, \"ftune_mfu_989\": {:.3f}, \"loss_first\": {:.4f}, "
        "\"loss_last\": {:.4f}, \"steps\": {}, \"grad_accum\": {}, \"step_s\": {:.3f}, \"host_peak_gib\": {:.2f}, "
        "\"optimizer\": \"{}\", \"parameters\": {}}}\n",
        shape, seq, mb,
        std::string(ckpt ? (offload ? "_ckpt_offload" : "_ckpt") : "") + (optimizer == "adamw" ? "" : "_" + optimizer) +
            (opt_offload ? "_optoffload" : "") + (accum > 1 ? fmt::format("_ga{}", accum) : ""),
        gpu_name, tok_s,
        static_cast<double>(peak > before ? peak - before : 0) / gib, static_cast<double>(model.planned_bytes()) / gib,
        tflops, tflops / 989.0, first, last, steps, accum, secs / static_cast<double>(steps),
        static_cast<double>(host_peak_bytes()) / gib, model.optimizer_description(), model.table().trainable_numel());
  } catch (const std::exception& e) {
    fmt::print(stderr, "bench_full_gpu: {}\n", e.what());
    return 1;
  }
  return 0;
}

// Full fine-tuning throughput of ftune on one GPU: a Llama shape with random bf16 weights generated
// on the device (no checkpoint file), every weight trained with fp32 masters and AdamW moments on
// the device, random token ids. After the warmup steps, the timed steps run end to end (forward,
// backward with every weight gradient, gradient norm, AdamW, refresh of the bf16 compute copy) and
// one JSON line reports tokens/s, model TFLOP/s and device memory, measured as bench/lora_gpu.cpp
// measures it (the device memory in use sampled every 1 ms, beyond what the process held before the
// model; bench/peer_full.py samples the peer the same way).
//   bench_full_gpu --shape tinyllama [--seq 2048] [--micro-batch 4] [--checkpointing] [--offload]
//                  [--steps 10] [--warmup 3] [--gpu-name NAME]
#include <fmt/format.h>

#include <chrono>
#include <string>

#include "core/error.h"
#include "lora_bench.h"
#include "memory_peak.h"
#include "model/llama_gpu.h"
#include "model/presets.h"

namespace {

// Model FLOPs per trained token: 6 N for every matrix (forward 2N, input gradient 2N, weight
// gradient 2N; projections and lm_head, not the embedding lookup) and 6 L q T for causal attention,
// as bench/peer_full.py counts them. Checkpointing's recomputation is not counted.
double flops_per_token(const ftune::LlamaConfig& c, int64_t seq) {
  const double d = static_cast<double>(c.hidden_size), i = static_cast<double>(c.intermediate_size);
  const double q = static_cast<double>(c.q_dim()), kv = static_cast<double>(c.kv_dim());
  const double L = static_cast<double>(c.num_hidden_layers), V = static_cast<double>(c.vocab_size);
  const double n = L * (2 * d * q + 2 * d * kv + 3 * d * i) + d * V;
  return 6 * n + 6 * L * q * static_cast<double>(seq);
}

}  // namespace

int main(int argc, char** argv) {
  using namespace ftune;
  std::string shape = "tinyllama", gpu_name;
  int64_t seq = 2048, mb = 4, steps = 10, warmup = 3;
  bool ckpt = false, offload = false;
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      auto val = [&]() -> std::string {
        if (i + 1 >= argc) fail("{} needs a value", a);
        return argv[++i];
      };
      if (a == "--shape") shape = val();
      else if (a == "--seq") seq = std::stoll(val());
      else if (a == "--micro-batch") mb = std::stoll(val());
      else if (a == "--steps") steps = std::stoll(val());
      else if (a == "--warmup") warmup = std::stoll(val());
      else if (a == "--gpu-name") gpu_name = val();
      else if (a == "--checkpointing") ckpt = true;
      else if (a == "--offload") offload = true;
      else fail("unknown argument '{}'", a);
    }
    const LlamaConfig cfg = preset_config(shape);
    cuda::Context ctx;
    if (gpu_name.empty()) gpu_name = ctx.name();
    ctx.synchronize();
    const size_t before = cuda::memory_in_use();
    GpuModelOptions o{mb, seq, cuda::Storage::BF16, ckpt, false, GpuOptimizer::AdamW, offload && ckpt};
    o.full = true;
    LlamaGpu model(ctx, cfg, nullptr, nullptr, o, 1);
    const Batch batch = bench::random_batch(mb, seq, cfg.vocab_size, 3);
    double first = 0, last = 0;
    int64_t t = 0;
    auto step = [&]() {
      const auto [sum, count] = model.forward_backward(batch, 1.0f / static_cast<float>(batch.count_targets()));
      const double coef = clip_coefficient(model.grad_norm(), 1.0);
      model.full_adamw_step({1e-5f, 0.9f, 0.999f, 1e-8f, 0.0f, ++t}, static_cast<float>(coef));
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
    const double tok_s = static_cast<double>(steps * mb * seq) / secs;
    const double tflops = flops_per_token(cfg, seq) * tok_s / 1e12;
    const double gib = 1024.0 * 1024.0 * 1024.0;
    fmt::print(
        "{{\"bench\": \"full_{}_seq{}_mb{}{}\", \"gpu\": \"{}\", \"ftune_tok_s\": {:.1f}, \"ftune_peak_gib\": {:.2f}, "
        "\"ftune_planned_gib\": {:.2f}, \"ftune_tflops\": {:.1f}, \"ftune_mfu_989\": {:.3f}, \"loss_first\": {:.4f}, "
        "\"loss_last\": {:.4f}, \"steps\": {}, \"parameters\": {}}}\n",
        shape, seq, mb, ckpt ? (offload ? "_ckpt_offload" : "_ckpt") : "", gpu_name, tok_s,
        static_cast<double>(peak > before ? peak - before : 0) / gib, static_cast<double>(model.planned_bytes()) / gib,
        tflops, tflops / 989.0, first, last, steps, model.table().trainable_numel());
  } catch (const std::exception& e) {
    fmt::print(stderr, "bench_full_gpu: {}\n", e.what());
    return 1;
  }
  return 0;
}

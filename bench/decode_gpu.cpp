// Generation throughput of ftune on one GPU: a Llama shape with random weights made on the device
// (bf16 or fp16, or the projections in NF4), random prompt ids, greedy decoding.
//   prefill: `--batch` prompts of `--prompt` tokens fed as one forward (the flash prefill), each
//            prompt's last logits to the host; tokens/s = batch * prompt / time.
//   decode:  the prompts fed (untimed), then `--new` steps of one forward over every sequence and
//            a greedy choice of each next token on the host; tokens/s = batch * new / time.
// Each is timed over --repeat runs after --warmup; one JSON line per mode. Memory as
// bench/lora_gpu.cpp measures it: ftune_peak_gib, the device memory in use (cudaMemGetInfo)
// sampled every 1 ms over the runs, beyond what the process held before the decoder was built
// (bench/peer_generate.py reads the peer's the same way).
//   bench_decode_gpu --shape llama2-7b [--dtype bf16|fp16] [--nf4] [--batch 1] [--prompt 512]
//                    [--new 128] [--repeat 3] [--warmup 1] [--mode prefill|decode|both]
//                    [--no-graphs] [--no-gemv]   (the decoder's CUDA graphs, its few-row projection kernel)
#include <fmt/format.h>

#include <chrono>
#include <string>

#include "core/error.h"
#include "core/rng.h"
#include "gpu/gpu_decoder.h"
#include "infer/sampler.h"
#include "memory_peak.h"
#include "model/presets.h"
#include "bench_args.h"

int main(int argc, char** argv) {
  using namespace ftune;
  using Clock = std::chrono::steady_clock;
  std::string shape = "llama2-7b", dtype = "bf16", mode = "both";
  int64_t batch = 1, prompt = 512, gen = 128, repeat = 3, warmup = 1;
  bool nf4 = false, graphs = true, gemv = true;
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      auto val = [&] { return bench::flag_value(argc, argv, i); };
      if (a == "--shape") shape = val();
      else if (a == "--dtype") dtype = val();
      else if (a == "--mode") mode = val();
      else if (a == "--batch") batch = std::stoll(val());
      else if (a == "--prompt") prompt = std::stoll(val());
      else if (a == "--new") gen = std::stoll(val());
      else if (a == "--repeat") repeat = std::stoll(val());
      else if (a == "--warmup") warmup = std::stoll(val());
      else if (a == "--nf4") nf4 = true;
      else if (a == "--no-graphs") graphs = false;
      else if (a == "--no-gemv") gemv = false;
      else fail("unknown option {}", a);
    }
    if (dtype != "bf16" && dtype != "fp16") fail("--dtype: bf16 or fp16, got {}", dtype);
    if (mode != "prefill" && mode != "decode" && mode != "both") fail("--mode: prefill, decode or both");
    if (batch < 1 || prompt < 1 || gen < 1 || repeat < 1 || warmup < 0) fail("sizes must be positive");
    const LlamaConfig cfg = preset_config(shape);
    cuda::Context ctx;
    const size_t before = cuda::memory_in_use();
    GpuDecoderOptions o;
    o.storage = dtype == "fp16" ? cuda::Storage::F16 : cuda::Storage::BF16;
    o.nf4 = nf4, o.graphs = graphs, o.gemv = gemv;
    GpuDecoder dec(ctx, cfg, nullptr, o, 1);
    Rng rng(7);
    std::vector<std::vector<int32_t>> prompts(static_cast<size_t>(batch));
    for (auto& p : prompts)
      for (int64_t i = 0; i < prompt; ++i) p.push_back(static_cast<int32_t>(rng.below(static_cast<uint64_t>(cfg.vocab_size))));
    const int64_t V = cfg.vocab_size;
    const std::string name = fmt::format("{}_{}{}_b{}_p{}{}{}", shape, dtype, nf4 ? "_nf4" : "", batch, prompt,
                                         graphs ? "" : "_nographs", gemv ? "" : "_nogemv");
    auto beyond = [&](size_t b) { return static_cast<double>(b > before ? b - before : 0) / (1u << 30); };
    // One run: fresh caches, the prompts in one forward; then `steps` greedy steps (0: prefill only).
    auto run = [&](int64_t steps, double& prefill_s, double& decode_s) {
      std::vector<std::unique_ptr<KvCache>> caches;
      std::vector<DecodeRow> rows;
      for (auto& p : prompts) {
        caches.push_back(dec.new_cache(prompt + steps + 1));
        for (int64_t i = 0; i < prompt; ++i) rows.push_back({caches.back().get(), p[i], nullptr, i + 1 == prompt});
      }
      const auto t0 = Clock::now();
      std::vector<float> logits = dec.forward(rows);
      const auto t1 = Clock::now();
      SamplingOptions greedy;
      Rng r(0);
      for (int64_t s = 0; s < steps; ++s) {
        rows.clear();
        for (int64_t b = 0; b < batch; ++b) {
          const int32_t t = sample_token(std::span<const float>(logits.data() + b * V, V), greedy, r);
          rows.push_back({caches[b].get(), t, nullptr, true});
        }
        logits = dec.forward(rows);
      }
      const auto t2 = Clock::now();
      prefill_s += std::chrono::duration<double>(t1 - t0).count();
      decode_s += std::chrono::duration<double>(t2 - t1).count();
    };
    for (const std::string m : {"prefill", "decode"}) {
      if (mode != "both" && mode != m) continue;
      const int64_t steps = m == "decode" ? gen : 0;
      double p = 0, d = 0;
      for (int64_t i = 0; i < warmup; ++i) run(steps, p, d);
      p = d = 0;
      bench::MemoryPeakSampler sampler;
      for (int64_t i = 0; i < repeat; ++i) run(steps, p, d);
      const size_t peak = sampler.stop();
      const double tok_s = m == "prefill" ? static_cast<double>(batch * prompt * repeat) / p
                                          : static_cast<double>(batch * gen * repeat) / d;
      fmt::print("{{\"bench\": \"{}_{}{}\", \"gpu\": \"{}\", \"mode\": \"{}\", \"batch\": {}, \"prompt\": {}, \"new\": {}, "
                 "\"ftune_tok_s\": {:.1f}, \"ftune_ms_per_step\": {:.3f}, \"ftune_peak_gib\": {:.2f}, "
                 "\"weights_gib\": {:.2f}}}\n",
                 m, name, m == "decode" ? fmt::format("_n{}", gen) : "", ctx.name(), m, batch, prompt,
                 m == "decode" ? gen : 0, tok_s,
                 1e3 * (m == "prefill" ? p / static_cast<double>(repeat) : d / static_cast<double>(repeat * gen)),
                 beyond(peak), static_cast<double>(dec.weight_bytes()) / (1u << 30));
      std::fflush(stdout);
    }
  } catch (const std::exception& e) {
    fmt::print(stderr, "bench_decode_gpu: {}\n", e.what());
    return 1;
  }
  return 0;
}

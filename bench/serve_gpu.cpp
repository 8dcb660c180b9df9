// Serving throughput of ftune's engine on one GPU with several LoRA adapters on one base: a Llama
// shape with random bf16 weights made on the device, `--adapters` PEFT adapters (r 16, all seven
// projections, random non-zero B) written to a temporary directory and read by the engine as
// `ftune serve --adapter` reads them, and `--requests` requests of `--prompt` random ids and
// `--new` greedy tokens each (EOS ignored), spread evenly over the adapters.
//   mixed:   every request submitted at once, adapters interleaved: the engine batches them, one
//            base GEMM per step and each adapter's LoRA over its rows.
//   one_at_a_time: the same requests, one adapter's at a time (the next adapter's after the last
//            adapter's finished), as a server that batches only requests of one model would.
// One JSON line per mode: generated tokens/s, steps, and how many steps mixed adapters.
//   bench_serve_gpu --shape llama2-7b [--adapters 4] [--requests 64] [--prompt 128] [--new 128]
#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <string>

#include "core/error.h"
#include "core/rng.h"
#include "gpu/gpu_decoder.h"
#include "infer/engine.h"
#include "io/peft_adapter.h"
#include "lora_bench.h"
#include "model/presets.h"
#include "bench_args.h"

int main(int argc, char** argv) {
  using namespace ftune;
  namespace fs = std::filesystem;
  using Clock = std::chrono::steady_clock;
  std::string shape = "llama2-7b";
  int64_t n_adapters = 4, requests = 64, prompt = 128, gen = 128;
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      auto val = [&] { return bench::flag_value(argc, argv, i); };
      if (a == "--shape") shape = val();
      else if (a == "--adapters") n_adapters = std::stoll(val());
      else if (a == "--requests") requests = std::stoll(val());
      else if (a == "--prompt") prompt = std::stoll(val());
      else if (a == "--new") gen = std::stoll(val());
      else fail("unknown option {}", a);
    }
    if (n_adapters < 1 || requests < n_adapters || prompt < 1 || gen < 1) fail("sizes must be positive");
    const LlamaConfig cfg = preset_config(shape);
    const fs::path tmp = fs::temp_directory_path() / fmt::format("ftune_serve_bench_{}", ::getpid());
    fs::create_directories(tmp);
    std::vector<AdapterSource> sources;
    for (int64_t k = 0; k < n_adapters; ++k) {
      LoraParams lora = LoraParams::init(cfg, bench::all_projections(16, 32), static_cast<uint64_t>(100 + k));
      Rng r(static_cast<uint64_t>(k + 1));
      lora.for_each([&](const std::string& key, Tensor& t) {
        if (key.find("lora_B") != std::string::npos)
          for (float& x : t.data) x = 0.01f * r.normal();
      });
      const std::string dir = (tmp / fmt::format("a{}", k)).string();
      fs::create_directories(dir);
      save_peft_adapter(dir, lora, shape);
      sources.push_back({fmt::format("a{}", k), dir});
    }
    cuda::Context ctx;
    EngineOptions eo;
    eo.max_sequences = requests, eo.max_batch_tokens = 2048;
    ServingEngine engine(cfg, LlamaWeights{}, sources, nullptr, eo, [&](const LlamaConfig& c, const LlamaWeights&) {
      return std::unique_ptr<Decoder>(std::make_unique<GpuDecoder>(ctx, c, nullptr, GpuDecoderOptions{}, 1));
    });
    fs::remove_all(tmp);
    Rng rng(3);
    std::vector<SequenceRequest> all;
    for (int64_t i = 0; i < requests; ++i) {
      SequenceRequest q;
      for (int64_t t = 0; t < prompt; ++t) q.prompt.push_back(static_cast<int32_t>(rng.below(static_cast<uint64_t>(cfg.vocab_size))));
      q.adapter = sources[static_cast<size_t>(i % n_adapters)].name;
      q.gen.max_new_tokens = gen;
      q.stream = static_cast<uint64_t>(i);
      all.push_back(std::move(q));
    }
    engine.run({all.front()});  // warm up: the adapters' first upload, cuBLAS plans
    for (const std::string mode : {"mixed", "one_at_a_time"}) {
      const EngineStats before = engine.stats();
      const auto t0 = Clock::now();
      int64_t tokens = 0;
      if (mode == "mixed") {
        for (const auto& r : engine.run(all)) tokens += static_cast<int64_t>(r.gen.tokens.size());
      } else {
        for (int64_t k = 0; k < n_adapters; ++k) {
          std::vector<SequenceRequest> mine;
          for (int64_t i = k; i < requests; i += n_adapters) mine.push_back(all[i]);
          for (const auto& r : engine.run(mine)) tokens += static_cast<int64_t>(r.gen.tokens.size());
        }
      }
      const double s = std::chrono::duration<double>(Clock::now() - t0).count();
      const EngineStats after = engine.stats();
      fmt::print("{{\"bench\": \"serve_{}_{}_a{}_req{}_p{}_n{}\", \"gpu\": \"{}\", \"mode\": \"{}\", "
                 "\"generated_tok_s\": {:.1f}, \"seconds\": {:.3f}, \"tokens\": {}, \"steps\": {}, \"mixed_steps\": {}}}\n",
                 mode, shape, n_adapters, requests, prompt, gen, ctx.name(), mode, static_cast<double>(tokens) / s, s,
                 tokens, after.steps - before.steps, after.mixed_steps - before.mixed_steps);
      std::fflush(stdout);
    }
  } catch (const std::exception& e) {
    fmt::print(stderr, "bench_serve_gpu: {}\n", e.what());
    return 1;
  }
  return 0;
}

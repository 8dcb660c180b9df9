// Where the GPU's time goes inside real LoRA training steps: every kernel, copy and memset of
// `--steps` optimizer steps (after `--warmup` untraced ones) recorded by CUPTI's activity API, the
// same steps bench_lora_gpu times (forward, backward, gradient norm, AdamW). Unlike
// bench_lora_profile_gpu, which times each op family alone at the step's shapes, nothing here is
// timed in isolation: the lines say how long each kernel family ran within the steps, how long the
// GPU sat idle between them, and how much of that idle time the GPU spent waiting for the host to
// queue the next launch (a kernel queued only after the previous work had ended), which is what
// running the step as a CUDA graph could win back.
//   bench_step_trace_gpu [--shape llama2-7b] [--seq 2048] [--micro-batch 4] [--rank 16]
//                        [--checkpointing] [--qlora] [--no-cudnn] [--no-fuse-lora] [--tune-gemms]
//                        [--steps 3] [--warmup 2]
// Lines: "step_trace" (totals per step), "step_trace_family" (one per kernel family), and
// "step_trace_gemm" (cuBLASLt's kernels grouped by name and grid, the largest first).
// CUPTI's buffer callbacks take no user pointer, so the collector they fill is reached through one
// function-local static, set only while tracing.
#include <cupti.h>
#include <cxxabi.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "bench_args.h"
#include "core/error.h"
#include "gpu/llama_gpu.h"
#include "gpu/run_options.h"
#include "lora_bench.h"
#include "model/presets.h"

namespace {

using namespace ftune;

struct Record {
  uint64_t start = 0, end = 0, queued = 0;  // ns; queued: when the host queued a kernel (0: not a kernel)
  std::string name;                         // the kernel's demangled name, "memcpy" or "memset"
  int grid[3] = {0, 0, 0};
};

struct Collector {
  std::vector<Record> records;
};

Collector*& collector() {
  static Collector* c = nullptr;
  return c;
}

std::string demangle(const char* name) {
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> d(abi::__cxa_demangle(name, nullptr, nullptr, &status), std::free);
  return status == 0 && d ? std::string(d.get()) : std::string(name ? name : "?");
}

void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
  constexpr size_t kBytes = 8u << 20;
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, kBytes));
  *size = kBytes;
  *max_records = 0;
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  CUpti_Activity* rec = nullptr;
  Collector* c = collector();
  while (c && cuptiActivityGetNextRecord(buffer, valid, &rec) == CUPTI_SUCCESS) {
    Record r;
    if (rec->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL || rec->kind == CUPTI_ACTIVITY_KIND_KERNEL) {
      const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(rec);
      r = {k->start, k->end, k->queued, demangle(k->name), {k->gridX, k->gridY, k->gridZ}};
    } else if (rec->kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
      const auto* m = reinterpret_cast<const CUpti_ActivityMemcpy6*>(rec);
      r.start = m->start, r.end = m->end, r.name = "memcpy";
    } else if (rec->kind == CUPTI_ACTIVITY_KIND_MEMSET) {
      const auto* m = reinterpret_cast<const CUpti_ActivityMemset4*>(rec);
      r.start = m->start, r.end = m->end, r.name = "memset";
    } else {
      continue;
    }
    c->records.push_back(std::move(r));
  }
  std::free(buffer);
}

void cupti_check(CUptiResult r, const char* what) {
  if (r == CUPTI_SUCCESS) return;
  const char* msg = nullptr;
  cuptiGetResultString(r, &msg);
  fail("CUPTI: {} failed: {}", what, msg ? msg : "unknown error");
}

// A kernel's family from its demangled name: cuBLASLt's GEMMs, attention (cuDNN's engines or
// ftune's flash kernels), and ftune's own kernels by what they compute.
std::string family(const std::string& n) {
  auto has = [&](const char* s) { return n.find(s) != std::string::npos; };
  if (n == "memcpy" || n == "memset") return n;
  if (has("rmsnorm")) return "rmsnorm";
  if (has("rope")) return "rope";
  if (has("swiglu")) return "swiglu";
  if (has("convert") && !has("dq_convert")) return "convert";
  if (has("f32_to_bf16")) return "convert";
  if (has("cross_entropy")) return "cross_entropy";
  if (has("adam")) return "optimizer";
  if (has("sum_squares")) return "grad_norm";
  if (has("nf4")) return "nf4_dequantize";
  if (has("add_into")) return "add_into";
  if (has("embedding") || has("gather_rows")) return "embedding_rope_tables";
  if (has("dropout")) return "dropout";
  if (has("count_nonfinite")) return "overflow_count";
  if (has("cudnn") || has("fmha") || has("sdpa") || has("flash") || has("dq_kernel") || has("dkv_kernel") ||
      has("delta_kernel") || has("dq_convert") || has("ftune::cuda::flash"))
    return "attention";
  if (has("nvjet") || has("gemm") || has("xmma") || has("cutlass") || has("sm90_") || has("splitK") || has("cublas"))
    return "gemm";
  return "other";
}

std::string short_name(const std::string& n, size_t keep = 70) {
  std::string s = n.substr(0, n.find('('));
  for (char& c : s)
    if (c == '"' || c == '\\') c = '\'';
  return s.size() > keep ? s.substr(0, keep) : s;
}

}  // namespace

int main(int argc, char** argv) {
  std::string shape = "llama2-7b";
  int64_t seq = 2048, mb = 4, rank = 16, steps = 3, warmup = 2;
  bool ckpt = false, qlora = false, cudnn = true, fuse = true, tune = false;
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      auto val = [&] { return bench::flag_value(argc, argv, i); };
      if (a == "--shape") shape = val();
      else if (a == "--seq") seq = std::stoll(val());
      else if (a == "--micro-batch") mb = std::stoll(val());
      else if (a == "--rank") rank = std::stoll(val());
      else if (a == "--steps") steps = std::stoll(val());
      else if (a == "--warmup") warmup = std::stoll(val());
      else if (a == "--checkpointing") ckpt = true;
      else if (a == "--qlora") qlora = true;
      else if (a == "--no-cudnn") cudnn = false;
      else if (a == "--no-fuse-lora") fuse = false;
      else if (a == "--tune-gemms") tune = true;
      else fail("unknown argument '{}'", a);
    }
    if (steps < 1 || warmup < 1) fail("--steps and --warmup must be at least 1");
    const LlamaConfig cfg = preset_config(shape);
    cuda::Context ctx;
    const LoraSpec spec = bench::all_projections(rank, 2.0 * static_cast<double>(rank));
    GpuModelOptions mo{mb, seq, cuda::Storage::BF16, ckpt, qlora, gpu_optimizer("adamw"), false};
    mo.mlp_chunk = mlp_chunk_for(ckpt, mb * seq);
    mo.cudnn_attention = cudnn;
    mo.fuse_lora = fuse;
    mo.tune_gemms = tune;
    LlamaGpu model(ctx, cfg, nullptr, &spec, mo, 1);
    bench::set_adapter(model, cfg, spec, 2);
    const Batch batch = bench::random_batch(mb, seq, cfg.vocab_size, 3);
    int64_t t = 0;
    for (int64_t i = 0; i < warmup; ++i) bench::train_step(model, batch, ++t);
    ctx.synchronize();

    Collector col;
    collector() = &col;
    cupti_check(cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed), "registering buffers");
    cupti_check(cuptiActivityEnableLatencyTimestamps(1), "enabling queued timestamps");
    cupti_check(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL), "enabling kernel records");
    cupti_check(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY), "enabling copy records");
    cupti_check(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMSET), "enabling memset records");
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < steps; ++i) bench::train_step(model, batch, ++t);
    ctx.synchronize();
    const double wall_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    cupti_check(cuptiActivityFlushAll(1), "flushing");
    cuptiActivityDisable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL);
    cuptiActivityDisable(CUPTI_ACTIVITY_KIND_MEMCPY);
    cuptiActivityDisable(CUPTI_ACTIVITY_KIND_MEMSET);
    collector() = nullptr;

    auto& rs = col.records;
    if (rs.empty()) fail("CUPTI recorded no activity");
    std::sort(rs.begin(), rs.end(), [](const Record& a, const Record& b) { return a.start < b.start; });
    const double per = 1.0 / static_cast<double>(steps), ms = 1e-6;
    // Busy time: the union of the records' intervals; idle: the gaps between them, and the part of
    // each gap before the next kernel had even been queued by the host.
    uint64_t busy = 0, idle = 0, host_idle = 0, cur_s = rs[0].start, cur_e = rs[0].end;
    int64_t gaps_over_20us = 0;
    for (size_t i = 1; i < rs.size(); ++i) {
      const Record& r = rs[i];
      if (r.start > cur_e) {
        busy += cur_e - cur_s;
        const uint64_t gap = r.start - cur_e;
        idle += gap;
        if (gap > 20000) ++gaps_over_20us;
        if (r.queued > cur_e) host_idle += std::min(gap, r.queued - cur_e);
        cur_s = r.start, cur_e = r.end;
      } else {
        cur_e = std::max(cur_e, r.end);
      }
    }
    busy += cur_e - cur_s;
    // cur_e is the latest end of all: a record ending later than the next one's start merges with it.
    const double span = static_cast<double>(cur_e - rs[0].start);
    struct Tally {
      double ns = 0;  // summed durations
      int64_t n = 0;  // records
    };
    std::map<std::string, Tally> fam;
    std::map<std::tuple<std::string, std::string, std::string>, Tally> gemms;  // (kernel, family, grid)
    int64_t kernels = 0;
    for (const Record& r : rs) {
      const std::string f = family(r.name);
      const double ns = static_cast<double>(r.end - r.start);
      Tally& e = fam[f];
      e.ns += ns, ++e.n;
      if (r.queued) ++kernels;
      if (f == "gemm" || f == "other") {
        Tally& g = gemms[{short_name(r.name), f, fmt::format("{}x{}x{}", r.grid[0], r.grid[1], r.grid[2])}];
        g.ns += ns, ++g.n;
      }
    }
    const double tokens = static_cast<double>(mb * seq);
    fmt::print(
        "{{\"bench\": \"step_trace\", \"shape\": \"{}\", \"method\": \"{}\", \"checkpointing\": {}, \"seq\": {}, "
        "\"micro_batch\": {}, \"rank\": {}, \"attention\": \"{}\", \"lora_a_gemms\": \"{}\", \"gemm_tuning\": \"{}\", \"steps\": {}, "
        "\"wall_ms_per_step\": {:.2f}, \"tok_s_traced\": {:.0f}, \"gpu_span_ms_per_step\": {:.2f}, "
        "\"gpu_busy_ms_per_step\": {:.2f}, \"gpu_idle_ms_per_step\": {:.2f}, \"idle_waiting_for_host_ms_per_step\": {:.2f}, "
        "\"gaps_over_20us_per_step\": {:.1f}, \"kernels_per_step\": {:.0f}, \"gpu\": \"{}\"}}\n",
        shape, qlora ? "qlora" : "lora", ckpt, seq, mb, rank, model.attention_kernels(), fuse ? "fused" : "separate",
        tune ? "on" : "off", steps, wall_ms * per, tokens / (wall_ms * per * 1e-3), span * ms * per, static_cast<double>(busy) * ms * per,
        static_cast<double>(idle) * ms * per, static_cast<double>(host_idle) * ms * per,
        static_cast<double>(gaps_over_20us) * per, static_cast<double>(kernels) * per, ctx.name());
    auto largest_first = [](const auto& m) {
      std::vector<std::pair<typename std::decay_t<decltype(m)>::key_type, Tally>> v(m.begin(), m.end());
      std::sort(v.begin(), v.end(), [](const auto& a, const auto& b) { return a.second.ns > b.second.ns; });
      return v;
    };
    for (const auto& [name, v] : largest_first(fam))
      fmt::print("{{\"bench\": \"step_trace_family\", \"family\": \"{}\", \"ms_per_step\": {:.2f}, \"calls_per_step\": {:.0f}, "
                 "\"share_of_busy\": {:.4f}}}\n",
                 name, v.ns * ms * per, static_cast<double>(v.n) * per, v.ns / static_cast<double>(busy));
    const auto gs = largest_first(gemms);
    for (size_t i = 0; i < gs.size() && i < 24; ++i) {
      const auto& [kernel, fam_name, grid] = gs[i].first;
      const Tally& g = gs[i].second;
      fmt::print("{{\"bench\": \"step_trace_gemm\", \"kernel\": \"{}\", \"family\": \"{}\", \"grid\": \"{}\", "
                 "\"calls_per_step\": {:.0f}, \"mean_us\": {:.1f}, \"ms_per_step\": {:.2f}}}\n",
                 kernel, fam_name, grid, static_cast<double>(g.n) * per, g.ns / static_cast<double>(g.n) * 1e-3,
                 g.ns * ms * per);
    }
  } catch (const std::exception& e) {
    fmt::print(stderr, "bench_step_trace_gpu: {}\n", e.what());
    return 1;
  }
  return 0;
}

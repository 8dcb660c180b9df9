// The GPU table, FLOPs and step-time estimate, and the printed plan.
#include "plan/run_estimate.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>

#include "core/error.h"
#include "dist/pipeline.h"

namespace ftune {

// Part of the CUDA build (gpu/plan_gpu.cpp): the model's own allocation, counted.
MemoryPlan plan_gpu_memory(const LlamaConfig& cfg, const LoraSpec* spec, const RunPlan& plan, int64_t max_seq,
                           const GpuSpec& gpu, std::string& fit_advice, const StageLayers& stage);

namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
constexpr size_t kMiB = size_t{1} << 20;
// Optimizer offload's transfers, for the estimate: PCIe at 20 GB/s each way (a x16 gen4 link's
// practical rate) and the host's AdamW at 40 GB/s of memory traffic (about 28 bytes per weight).
constexpr double kPcieBytesPerS = 20e9, kHostBytesPerS = 40e9;

std::string squash(const std::string& s) {
  std::string o;
  for (char c : s)
    if (c != ' ' && c != '-' && c != '_') o += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return o;
}

}  // namespace

const std::vector<GpuSpec>& known_gpus() {
  // Total memory as the driver reports it; dense tensor TFLOP/s (bf16, fp16 on the T4) from the
  // vendor datasheets.
  static const std::vector<GpuSpec> gpus = {
      {"T4", 75, 15360 * kMiB, 65},          {"A10", 86, 23028 * kMiB, 125},
      {"RTX 3090", 86, 24576 * kMiB, 71},    {"L4", 89, 23034 * kMiB, 121},
      {"RTX 4090", 89, 24564 * kMiB, 165},   {"L40S", 89, 46068 * kMiB, 362},
      {"A100-40GB", 80, 40536 * kMiB, 312},  {"A100-80GB", 80, 81920 * kMiB, 312},
      {"H100-PCIe", 90, 81559 * kMiB, 756},  {"H100", 90, 81559 * kMiB, 989},
      {"H200", 90, 143771 * kMiB, 989},
  };
  return gpus;
}

const GpuSpec& find_gpu(const std::string& name) {
  const std::string want = squash(name);
  for (const GpuSpec& g : known_gpus())
    if (squash(g.name) == want) return g;
  std::string names;
  for (const GpuSpec& g : known_gpus()) names += (names.empty() ? "" : ", ") + g.name;
  fail("--gpu '{}': not a GPU ftune knows; one of: {}", name, names);
}

double train_flops_per_token(const LlamaConfig& c, Method method, int64_t n_lora, int64_t seq) {
  const double d = static_cast<double>(c.hidden_size), i = static_cast<double>(c.intermediate_size);
  const double q = static_cast<double>(c.q_dim()), kv = static_cast<double>(c.kv_dim());
  const double L = static_cast<double>(c.num_hidden_layers), V = static_cast<double>(c.vocab_size);
  const double n = L * (2 * d * q + 2 * d * kv + 3 * d * i) + d * V;
  const double attention = 6 * L * q * static_cast<double>(seq);
  if (method == Method::Full) return 6 * n + attention;
  return 4 * n + 6 * static_cast<double>(n_lora) + attention;
}

int64_t lora_parameter_count(const LlamaConfig& c, const LoraSpec& spec) {
  int64_t n = 0;
  for (int p = 0; p < kNumProj; ++p)
    if (spec.targets[p]) {
      const auto [out, in] = proj_shape(c, static_cast<Proj>(p));
      n += spec.r * (in + out);
    }
  return n * c.num_hidden_layers;
}

RunEstimate estimate_run(const LlamaConfig& cfg, const LoraSpec* spec, const RunPlan& plan, int64_t max_seq,
                         const GpuSpec& gpu) {
  RunEstimate e;
  e.gpu = gpu;
  if (plan.pipeline > 1) {  // every stage's plan; a rank must fit the largest
    const std::vector<int64_t> b =
        dist::split_llama_layers(cfg, plan.pipeline, plan.method == Method::Qlora, true);
    e.bubble = dist::pipeline_bubble(plan.pipeline, plan.grad_accum);
    for (int st = 0; st < plan.pipeline; ++st) {
      std::string advice;
      const MemoryPlan m = plan_gpu_memory(cfg, spec, plan, max_seq, gpu, advice,
                                           {b[st], b[st + 1], dist::pipeline_slots(plan.pipeline, st, plan.grad_accum)});
      e.stages.push_back({b[st], b[st + 1], m.device_total()});
      if (st == 0 || m.device_total() > e.memory.device_total()) e.memory = m, e.fit_advice = advice;
    }
  } else {
    e.memory = plan_gpu_memory(cfg, spec, plan, max_seq, gpu, e.fit_advice, {});
  }
  e.tokens_per_micro_batch = plan.micro_batch * max_seq;
  e.tokens_per_step = e.tokens_per_micro_batch * plan.grad_accum;
  const int64_t n_lora = spec ? lora_parameter_count(cfg, *spec) : 0;
  double per_token = train_flops_per_token(cfg, plan.method, n_lora, max_seq);
  e.flops_per_step = per_token * static_cast<double>(e.tokens_per_step);
  if (plan.checkpointing) per_token += train_flops_per_token(cfg, plan.method, n_lora, max_seq) / 3.0;  // +1 forward
  const double compute = per_token * static_cast<double>(e.tokens_per_step) / (gpu.dense_tflops * 1e12 * kAssumedUtilisation);
  if (plan.method == Method::Full && plan.optimizer_offload) {
    const double P = static_cast<double>(cfg.num_parameters());
    e.offload_seconds = std::max(6 * P / kPcieBytesPerS, 28 * P / kHostBytesPerS);
  }
  e.step_seconds = compute + e.offload_seconds;
  // A pipeline: each rank runs 1/P of the layers for M micro-batches and idles for the bubble.
  if (plan.pipeline > 1) e.step_seconds = compute / plan.pipeline / (1.0 - e.bubble);
  return e;
}

void check_host_memory(RunEstimate& e, size_t available) {
  e.host_available = available;
  const size_t need = e.memory.host_pinned + e.memory.host;
  if (!available || need <= available || !e.fit_advice.empty()) return;
  e.fit_advice = fmt::format(
      "the run needs {:.2f} GiB of host memory ({:.2f} GiB of it pinned: offloaded layer inputs, paged optimizer "
      "states), but the host has {:.2f} GiB available; shorten data.max_seq_len or train.micro_batch_size",
      static_cast<double>(need) / kGiB, static_cast<double>(e.memory.host_pinned) / kGiB,
      static_cast<double>(available) / kGiB);
}

int64_t longest_fitting_seq(const LlamaConfig& cfg, const LoraSpec* spec, const RunPlan& plan, const GpuSpec& gpu,
                            size_t host_available, int64_t cap) {
  auto fits = [&](int64_t seq) {
    RunEstimate e = estimate_run(cfg, spec, plan, seq, gpu);
    check_host_memory(e, host_available);
    return e.fit_advice.empty();
  };
  if (!fits(1)) return 0;
  if (fits(cap)) return cap;
  int64_t lo = 1, hi = cap;  // fits(lo), !fits(hi)
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    (fits(mid) ? lo : hi) = mid;
  }
  return lo;
}

std::string format_estimate(const RunEstimate& e, const LlamaConfig& cfg, const RunPlan& plan, const std::string& model) {
  auto gib = [](size_t b) { return static_cast<double>(b) / kGiB; };
  std::string s;
  s += fmt::format("model        {} ({} layers, hidden {}, vocab {}, {:.2f} B parameters)\n", model,
                   cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size,
                   static_cast<double>(cfg.num_parameters()) / 1e9);
  s += fmt::format("GPU          {} (sm_{}, {:.1f} GiB, {:.0f} dense TFLOP/s){}\n", e.gpu.name, e.gpu.sm, gib(e.gpu.memory),
                   e.gpu.dense_tflops, e.gpu_detected ? ", detected" : "");
  s += fmt::format("ranks        {} (the plan is per rank{})\n", plan.world,
                   plan.zero == 3 && plan.world > 1
                       ? plan.method == Method::Full
                             ? fmt::format("; dist.zero 3: 1/{} of the weights, gradients and optimizer state, one "
                                           "unit gathered at a time",
                                           plan.world)
                             : fmt::format("; dist.zero 3: 1/{} of the frozen base, one unit gathered at a time; the "
                                           "adapter data parallel",
                                           plan.world)
                       : "");
  s += fmt::format("tokens       {} per micro-batch ({} x {}), {} per step ({} micro-batches)\n", e.tokens_per_micro_batch,
                   plan.micro_batch, e.tokens_per_micro_batch / std::max<int64_t>(plan.micro_batch, 1),
                   e.tokens_per_step, plan.grad_accum);
  if (!e.stages.empty()) {
    std::string st;
    for (size_t i = 0; i < e.stages.size(); ++i)
      st += fmt::format("{}layers {}-{} ({:.2f} GiB)", i ? ", " : "", e.stages[i].first, e.stages[i].end - 1,
                        gib(e.stages[i].device_bytes));
    s += fmt::format("pipeline     {} stages: {}; 1F1B bubble {:.1f}% (the largest stage below)\n", e.stages.size(), st,
                     100 * e.bubble);
  }
  s += "device memory per rank:\n";
  for (int c = 0; c < kMemCategories; ++c) {
    const auto cat = static_cast<MemCategory>(c);
    s += fmt::format("  {:<12} {:>9.2f} GiB  {}\n", mem_category_name(cat), gib(e.memory[cat]), mem_category_doc(cat));
  }
  s += fmt::format("  {:<12} {:>9.2f} GiB  of {:.1f}; the CUDA context and cuBLAS workspace (about 0.5 GiB) come on top\n",
                   "total", gib(e.memory.device_total()),
                   plan.max_memory ? gib(std::min<size_t>(e.gpu.memory, static_cast<size_t>(plan.max_memory)))
                                   : gib(e.gpu.memory));
  s += fmt::format("host memory  {:.2f} GiB pinned, {:.2f} GiB other{}\n", gib(e.memory.host_pinned), gib(e.memory.host),
                   e.host_available ? fmt::format(", of {:.2f} GiB available", gib(e.host_available)) : "");
  s += fmt::format("step time    about {:.2f} s ({:.1f} TFLOP of model work at {:.0f}% of the GPU's peak{}){}\n",
                   e.step_seconds, e.flops_per_step / 1e12, 100 * kAssumedUtilisation,
                   plan.checkpointing ? ", plus checkpointing's recompute" : "",
                   e.offload_seconds > 0 ? fmt::format("; {:.2f} s of it the offloaded optimizer", e.offload_seconds) : "");
  s += e.fit_advice.empty() ? "fits         yes\n" : "fits         no: " + e.fit_advice + "\n";
  return s;
}

std::string estimate_json(const RunEstimate& e) {
  std::string cats;
  for (int c = 0; c < kMemCategories; ++c)
    cats += fmt::format("{}\"{}\": {}", c ? ", " : "", mem_category_name(static_cast<MemCategory>(c)),
                        e.memory.device[c]);
  std::string stages;  // a pipeline's: [first layer, end layer, device bytes] per stage
  for (size_t k = 0; k < e.stages.size(); ++k)
    stages += fmt::format("{}[{}, {}, {}]", k ? ", " : "", e.stages[k].first, e.stages[k].end, e.stages[k].device_bytes);
  return fmt::format(
      "{{\"gpu\": \"{}\", \"sm\": {}, \"gpu_memory\": {}, \"device\": {{{}}}, \"device_total\": {}, \"host_pinned\": {}, "
      "\"host\": {}, \"host_available\": {}, \"tokens_per_step\": {}, \"flops_per_step\": {:.6e}, \"step_seconds\": {:.6e}, \"fits\": {}, "
      "\"stages\": [{}], \"bubble\": {:.6f}}}",
      e.gpu.name, e.gpu.sm, e.gpu.memory, cats, e.memory.device_total(), e.memory.host_pinned, e.memory.host,
      e.host_available, e.tokens_per_step, e.flops_per_step, e.step_seconds, e.fit_advice.empty() ? "true" : "false", stages, e.bubble);
}

#ifndef FTUNE_HAVE_CUDA
MemoryPlan plan_gpu_memory(const LlamaConfig&, const LoraSpec*, const RunPlan&, int64_t, const GpuSpec&, std::string&,
                           const StageLayers&) {
  fail("ftune plan: this ftune was built without CUDA (nvcc was not found at build time), so it cannot plan GPU memory");
}
bool detect_gpu(GpuSpec&) { return false; }
#endif

}  // namespace ftune

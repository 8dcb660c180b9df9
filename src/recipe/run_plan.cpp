// Recipe -> RunPlan, with the rules across keys.
#include "recipe/run_plan.h"

#include <array>
#include <utility>

#include <fmt/format.h>

#include "core/error.h"

namespace ftune {

namespace {

template <typename E, size_t N>
E parse_choice(const char* key, const std::string& value, const std::array<std::pair<const char*, E>, N>& names) {
  std::string all;
  for (const auto& [name, e] : names) {
    if (value == name) return e;
    all += all.empty() ? name : std::string(", ") + name;
  }
  fail("{}: unknown value '{}' ({})", key, value, all);
}

constexpr std::array<std::pair<const char*, Method>, 3> kMethods{
    {{"lora", Method::Lora}, {"qlora", Method::Qlora}, {"full", Method::Full}}};
constexpr std::array<std::pair<const char*, Precision>, 4> kPrecisions{
    {{"auto", Precision::Auto}, {"bf16", Precision::Bf16}, {"fp16", Precision::Fp16}, {"fp32", Precision::Fp32}}};
constexpr std::array<std::pair<const char*, OptimizerKind>, 3> kOptimizers{{{"adamw", OptimizerKind::AdamW},
                                                                            {"adamw_8bit", OptimizerKind::AdamW8bit},
                                                                            {"paged_adamw_8bit", OptimizerKind::PagedAdamW8bit}}};
constexpr std::array<std::pair<const char*, Device>, 3> kDevices{
    {{"cpu", Device::Cpu}, {"cuda", Device::Cuda}, {"auto", Device::Auto}}};

}  // namespace

int64_t parse_memory_size(const std::string& text, const std::string& key) {
  static constexpr std::array<std::pair<const char*, double>, 9> kUnits{{{"KiB", 1024.0},
                                                                         {"MiB", 1048576.0},
                                                                         {"GiB", 1073741824.0},
                                                                         {"TiB", 1099511627776.0},
                                                                         {"KB", 1e3},
                                                                         {"MB", 1e6},
                                                                         {"GB", 1e9},
                                                                         {"TB", 1e12},
                                                                         {"B", 1.0}}};
  std::string num = text;
  double unit = 1.0;
  for (const auto& [name, factor] : kUnits) {
    const std::string n = name;
    if (text.size() > n.size() && text.ends_with(n)) {
      num = text.substr(0, text.size() - n.size());
      unit = factor;
      break;
    }
  }
  while (!num.empty() && num.back() == ' ') num.pop_back();
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(num, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (num.empty() || used != num.size() || !(v > 0) || v * unit > 9e18)
    fail("{}: '{}' is not a memory size (a positive number with B, KB, MB, GB, KiB, MiB or GiB, e.g. 15GiB)", key,
         text);
  return static_cast<int64_t>(v * unit);
}

RunPlan make_run_plan(const TrainConfig& cfg, const std::string& label) {
  const TrainSettings& t = cfg.train;
  RunPlan p;
  p.method = parse_choice("train.method", t.method, kMethods);
  p.precision = parse_choice("train.precision", t.precision, kPrecisions);
  p.optimizer = parse_choice("train.optimizer", t.optimizer, kOptimizers);
  p.device = parse_choice("train.device", t.device, kDevices);
  p.checkpointing = t.gradient_checkpointing;
  p.offload_activations = t.offload_activations;
  p.deterministic = t.deterministic;
  p.optimizer_offload = t.optimizer_offload;
  p.adamw = {t.beta1, t.beta2, t.eps, t.weight_decay};
  p.max_grad_norm = t.max_grad_norm;
  p.micro_batch = t.micro_batch_size;
  p.grad_accum = t.grad_accum;
  p.zero = static_cast<int>(cfg.dist.zero);
  p.pipeline = static_cast<int>(cfg.dist.pipeline);
  if (p.pipeline > 1 && p.zero > 0)
    fail("{}: dist.pipeline={} with dist.zero={} is not available in this version: a pipeline stage holds its own "
         "layers whole (use dist.zero 0 with the pipeline, or dist.zero {} without it)",
         label, p.pipeline, p.zero, p.zero);
  if (p.pipeline > 1 && p.optimizer != OptimizerKind::AdamW && t.save_every > 0)
    fail("{}: checkpoints (train.save_every) of dist.pipeline={} with train.optimizer {} are not available in this "
         "version: use train.optimizer adamw, or train.save_every 0",
         label, p.pipeline, t.optimizer);
  if (!t.max_memory.empty()) {
    p.max_memory = parse_memory_size(t.max_memory, fmt::format("{}: train.max_memory", label));
    if (p.device == Device::Cpu)
      fail("{}: train.max_memory caps GPU memory, but train.device is cpu; remove it or set train.device cuda", label);
  }
  if (p.zero > 0 && p.method == Method::Full && p.optimizer == OptimizerKind::AdamW8bit && t.save_every > 0)
    fail("{}: checkpoints (train.save_every) of dist.zero={} with train.optimizer adamw_8bit are not available in this "
         "version: use train.optimizer adamw, or train.save_every 0",
         label, p.zero);
  if (p.zero > 0 && p.zero < 3 && p.method != Method::Full)
    fail("{}: dist.zero={} shards full fine-tuning's optimizer state; train.method {} trains an adapter, which runs "
         "data parallel (dist.zero 0), or shards its frozen base with dist.zero 3",
         label, p.zero, t.method);
  if (p.zero > 0 && p.method == Method::Full && p.device == Device::Cpu && p.optimizer != OptimizerKind::AdamW)
    fail("{}: dist.zero={} on the CPU shards fp32 AdamW moments: set train.optimizer to adamw (not {})", label, p.zero,
         t.optimizer);
  if (p.zero > 0 && p.optimizer_offload)
    fail("{}: dist.zero={} with train.optimizer_offload is not available in this version: ZeRO already divides the "
         "masters and moments by the number of ranks (remove train.optimizer_offload, or use train.optimizer "
         "adamw_8bit)",
         label, p.zero);
  if (p.method == Method::Full) {
    for (const std::string& k : cfg.given)
      if (k.starts_with("lora."))
        fail("{}: {} is a LoRA setting, but train.method is full (every weight trains, no adapter); remove it or "
             "choose train.method lora or qlora",
             label, k);
    if (p.optimizer == OptimizerKind::PagedAdamW8bit)
      fail("{}: train.optimizer=paged_adamw_8bit with train.method=full is not available: use adamw_8bit (8-bit "
           "moments on the GPU) or train.optimizer_offload: true (masters and moments in host memory)",
           label);
    if (p.optimizer_offload && p.optimizer != OptimizerKind::AdamW)
      fail("{}: train.optimizer_offload keeps fp32 AdamW moments in host memory: set train.optimizer to adamw (not {})",
           label, t.optimizer);
    if (p.optimizer_offload && p.device == Device::Cpu)
      fail("{}: train.optimizer_offload moves the optimizer off the GPU, but train.device is cpu (where everything is "
           "already in host memory); remove it or set train.device cuda",
           label);
  } else if (p.optimizer_offload) {
    fail("{}: train.optimizer_offload is for train.method full (the master weights and moments of every weight); "
         "train.method {} trains an adapter, whose optimizer state is small: use train.optimizer paged_adamw_8bit to "
         "move it to host memory",
         label, t.method);
  }
  if (p.method == Method::Full && t.save_merged)
    fail("{}: train.save_merged folds an adapter into the base; with train.method full output_dir already holds the "
         "whole model",
         label);
  if (t.epochs > 0 && cfg.given.count("train.max_steps"))
    fail("{}: train.epochs and train.max_steps both set the length of the run; give one of them", label);
  if (t.early_stopping_patience > 0 && (t.eval_every <= 0 || (cfg.data.val.empty() && cfg.data.val_fraction <= 0)))
    fail("{}: train.early_stopping_patience needs validation losses during the run: train.eval_every > 0 and "
         "data.val or data.val_fraction",
         label);
  if (p.offload_activations && !p.checkpointing)
    fail("{}: train.offload_activations needs train.gradient_checkpointing: true (it offloads the checkpointed layer "
         "inputs)",
         label);
  return p;
}

LoraSpec lora_spec(const LoraSettings& s) {
  LoraSpec spec;
  spec.r = s.r;
  spec.alpha = s.alpha;
  spec.dropout = s.dropout;
  spec.use_rslora = s.use_rslora;
  for (const auto& name : s.target_modules)
    for (int p = 0; p < kNumProj; ++p)
      if (name == proj_name(static_cast<Proj>(p))) spec.targets[p] = true;
  return spec;
}

}  // namespace ftune

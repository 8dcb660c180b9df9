// `ftune plan RECIPE.yaml [--set key=value]... [--gpu NAME] [--ranks N] [--host-memory GIB] [--json] [--longest]`:
// the memory plan per category, the tokens per step and an estimated step time of a recipe on the
// detected GPU (or the one named), before anything heavy loads (only the recipe and the model's
// config.json are read). The host memory is checked against --host-memory, or, planning for the
// GPU detected here, against this machine's available memory.
#include <fmt/format.h>

#include "cli/commands.h"
#include "core/error.h"
#include "core/host_memory.h"
#include "plan/run_estimate.h"
#include "recipe/run_plan.h"
#include "recipe/train_config.h"

namespace ftune {

namespace {
constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
}  // namespace

void add_plan_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("plan", "Show a recipe's memory plan and estimated step time on a GPU, before training");
  struct Args {
    std::string recipe, gpu;
    std::vector<std::string> sets;
    bool json = false, longest = false;
    int ranks = 1;
    double host_gib = 0;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("recipe", a->recipe, "YAML recipe (see docs/config.md)")->required();
  cmd->add_option("--set", a->sets, "Override a recipe key, e.g. --set train.micro_batch_size=8 (repeatable)");
  std::string names;
  for (const GpuSpec& g : known_gpus()) names += (names.empty() ? "" : ", ") + g.name;
  cmd->add_option("--gpu", a->gpu, "Plan for this GPU instead of the detected one: " + names);
  cmd->add_option("--ranks", a->ranks,
                  "Plan one rank of a run of this many (the world size: nodes x GPUs per node); with dist.zero 3 a "
                  "rank holds 1/N of the weights, gradients and optimizer state")
      ->check(CLI::Range(1, 65536));
  cmd->add_option("--host-memory", a->host_gib,
                  "Check the run's host memory (offloaded layer inputs, paged or offloaded optimizer state) against "
                  "this many GiB; by default against this machine's available memory when planning for its own GPU");
  cmd->add_flag("--json", a->json, "Print the plan as one JSON object");
  cmd->add_flag("--longest", a->longest,
                "Also find the longest data.max_seq_len whose plan fits the GPU (and train.max_memory, and the "
                "host's memory where it is checked), at the recipe's micro-batch size");
  cmd->callback([a, cmd] {
    if (cmd->count("--host-memory") && !(a->host_gib > 0))
      fail("ftune plan: --host-memory is the host's memory in GiB, a number above 0 (got {})", a->host_gib);
    const TrainConfig cfg = load_train_config(a->recipe, a->sets);
    RunPlan plan = make_run_plan(cfg, a->recipe);
    plan.world = a->ranks;
    const LlamaConfig mcfg = load_llama_config(cfg.model);
    GpuSpec gpu;
    bool detected = false;
    if (!a->gpu.empty())
      gpu = find_gpu(a->gpu);
    else if (!(detected = detect_gpu(gpu)))
      fail("ftune plan: no GPU is visible here; name the one to plan for with --gpu (e.g. --gpu T4)");
    const LoraSpec spec = lora_spec(cfg.lora);
    const LoraSpec* sp = plan.method == Method::Full ? nullptr : &spec;
    const size_t host = a->host_gib > 0 ? static_cast<size_t>(a->host_gib * kGiB)
                        : detected      ? host_memory_available()
                                        : 0;
    RunEstimate e = estimate_run(mcfg, sp, plan, cfg.data.max_seq_len, gpu);
    e.gpu_detected = detected;
    check_host_memory(e, host);
    const int64_t longest = a->longest ? longest_fitting_seq(mcfg, sp, plan, gpu, host) : -1;
    // Where the host decides, what the GPU alone would fit.
    const int64_t longest_gpu = a->longest && host ? longest_fitting_seq(mcfg, sp, plan, gpu) : longest;
    if (a->json) {
      std::string j = estimate_json(e);
      if (longest >= 0)
        j.insert(j.size() - 1, fmt::format(", \"longest_seq\": {}, \"longest_seq_gpu\": {}", longest, longest_gpu));
      fmt::print("{}\n", j);
    } else {
      fmt::print("{}", format_estimate(e, mcfg, plan, cfg.model));
      if (longest >= 0)
        fmt::print("longest      {} tokens a row fit{} (micro-batch {}; the model's positions go to {}){}\n", longest,
                   longest == 0 ? " (not even one)" : "", plan.micro_batch, mcfg.max_position_embeddings,
                   longest_gpu > longest
                       ? fmt::format("; the host's {:.2f} GiB decide it: the GPU alone would fit {}",
                                     static_cast<double>(host) / kGiB, longest_gpu)
                       : "");
    }
  });
}

}  // namespace ftune

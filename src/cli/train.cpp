// `ftune train RECIPE.yaml [--set key=value]... [--overwrite]`, and `--help-config`.
#include <fmt/format.h>

#include <cstdlib>

#include "cli/commands.h"
#include "core/error.h"
#include "recipe/train_config.h"
#include "train/trainer.h"

namespace ftune {

void add_train_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("train", "Fine-tune a model (LoRA, QLoRA or full) as a YAML recipe says");
  struct Args {
    std::string recipe;
    std::vector<std::string> sets;
    bool overwrite = false;
    bool help_config = false;
    std::string resume;
    int nproc = 1;
  };
  auto args = std::make_shared<Args>();
  cmd->add_option("recipe", args->recipe, "YAML recipe (see docs/config.md)");
  cmd->add_option("--set", args->sets, "Override a recipe key, e.g. --set lora.r=16 (repeatable)");
  cmd->add_flag("--overwrite", args->overwrite, "Replace ftune's files in a non-empty output_dir");
  cmd->add_flag("--help-config", args->help_config, "Print every recipe key with its default and meaning");
  cmd->add_option("--nproc-per-node", args->nproc,
                  "Start this many ranks on this node (data parallel), as torchrun --nproc-per-node would");
  auto* resume = cmd->add_option("--resume", args->resume,
                                 "Continue from the latest checkpoint in output_dir, or from the checkpoint DIR given")
                     ->expected(0, 1);
  cmd->callback([args, resume] {
    if (args->help_config) {
      fmt::print("{}", train_config_help());
      return;
    }
    if (args->recipe.empty()) throw CLI::RequiredError("recipe");
    if (args->nproc > 1)  // reached only when a launcher already made this process a rank
      fail("--nproc-per-node: this process is already rank {} of a launched run (RANK is set); give the number of "
           "ranks to the launcher, not to ftune",
           std::getenv("RANK") ? std::getenv("RANK") : "?");
    TrainConfig cfg = load_train_config(args->recipe, args->sets);
    if (args->overwrite) cfg.overwrite = true;
    if (resume->count()) cfg.resume_from = args->resume.empty() ? "latest" : args->resume;
    const TrainReport r = run_training(cfg);
    if (!r.steps.empty() && r.wrote_outputs)
      fmt::print(stderr, "ftune: done: {} steps, loss {:.4f} -> {:.4f}; {} written to {}\n", r.steps.size(),
                 r.steps.front().loss, r.steps.back().loss, cfg.train.method == "full" ? "model" : "adapter",
                 cfg.output_dir);
  });
}

}  // namespace ftune

// `ftune merge --model BASE --adapter DIR --out DIR [--overwrite]`: the base with the adapter
// folded in, as a Hugging Face model directory in the base's dtype.
#include <fmt/format.h>

#include "cli/commands.h"
#include "core/error.h"
#include "io/peft_adapter.h"
#include "model/merge.h"
#include "train/run_output.h"

namespace ftune {

void add_merge_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("merge", "Fold a LoRA adapter into its base model (a Hugging Face model directory)");
  struct Args {
    std::string model, adapter, out;
    bool overwrite = false;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("--model", a->model, "Base model directory (in its original precision, not 4-bit)")->required();
  cmd->add_option("--adapter", a->adapter, "PEFT adapter directory")->required();
  cmd->add_option("--out", a->out, "Output directory for the merged model")->required();
  cmd->add_flag("--overwrite", a->overwrite, "Replace ftune's files in a non-empty --out");
  cmd->callback([a] {
    RunOutput out(a->out, a->overwrite, {a->model, a->adapter});
    const LoraParams lora = load_peft_adapter(a->adapter, load_llama_config(a->model));
    out.begin();
    save_merged_model(out.staging_dir(), a->model, lora);
    out.commit([](const std::string& n) {
      return n.starts_with("model") && (n.ends_with(".safetensors") || n == "model.safetensors.index.json");
    });
    fmt::print(stderr, "ftune: wrote {} ({} merged into {})\n", a->out, a->adapter, a->model);
  });
}

}  // namespace ftune

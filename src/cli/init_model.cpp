// `ftune init-model --preset NAME --random OUT`: a Hugging Face model directory with random
// weights, for quick runs, tests and benchmarks.
#include <fmt/format.h>

#include <filesystem>

#include "cli/commands.h"
#include "core/error.h"
#include "model/presets.h"
#include "model/weights.h"
#include "train/run_output.h"

namespace ftune {

void add_init_model_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("init-model", "Write a model with random weights in Hugging Face format");
  struct Args {
    std::string preset = "tiny", out, dtype = "", tokenizer;
    int64_t vocab = -1;  // -1: the preset's
    uint64_t seed = 0;
    bool random = false, overwrite = false;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("--preset", a->preset, "Model shape: tiny, tinyllama, llama2-7b, llama2-13b, llama2-70b, llama3-8b, llama3-70b");
  cmd->add_option("--random", a->out, "Output directory (weights drawn from N(0, 0.02))")->required();
  cmd->add_option("--vocab-size", a->vocab, "Override the preset's vocabulary size");
  cmd->add_option("--dtype", a->dtype, "Stored dtype: float32, bfloat16 or float16 (default: the preset's)");
  cmd->add_option("--seed", a->seed, "Random seed");
  cmd->add_option("--tokenizer", a->tokenizer, "Copy tokenizer.model from this directory");
  cmd->add_flag("--overwrite", a->overwrite, "Allow a non-empty output directory");
  cmd->callback([a] {
    LlamaConfig cfg = preset_config(a->preset);
    if (a->vocab != -1 && a->vocab < 1) fail("--vocab-size: must be at least 1, found {}", a->vocab);
    if (a->vocab > 0) cfg.vocab_size = a->vocab;
    if (!a->dtype.empty()) cfg.torch_dtype = a->dtype;
    DType dt = DType::F32;
    if (cfg.torch_dtype == "bfloat16") dt = DType::BF16;
    else if (cfg.torch_dtype == "float16") dt = DType::F16;
    else if (cfg.torch_dtype != "float32") fail("--dtype: expected float32, bfloat16 or float16, found '{}'", cfg.torch_dtype);
    RunOutput out(a->out, a->overwrite);
    namespace fs = std::filesystem;
    if (!a->tokenizer.empty() && !fs::is_regular_file(fs::path(a->tokenizer) / "tokenizer.model"))
      fail("{}/tokenizer.model: not found", a->tokenizer);
    out.begin();  // the model appears in a->out complete or not at all
    save_llama_model(cfg, random_llama_weights(cfg, a->seed), out.staging_dir(), dt);
    if (!a->tokenizer.empty()) {
      std::error_code ec;
      fs::copy_file(fs::path(a->tokenizer) / "tokenizer.model", out.staged("tokenizer.model"),
                    fs::copy_options::overwrite_existing, ec);
      if (ec) fail("{}/tokenizer.model: cannot copy: {}", a->tokenizer, ec.message());
    }
    out.commit();
    fmt::print(stderr, "ftune: wrote {} ({}, {:.1f}M parameters, {})\n", a->out, a->preset,
               static_cast<double>(cfg.num_parameters()) / 1e6, cfg.torch_dtype);
  });
}

}  // namespace ftune

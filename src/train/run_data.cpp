// The tokenizer and examples of a recipe.
#include "train/run_data.h"

#include <filesystem>

namespace ftune {

RunData load_run_data(const TrainConfig& cfg, const LlamaConfig& mcfg) {
  namespace fs = std::filesystem;
  RunData d;
  const std::string& format = cfg.data.format;
  const bool has_tokenizer = fs::exists(fs::path(cfg.model) / "tokenizer.model") ||
                             fs::exists(fs::path(cfg.model) / "tokenizer.json");
  if (format != "input_ids" && (format != "auto" || has_tokenizer)) d.tokenizer = load_tokenizer(cfg.model);
  d.split = load_data(cfg.data, d.tokenizer.get(), mcfg.vocab_size, cfg.model, cfg.train.seed);
  return d;
}

}  // namespace ftune

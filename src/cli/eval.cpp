// `ftune eval --model DIR [--adapter DIR] (--data FILE | --choices FILE.jsonl) [--out FILE.json]`:
// perplexity over a dataset's trained tokens (any format ftune trains on, read as training reads
// it), or accuracy on multiple-choice rows as lm-evaluation-harness computes acc and acc_norm; one
// JSON object on stdout (and in --out). --device gpu scores through the GPU decoder.
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

#include "cli/commands.h"
#include "cli/decoder_choice.h"
#include "cli/output_file.h"
#include "core/error.h"
#include "data/dataset.h"
#include "infer/eval.h"
#include "io/checkpoint.h"
#include "io/peft_adapter.h"
#include "tokenizer/tokenizer.h"

namespace ftune {

namespace {

struct Args {
  std::string model, adapter, data, choices, out, format = "auto", template_name = "auto", train_on = "all";
  std::string text_field = "text";
  int64_t max_seq_len = 0, batch = 4;
  bool overwrite = false;
  DecoderChoice dec;
};

void run_eval(const Args& a) {
  if (a.data.empty() == a.choices.empty()) fail("ftune eval: give one of --data (perplexity) or --choices (multiple choice)");
  if (a.batch < 1) fail("--batch must be >= 1, got {}", a.batch);
  if (!a.out.empty()) check_output_file_path(a.out, a.overwrite, a.data.empty() ? a.choices : a.data);
  check_decoder_choice(a.dec);
  const LlamaConfig cfg = load_llama_config(a.model);
  // The CPU scores with the training model's forward; the GPU through its decoder (the weights
  // read onto the device by it, the adapter unmerged).
  LlamaWeights w;
  if (!a.dec.gpu()) w = load_llama_weights(cfg, CheckpointReader(a.model));
  const std::unique_ptr<Decoder> dec = a.dec.gpu() ? make_decoder(a.dec, cfg, a.model, nullptr) : nullptr;
  LoraParams lora;
  if (!a.adapter.empty()) lora = load_peft_adapter(a.adapter, cfg);
  const LoraParams* lp = a.adapter.empty() ? nullptr : &lora;
  nlohmann::json j;
  j["model"] = a.model;
  if (!a.adapter.empty()) j["adapter"] = a.adapter;
  if (!a.data.empty()) {
    DataSettings ds;
    ds.train = a.data, ds.format = a.format, ds.template_name = a.template_name, ds.train_on = a.train_on;
    ds.text_field = a.text_field;
    ds.max_seq_len = a.max_seq_len > 0 ? a.max_seq_len : cfg.max_position_embeddings;
    ds.pad_to_multiple_of = 1;
    std::unique_ptr<Tokenizer> tok;
    if (a.format != "input_ids") tok = load_tokenizer(a.model);
    const DataSplit split = load_data(ds, tok.get(), cfg.vocab_size, a.model, 0);
    if (split.train.empty()) fail("{}: no example with a trained token to score", a.data);
    const PerplexityResult r = dec ? perplexity(*dec, lp, split.train) : perplexity(cfg, w, lp, split.train, a.batch);
    j["task"] = "perplexity", j["data"] = a.data, j["examples"] = r.examples, j["tokens"] = r.tokens;
    j["loss"] = r.loss(), j["perplexity"] = r.perplexity();
  } else {
    const std::vector<ChoiceItem> items = load_choice_items(a.choices);
    const std::unique_ptr<Tokenizer> tok = load_tokenizer(a.model);
    const TokenPairs pairs = choice_pairs(*tok, items);
    const ChoiceResult r = score_choices(items, dec ? loglikelihoods(*dec, lp, pairs) : loglikelihoods(cfg, w, lp, pairs));
    j["task"] = "multiple_choice", j["data"] = a.choices, j["items"] = r.items, j["acc"] = r.acc;
    j["acc_norm"] = r.acc_norm, j["picked"] = r.picked, j["picked_norm"] = r.picked_norm;
  }
  const std::string text = j.dump() + "\n";
  if (!a.out.empty()) write_output_file(a.out, a.overwrite, text);
  fmt::print("{}", text);
}

}  // namespace

void add_eval_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("eval", "Perplexity on a dataset, or multiple-choice accuracy (acc, acc_norm), on the CPU or GPU");
  auto a = std::make_shared<Args>();
  cmd->add_option("--model", a->model, "Hugging Face model directory")->required();
  cmd->add_option("--adapter", a->adapter, "PEFT adapter directory");
  cmd->add_option("--data", a->data, "Perplexity over this dataset's trained tokens (the formats ftune trains on)");
  cmd->add_option("--choices", a->choices, "Multiple choice: JSONL rows {\"context\", \"choices\": [...], \"gold\"}");
  cmd->add_option("--format", a->format, "--data's row format, as data.format (default auto)")
      ->check(CLI::IsMember({"auto", "text", "alpaca", "messages", "prompt_completion", "input_ids"}));
  cmd->add_option("--template", a->template_name, "--data's prompt template, as data.template (default auto)")
      ->check(CLI::IsMember({"auto", "llama2", "llama3", "llama3.1", "mistral", "chatml", "alpaca"}));
  cmd->add_option("--train-on", a->train_on, "Tokens scored: all (default) or completion, as data.train_on")
      ->check(CLI::IsMember({"all", "completion"}));
  cmd->add_option("--text-field", a->text_field, "The field of a text row (default text)");
  cmd->add_option("--max-seq-len", a->max_seq_len, "Rows cut to this many tokens (default: the model's context)");
  cmd->add_option("--batch", a->batch, "Rows per forward pass for --data (default 4)")->check(CLI::PositiveNumber);
  cmd->add_option("--out", a->out, "Also write the JSON result here");
  cmd->add_flag("--overwrite", a->overwrite, "Replace --out if it exists");
  add_decoder_options(cmd, a->dec);
  cmd->callback([a] { run_eval(*a); });
}

}  // namespace ftune

// `ftune generate --model DIR [--adapter DIR] (--prompt TEXT | --input rows.jsonl) [options]`:
// text from the model and adapter, greedy or sampled, with a KV cache on the CPU or the GPU
// (--device); every prompt of --input decoded together.
// --prompt streams the completion to stdout; --input reads JSONL rows ({"prompt": text} or
// {"input_ids": [...]}) and writes one JSON line per row ({"completion", "tokens", "finish_reason"}).
#include <fmt/format.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/decoder_choice.h"
#include "cli/output_file.h"
#include "core/error.h"
#include "core/json_limits.h"
#include "data/chat_template.h"
#include "infer/generate.h"
#include "io/checkpoint.h"
#include "io/peft_adapter.h"
#include "model/merge.h"
#include "model/weights.h"
#include "tokenizer/tokenizer.h"

namespace ftune {

namespace {

struct Args {
  std::string model, adapter, prompt, input, out;
  int64_t max_new_tokens = 64;
  double temperature = 0.0, top_p = 1.0;
  int64_t top_k = 0;
  uint64_t seed = 0;
  std::vector<std::string> stop;
  bool ignore_eos = false, no_bos = false, overwrite = false;
  std::string chat;  // a chat template's name, or "auto": the model's own
  std::string system;
  DecoderChoice dec;
};

void run(const Args& a) {
  if (a.prompt.empty() == a.input.empty()) fail("generate: give one of --prompt TEXT or --input rows.jsonl");
  if (!a.out.empty()) check_output_file_path(a.out, a.overwrite, a.input);
  if (a.max_new_tokens < 0) fail("--max-new-tokens must be >= 0, got {}", a.max_new_tokens);
  if (a.temperature < 0) fail("--temperature must be >= 0, got {}", a.temperature);
  if (!(a.top_p > 0 && a.top_p <= 1)) fail("--top-p must be in (0, 1], got {}", a.top_p);
  check_decoder_choice(a.dec);
  const LlamaConfig cfg = load_llama_config(a.model);
  // The CPU merges the adapter into its fp32 weights (peft's merge_and_unload); the GPU keeps its
  // base as loaded (bf16, fp16 or NF4) and applies the adapter unmerged, as peft's forward does.
  LlamaWeights w;
  LoraParams lora;
  if (!a.adapter.empty()) lora = load_peft_adapter(a.adapter, cfg);
  if (!a.dec.gpu()) {
    w = load_llama_weights(cfg, CheckpointReader(a.model));
    if (!a.adapter.empty()) merge_adapter(w, lora);
  }
  // The tokenizer: needed for text prompts and stop strings; rows of input_ids alone do without.
  std::unique_ptr<Tokenizer> tok;
  std::string no_tokenizer;
  try {
    tok = load_tokenizer(a.model);
  } catch (const Error& e) {
    no_tokenizer = e.what();
  }
  auto need_tokenizer = [&] {
    if (!tok) fail("{}", no_tokenizer);
  };
  if (!a.stop.empty()) need_tokenizer();
  std::string chat = a.chat;
  if (chat == "auto") {
    chat = detect_chat_template(a.model);
    if (chat.empty())
      fail("{}: --chat auto: the model's tokenizer_config.json has no chat template ftune knows; name one: llama2, "
           "llama3, llama3.1, mistral or chatml",
           a.model);
  }
  auto encode = [&](const std::string& text) {
    need_tokenizer();
    if (!chat.empty()) {  // the text as the first user turn, the prompt ending where the answer begins
      std::vector<Turn> turns;
      if (!a.system.empty()) turns.push_back({"system", a.system});
      turns.push_back({"user", text});
      return chat_prompt_ids(chat, turns, *tok);
    }
    std::vector<int32_t> ids;
    if (!a.no_bos && tok->bos_id() >= 0) ids.push_back(tok->bos_id());
    const auto t = tok->encode(text);
    ids.insert(ids.end(), t.begin(), t.end());
    return ids;
  };
  std::vector<std::vector<int32_t>> prompts;
  std::vector<std::string> texts;
  if (!a.prompt.empty()) {
    prompts.push_back(encode(a.prompt)), texts.push_back(a.prompt);
  } else {
    std::ifstream f(a.input);
    if (!f) fail("{}: cannot open", a.input);
    int64_t row = 0;
    for (std::string line; std::getline(f, line);) {
      ++row;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      nlohmann::json j;
      try {
        j = parse_json_bounded(line);
      } catch (const std::exception& e) {
        fail("{}: row {}: not JSON ({})", a.input, row, e.what());
      }
      if (j.contains("prompt") && j["prompt"].is_string()) {
        texts.push_back(j["prompt"]), prompts.push_back(encode(texts.back()));
      } else if (j.contains("input_ids") && j["input_ids"].is_array()) {
        std::vector<int32_t> ids;
        for (const auto& v : j["input_ids"]) {
          if (!v.is_number_integer()) fail("{}: row {}: input_ids must be integers", a.input, row);
          ids.push_back(v.get<int32_t>());
        }
        prompts.push_back(ids), texts.emplace_back();
      } else {
        fail("{}: row {}: expected a \"prompt\" string or an \"input_ids\" list", a.input, row);
      }
    }
    if (prompts.empty()) fail("{}: no rows", a.input);
  }
  GenerateOptions o;
  o.max_new_tokens = a.max_new_tokens;
  o.sampling = {a.temperature, a.top_k, a.top_p, a.seed};
  o.stop = a.stop;
  if (!a.ignore_eos)
    for (int64_t e : cfg.eos_token_ids) o.eos_ids.push_back(static_cast<int32_t>(e));
  const std::unique_ptr<Decoder> dec = make_decoder(a.dec, cfg, a.model, &w);
  BatchOptions bo;
  bo.adapter = a.dec.gpu() && !a.adapter.empty() ? &lora : nullptr;
  if (!a.prompt.empty()) {  // one prompt: stream its text
    const auto g = generate(
        *dec, tok.get(), prompts, o,
        [](int64_t, const std::string& piece) {
          std::fwrite(piece.data(), 1, piece.size(), stdout);
          std::fflush(stdout);
        },
        bo);
    std::fputc('\n', stdout);
    fmt::print(stderr, "ftune: {} tokens, finished by {}\n", g[0].tokens.size(), g[0].finish_reason);
    return;
  }
  const auto gens = generate(*dec, tok.get(), prompts, o, {}, bo);
  std::string text;
  for (size_t i = 0; i < gens.size(); ++i) {
    nlohmann::json j = {{"completion", gens[i].text}, {"tokens", gens[i].tokens}, {"finish_reason", gens[i].finish_reason},
                        {"prompt_tokens", prompts[i].size()}};
    if (!texts[i].empty()) j["prompt"] = texts[i];
    text += j.dump() + "\n";
  }
  if (a.out.empty())
    fmt::print("{}", text);
  else
    write_output_file(a.out, a.overwrite, text);
}

}  // namespace

void add_generate_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("generate", "Generate text with a model and optionally an adapter (CPU or GPU, KV cache)");
  auto a = std::make_shared<Args>();
  cmd->add_option("--model", a->model, "Hugging Face model directory")->required();
  cmd->add_option("--adapter", a->adapter, "PEFT adapter directory (merged on the CPU, unmerged on the GPU)");
  cmd->add_option("--prompt", a->prompt, "Prompt text (the completion streams to stdout)");
  cmd->add_option("--input", a->input, "JSONL rows of {\"prompt\": text} or {\"input_ids\": [...]}");
  cmd->add_option("--out", a->out, "Where --input's results go (JSONL; default stdout)");
  cmd->add_flag("--overwrite", a->overwrite, "Replace --out if it exists");
  cmd->add_option("--max-new-tokens", a->max_new_tokens, "Tokens to generate at most (default 64)");
  cmd->add_option("--temperature", a->temperature, "0 (default): greedy; above 0: sampling at this temperature");
  cmd->add_option("--top-k", a->top_k, "Sample among the k most likely tokens (0: all)");
  cmd->add_option("--top-p", a->top_p, "Sample among the most likely tokens whose probability adds up to p (1: all)");
  cmd->add_option("--seed", a->seed, "Sampling seed");
  cmd->add_option("--stop", a->stop, "Stop when the text contains this string (repeatable)");
  cmd->add_flag("--ignore-eos", a->ignore_eos, "Do not stop at the model's EOS tokens");
  cmd->add_flag("--no-bos", a->no_bos, "Do not put BOS before text prompts");
  cmd->add_option("--chat", a->chat,
                  "Put text prompts in a chat template (llama2, llama3, llama3.1, mistral, chatml, or auto: the model's)")
      ->expected(0, 1)
      ->default_str("auto");
  cmd->add_option("--system", a->system, "With --chat: a system message first");
  add_decoder_options(cmd, a->dec);
  cmd->callback([a] { run(*a); });
}

}  // namespace ftune

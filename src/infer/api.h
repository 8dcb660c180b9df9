// The OpenAI-compatible API of `ftune serve`, apart from the network: each route turns a request's
// JSON into the response's over the ServingEngine (legacy completions with echo and logprobs as
// lm-evaluation-harness reads them, chat completions, models, and vLLM's tokenizer routes).
// Every request the client gets wrong is a 4xx with {"error": {"message", "type", "param", "code"}}.
#pragma once
#include <atomic>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "infer/engine.h"
#include "tokenizer/tokenizer.h"

namespace ftune {

// What the routes say about the base beside the engine.
struct ServedModel {
  std::string name;                             // the base's name in requests and in /v1/models
  std::string chat_template;  // ftune's template for chat requests: llama2, llama3, llama3.1, mistral, chatml ("": none)
  std::string chat_template_source;             // tokenizer_config.json's Jinja text, for /tokenizer_info ("": none)
  std::string tokenizer_class;                  // tokenizer_config.json's, or "" when it names none
  std::string bos_token, eos_token, pad_token;  // the special tokens' strings ("": none)
};

// The served model of a Hugging Face directory: its tokenizer_config.json (bos, eos and pad
// strings, chat template) where present, else the tokenizer's own token strings. `chat` names the
// template ("auto": the one the model's chat_template is).
ServedModel served_model(const std::string& name, const std::string& model_dir, const Tokenizer* tok,
                         const LlamaConfig& cfg, const std::string& chat);

class Api {
 public:
  struct Reply {
    int status = 200;
    nlohmann::json body;
  };

  // `tok` may be null: token-id prompts only. Both must outlive the Api.
  Api(ServingEngine& engine, const Tokenizer* tok, ServedModel model);
  // Any request; never throws (a failure inside is a 500 with its message).
  Reply handle(const std::string& method, const std::string& path, const std::string& body);
  // The ids of a text as the server tokenizes it: BOS first when add_special, and the special
  // tokens' strings (BOS, EOS, template tokens) as their ids, as Hugging Face tokenizers read them.
  std::vector<int32_t> encode_text(const std::string& text, bool add_special) const;

 private:
  nlohmann::json completions(const nlohmann::json& req);
  nlohmann::json chat(const nlohmann::json& req);
  nlohmann::json models() const;
  nlohmann::json tokenize(const nlohmann::json& req) const;
  nlohmann::json detokenize(const nlohmann::json& req) const;
  nlohmann::json tokenizer_info() const;
  // "" for the base, else the adapter's name; unknown names are a 404.
  std::string adapter_of(const nlohmann::json& req) const;
  // Sampling, stop strings and EOS ids of a completion or chat request.
  GenerateOptions generation(const nlohmann::json& req, int64_t max_tokens) const;
  void check_context(const std::vector<int32_t>& prompt, int64_t max_tokens, const char* what) const;
  std::vector<int32_t> chat_prompt(const nlohmann::json& messages) const;
  const Tokenizer& need_tokenizer(const char* field) const;
  // The text token seq[i] adds after the tokens before it (decoded with a few of them, so that a
  // word-start space shows); "token_id:N" without a tokenizer or when `as_ids`.
  std::string piece(const std::vector<int32_t>& seq, size_t i, int32_t token, bool as_ids) const;
  nlohmann::json completion_logprobs(const std::vector<int32_t>& prompt, const SequenceResult& r, bool echo,
                                     bool as_ids) const;
  nlohmann::json chat_logprobs(const std::vector<int32_t>& prompt, const SequenceResult& r) const;

  ServingEngine& engine_;
  const Tokenizer* tok_;
  ServedModel model_;
  std::vector<std::pair<std::string, int32_t>> specials_;  // cut out of text before encoding, longest first
  std::atomic<uint64_t> next_id_{0};
};

}  // namespace ftune

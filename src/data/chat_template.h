// Prompt templates: a Sample rendered as pieces of text and special tokens, each marked as
// trained (completion) or not (prompt), then tokenized piece by piece into ids and labels.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "data/formats.h"

namespace ftune {

class Tokenizer;

struct Piece {
  std::string text;      // text to tokenize, or a special token's string when special
  bool special = false;  // one token, looked up by its string (or `id` when set)
  int32_t id = -1;
  bool trained = false;
};

struct TemplateOptions {
  std::string name = "auto";  // llama2, llama3, llama3.1, mistral, chatml, alpaca, custom (auto resolved by the caller)
  std::string custom;         // for "custom": text with {prompt} and {completion} (and optionally {system})
  bool train_on_all = false;  // false: only completions are trained
  bool add_bos = true, add_eos = true;  // for text rows
};

// Pieces for a Sample of kind Text or Chat.
std::vector<Piece> render(const Sample& s, const TemplateOptions& opt, const Tokenizer& tok);

// Token ids and labels (-100 where not trained) of the pieces. Throws ftune::Error when a
// template's special token is not in the tokenizer.
void tokenize_pieces(const std::vector<Piece>& pieces, const Tokenizer& tok, const std::string& template_name,
                     std::vector<int32_t>* ids, std::vector<int32_t>* labels);

// The template a model's tokenizer_config.json chat_template belongs to (llama3.1, llama3, llama2, mistral, chatml),
// or "" when there is none or it is not one ftune knows.
std::string detect_chat_template(const std::string& model_dir);
// The chat_template text of a model's tokenizer_config.json (the Jinja source; of a list of
// named templates, the default one), or "" when there is none.
std::string chat_template_source(const std::string& model_dir);

// A conversation's ids in template `name` up to where the assistant's next answer begins: the
// turns, then an assistant turn cut before its answer (the pieces the template trains), as a
// chat_template renders with add_generation_prompt; chat_prompt_pieces gives the pieces.
std::vector<Piece> chat_prompt_pieces(const std::string& name, const std::vector<Turn>& turns, const Tokenizer& tok);
std::vector<int32_t> chat_prompt_ids(const std::string& name, const std::vector<Turn>& turns, const Tokenizer& tok);
// The special token that ends an assistant turn in template `name` ("" where it is the EOS).
std::string end_of_turn_token(const std::string& name);

}  // namespace ftune

// Text -> token ids. One interface; SentencePiece (.model) now, tokenizer.json later.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace ftune {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Ids of `text` without special tokens.
  virtual std::vector<int32_t> encode(const std::string& text) const = 0;
  virtual std::string decode(const std::vector<int32_t>& ids) const = 0;
  virtual int64_t vocab_size() const = 0;
  virtual int32_t bos_id() const = 0;  // -1 when none
  virtual int32_t eos_id() const = 0;  // -1 when none
  // Id of a token given by its exact string ("<s>", "<|eot_id|>"), -1 when absent.
  virtual int32_t token_id(const std::string& token) const { return -1; }
  // The token string of an id ("<s>", "<0x0A>", SentencePiece word pieces with their marker), ""
  // for ids outside the vocabulary.
  virtual std::string id_to_token(int32_t id) const { return ""; }
  // True when encode() starts every text with a word-boundary marker (SentencePiece's dummy
  // prefix): template pieces after the first then drop one leading space, so that they
  // tokenize as they would in context.
  virtual bool adds_dummy_prefix() const { return false; }
  // Ids of `text` as it tokenizes right after other text, with no word-boundary marker at its
  // start (what Hugging Face tokenizers give a template's text that continues the text before it
  // in one string); encode() where encode() adds none.
  virtual std::vector<int32_t> encode_continuation(const std::string& text) const { return encode(text); }
};

// Loads the tokenizer of a model directory (tokenizer.model through libsentencepiece).
// Throws ftune::Error naming the directory when none is found or the file is invalid.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& model_dir);

}  // namespace ftune

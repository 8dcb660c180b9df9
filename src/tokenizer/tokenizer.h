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
};

// Loads the tokenizer of a model directory (tokenizer.model through libsentencepiece).
// Throws ftune::Error naming the directory when none is found or the file is invalid.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& model_dir);

}  // namespace ftune

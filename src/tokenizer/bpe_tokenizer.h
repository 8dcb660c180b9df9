// Tokenizer over a Hugging Face tokenizer.json (BPE model): added tokens, normalizer, pre-tokenizer,
// model, post-processor and decoder, giving the same ids as the `tokenizers` library.
#pragma once
#include <array>
#include <memory>
#include <string>
#include <vector>

#include "tokenizer/bpe_model.h"
#include "tokenizer/text_stages.h"
#include "tokenizer/tokenizer.h"

namespace ftune {

class BpeTokenizer final : public Tokenizer {
 public:
  // `path` is the tokenizer.json; a tokenizer_config.json beside it supplies bos/eos when present.
  explicit BpeTokenizer(const std::string& path);
  ~BpeTokenizer() override;

  std::vector<int32_t> encode(const std::string& text) const override;
  // With add_special, the post-processor's template for one sequence (e.g. <s> first) is applied,
  // or, without a template, tokenizer_config.json's add_bos_token / add_eos_token.
  std::vector<int32_t> encode_with_special(const std::string& text, bool add_special) const;
  std::string decode(const std::vector<int32_t>& ids) const override;
  int64_t vocab_size() const override { return static_cast<int64_t>(id_to_token_.size()); }
  int32_t bos_id() const override { return bos_id_; }
  int32_t eos_id() const override { return eos_id_; }
  int32_t token_id(const std::string& token) const override { return lookup(token); }
  bool adds_dummy_prefix() const override { return normalizer_->prepends() || pre_tokenizer_->prepends(); }
  std::vector<int32_t> encode_continuation(const std::string& text) const override;

  // The token text of an id ("" for ids outside the vocabulary).
  std::string id_to_token(int32_t id) const override;

 private:
  struct AddedToken {
    std::string content;
    int32_t id;
    bool special, lstrip, rstrip, single_word, normalized;
  };
  // A run of text, or a matched added token (id >= 0).
  struct Segment {
    size_t begin, end;
    int32_t id;
  };
  void load_added_tokens(const nlohmann::json& node);
  void load_post_processor(const nlohmann::json& node, const std::string& where);
  void load_config();
  // Splits text[begin, end) on the added tokens in `set` (leftmost, then longest).
  // Added-token indices by first byte, longest first.
  using Buckets = std::array<std::vector<int>, 256>;
  void split_added(const std::string& text, size_t begin, size_t end, const Buckets& set,
                   std::vector<Segment>& out) const;
  // `continues`: the text continues earlier text (no marker prepended to its start).
  std::vector<int32_t> encode_text(const std::string& text, bool continues) const;
  void encode_into(const std::string& text, std::vector<int32_t>& out, bool continues = false) const;
  void encode_plain(std::string piece, bool at_start, std::vector<int32_t>& out, bool continues = false) const;
  int32_t lookup(const std::string& token) const;

  std::string path_;
  std::unique_ptr<BpeModel> model_;
  std::unique_ptr<Normalizer> normalizer_;
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  std::unique_ptr<Decoder> decoder_;
  std::vector<AddedToken> added_;
  Buckets raw_added_, normalized_added_;
  bool has_normalized_added_ = false;
  std::vector<std::string> id_to_token_;
  // Template for a single sequence: ids before and after it, when a post-processor gives one.
  bool has_template_ = false;
  std::vector<int32_t> template_before_, template_after_;
  bool config_add_bos_ = false, config_add_eos_ = false;
  int32_t bos_id_ = -1, eos_id_ = -1;
};

std::unique_ptr<BpeTokenizer> make_bpe_tokenizer(const std::string& path);

}  // namespace ftune

// The text stages of a tokenizer.json pipeline around the BPE model: normalizers, pre-tokenizers
// and decoders, each parsed from its JSON object and applied in order. Also UTF-8 helpers they share.
#pragma once
#include <nlohmann/json.hpp>

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace ftune {

// One piece of text on its way to the model. `at_start`: it begins at byte 0 of the caller's text,
// which Metaspace's prepend_scheme "first" needs.
struct PreToken {
  std::string text;
  bool at_start = false;
  bool continues = false;  // it continues text the caller tokenized before: no Metaspace marker
};

// Length of the UTF-8 sequence starting with lead byte `b` (1 for stray bytes, so loops advance).
int utf8_len(unsigned char b);
// Decodes the code point at s[i] (s must be valid UTF-8).
uint32_t utf8_decode(std::string_view s, size_t i);
void utf8_append(std::string& out, uint32_t cp);
// Byte offset of the first invalid sequence, or npos when `s` is valid UTF-8.
size_t utf8_invalid_at(std::string_view s);
// Replaces each maximal invalid subsequence by U+FFFD, as Rust's from_utf8_lossy does.
std::string utf8_lossy(std::string_view bytes);
// Unicode White_Space property.
bool is_unicode_space(uint32_t cp);

// A compiled PCRE2 pattern (UTF, UCP, JIT). Matches are byte ranges.
class Regex {
 public:
  // `literal`: the pattern is a plain string, not a regex.
  Regex(const std::string& pattern, bool literal, const std::string& where);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  // Appends the [begin, end) ranges of all non-overlapping matches in `text`.
  void find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>& out) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The byte <-> printable-char table of GPT-2 style byte-level BPE.
class ByteLevelTable {
 public:
  ByteLevelTable();
  const std::string& encode(unsigned char b) const { return to_char_[b]; }
  // The byte for code point cp, or -1 when cp is not one of the 256 chars.
  int decode(uint32_t cp) const { return cp < from_char_.size() ? from_char_[cp] : -1; }

 private:
  std::array<std::string, 256> to_char_;
  std::array<int16_t, 512> from_char_{};
};

class Normalizer {
 public:
  // `node` may be null (no normalizer). `where` names the file and key for errors.
  Normalizer(const nlohmann::json& node, const std::string& where);
  ~Normalizer();
  bool empty() const { return steps_.empty(); }
  // Whether it puts a marker (Prepend) before every text.
  bool prepends() const;
  // `continues`: the text continues earlier text, so Prepend steps are skipped.
  void apply(std::string& text, bool continues = false) const;

 private:
  struct Step;
  void add(const nlohmann::json& node, const std::string& where);
  std::vector<Step> steps_;
};

class PreTokenizer {
 public:
  PreTokenizer(const nlohmann::json& node, const std::string& where);
  ~PreTokenizer();
  bool empty() const { return steps_.empty(); }
  // Whether a Metaspace step prepends its marker to the start of the text.
  bool prepends() const;
  // Splits and rewrites the pieces in place.
  void apply(std::vector<PreToken>& pieces) const;

 private:
  struct Step;
  void add(const nlohmann::json& node, const std::string& where);
  std::vector<Step> steps_;
  ByteLevelTable bytes_;
};

class Decoder {
 public:
  Decoder(const nlohmann::json& node, const std::string& where);
  ~Decoder();
  std::string decode(std::vector<std::string> tokens) const;

 private:
  struct Step;
  void add(const nlohmann::json& node, const std::string& where);
  std::vector<Step> steps_;
  ByteLevelTable bytes_;
};

}  // namespace ftune

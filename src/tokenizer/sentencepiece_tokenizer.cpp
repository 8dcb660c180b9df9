// Tokenizer of a model directory: SentencePiece `tokenizer.model` (Llama 1/2 and look-alikes)
// through libsentencepiece.
#include <algorithm>
#include <sentencepiece_processor.h>

#include <filesystem>

#include "core/error.h"
#include "tokenizer/bpe_tokenizer.h"
#include "tokenizer/tokenizer.h"

namespace ftune {
namespace {

namespace fs = std::filesystem;

// libsentencepiece's status text, kept to one line.
std::string one_line(const sentencepiece::util::Status& s) {
  std::string out = s.ToString();
  for (char& c : out)
    if (c == '\n' || c == '\r') c = ' ';
  return out;
}

class SentencePieceTokenizer final : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(const std::string& path) : path_(path) {
    auto status = sp_.Load(path);
    if (!status.ok()) fail("{}: not a valid SentencePiece model ({})", path, one_line(status));
    if (sp_.GetPieceSize() <= 0) fail("{}: SentencePiece model has no pieces", path);
    unk_ = sp_.IdToPiece(sp_.unk_id());
    unk_ids_ = encode(unk_);
  }

  std::vector<int32_t> encode(const std::string& text) const override {
    std::vector<int> ids;
    auto status = sp_.Encode(text, &ids);
    if (!status.ok()) fail("{}: cannot encode text ({})", path_, one_line(status));
    return {ids.begin(), ids.end()};
  }

  // libsentencepiece always adds its dummy prefix; as transformers' LlamaTokenizer does for text
  // that must not start a word (legacy=False), the unknown piece goes first and its ids are dropped.
  std::vector<int32_t> encode_continuation(const std::string& text) const override {
    if (text.empty()) return {};
    const std::vector<int32_t> all = encode(unk_ + text);
    if (all.size() < unk_ids_.size() || !std::equal(unk_ids_.begin(), unk_ids_.end(), all.begin())) return encode(text);
    return {all.begin() + static_cast<ptrdiff_t>(unk_ids_.size()), all.end()};
  }

  std::string decode(const std::vector<int32_t>& ids) const override {
    const int64_t n = vocab_size();
    // libsentencepiece does not range-check ids on every path, so do it here.
    for (int32_t id : ids)
      if (id < 0 || id >= n) fail("{}: token id {} is outside the vocabulary [0, {})", path_, id, n);
    std::string text;
    auto status = sp_.Decode(std::vector<int>(ids.begin(), ids.end()), &text);
    if (!status.ok()) fail("{}: cannot decode ids ({})", path_, one_line(status));
    return text;
  }

  int64_t vocab_size() const override { return sp_.GetPieceSize(); }
  int32_t bos_id() const override { return sp_.bos_id(); }
  int32_t eos_id() const override { return sp_.eos_id(); }
  int32_t token_id(const std::string& token) const override {
    const int id = sp_.PieceToId(token);
    return (id == sp_.unk_id() && token != sp_.IdToPiece(sp_.unk_id())) ? -1 : id;
  }
  std::string id_to_token(int32_t id) const override {
    return id >= 0 && id < vocab_size() ? sp_.IdToPiece(id) : std::string();
  }
  bool adds_dummy_prefix() const override {
    std::vector<std::string> pieces;
    sp_.Encode("a", &pieces).IgnoreError();
    return !pieces.empty() && pieces[0].rfind("\xE2\x96\x81", 0) == 0;  // starts with U+2581
  }

 private:
  std::string path_;
  sentencepiece::SentencePieceProcessor sp_;
  std::string unk_;               // the unknown piece's text
  std::vector<int32_t> unk_ids_;  // ... and its ids alone
};

}  // namespace

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& model_dir) {
  if (!fs::is_directory(model_dir)) fail("{}: model directory not found", model_dir);
  const fs::path dir(model_dir);
  if (fs::exists(dir / "tokenizer.json")) return make_bpe_tokenizer((dir / "tokenizer.json").string());
  if (fs::exists(dir / "tokenizer.model"))
    return std::make_unique<SentencePieceTokenizer>((dir / "tokenizer.model").string());
  fail("{}: no tokenizer found (expected tokenizer.json or tokenizer.model)", model_dir);
}

}  // namespace ftune

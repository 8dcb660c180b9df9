// JSONL datasets (text and input_ids rows, overflow handling, every rejected row) and the
// SentencePiece tokenizer they are tokenized with.
#include <gtest/gtest.h>

#include "error_util.h"
#include <sentencepiece_trainer.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "core/error.h"
#include "data/dataset.h"
#include "tokenizer/tokenizer.h"

namespace ftune {
namespace {

namespace fs = std::filesystem;

using testing::expect_error;

class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = fs::temp_directory_path() / ("ftune_dataset_" + std::to_string(rd()) + std::to_string(rd()));
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const fs::path& path() const { return path_; }
  std::string write(const std::string& name, const std::string& text) const {
    std::ofstream(path_ / name, std::ios::binary) << text;
    return (path_ / name).string();
  }

 private:
  fs::path path_;
};

// One id per byte (offset by 3 so that 0..2 stay special), which makes expected ids obvious.
class ByteTokenizer final : public Tokenizer {
 public:
  ByteTokenizer(int32_t bos, int32_t eos) : bos_(bos), eos_(eos) {}
  std::vector<int32_t> encode(const std::string& text) const override {
    std::vector<int32_t> ids;
    for (unsigned char c : text) ids.push_back(3 + c);
    return ids;
  }
  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string s;
    for (int32_t id : ids)
      if (id >= 3) s.push_back(static_cast<char>(id - 3));
    return s;
  }
  int64_t vocab_size() const override { return 259; }
  int32_t bos_id() const override { return bos_; }
  int32_t eos_id() const override { return eos_; }

 private:
  int32_t bos_, eos_;
};

constexpr int64_t kVocab = 259;

std::vector<int32_t> bytes(const std::string& s) { return ByteTokenizer(1, 2).encode(s); }
std::vector<int32_t> cat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

struct Loaded {
  std::vector<Example> examples;
  DatasetStats stats;
};

Loaded load(const TempDir& d, const std::string& jsonl, DataSettings cfg = {}, const Tokenizer* tok = nullptr) {
  static const ByteTokenizer kDefault(1, 2);
  cfg.train = d.write("train.jsonl", jsonl);
  Loaded out;
  out.examples = load_examples(cfg.train, cfg, tok ? tok : &kDefault, kVocab, "alpaca", &out.stats);
  return out;
}

// Runs the loader expecting an error that names train.jsonl (and the line, if given).
void expect_row_error(const std::string& jsonl, const std::string& substr, DataSettings cfg = {},
                      const Tokenizer* tok = nullptr) {
  TempDir d;
  const std::string file = (d.path() / "train.jsonl").string();
  cfg.strict = true;  // fail on the malformed row instead of skipping it
  expect_error([&] { load(d, jsonl, cfg, tok); }, file + substr);
}

TEST(Dataset, TextRowsGetBosAndEosAndAreAllTrained) {
  TempDir d;
  Loaded r = load(d, "{\"text\": \"hello\"}\n{\"text\": \"ab\", \"other\": 1}\n");
  ASSERT_EQ(r.examples.size(), 2u);
  EXPECT_EQ(r.examples[0].ids, cat(cat({1}, bytes("hello")), {2}));
  EXPECT_EQ(r.examples[0].labels, r.examples[0].ids);
  EXPECT_EQ(r.examples[1].ids, (std::vector<int32_t>{1, 3 + 'a', 3 + 'b', 2}));
  EXPECT_EQ(r.stats.rows, 2);
  EXPECT_EQ(r.stats.kept, 2);
  EXPECT_EQ(r.stats.tokens, 7 + 4);
  EXPECT_EQ(r.stats.truncated + r.stats.dropped + r.stats.skipped, 0);
}

TEST(Dataset, TextFieldAndNoSpecialTokens) {
  TempDir d;
  DataSettings cfg;
  cfg.text_field = "content";
  cfg.add_bos = false;
  cfg.add_eos = false;
  cfg.format = "text";
  Loaded r = load(d, "{\"content\": \"xyz\", \"input_ids\": [5]}\n", cfg);
  ASSERT_EQ(r.examples.size(), 1u);
  EXPECT_EQ(r.examples[0].ids, bytes("xyz"));  // format "text" ignores input_ids
}

TEST(Dataset, InputIdsRowsWithAndWithoutLabels) {
  TempDir d;
  Loaded r = load(d,
                  "{\"input_ids\": [1, 10, 11, 12], \"labels\": [-100, -100, 11, 12]}\n"
                  "{\"input_ids\": [5, 6, 258], \"labels\": null}\n"
                  "{\"input_ids\": [7, 8]}\n");
  ASSERT_EQ(r.examples.size(), 3u);
  EXPECT_EQ(r.examples[0].ids, (std::vector<int32_t>{1, 10, 11, 12}));
  EXPECT_EQ(r.examples[0].labels, (std::vector<int32_t>{-100, -100, 11, 12}));
  EXPECT_EQ(r.examples[1].labels, (std::vector<int32_t>{5, 6, 258}));
  EXPECT_EQ(r.examples[2].labels, r.examples[2].ids);
  EXPECT_EQ(r.stats.tokens, 9);
}

TEST(Dataset, AutoDecidesPerRowAndBlankLinesAreSkipped) {
  TempDir d;
  Loaded r = load(d, "\xEF\xBB\xBF\n{\"text\": \"hi\"}\r\n   \n{\"input_ids\": [4, 5, 6]}\n\t\n");
  ASSERT_EQ(r.examples.size(), 2u);
  EXPECT_EQ(r.examples[0].ids, (std::vector<int32_t>{1, 3 + 'h', 3 + 'i', 2}));
  EXPECT_EQ(r.examples[1].ids, (std::vector<int32_t>{4, 5, 6}));
  EXPECT_EQ(r.stats.rows, 2);
}

TEST(Dataset, TruncateCutsIdsAndLabels) {
  TempDir d;
  DataSettings cfg;
  cfg.max_seq_len = 4;
  Loaded r = load(d,
                  "{\"text\": \"abcdef\"}\n"
                  "{\"input_ids\": [1, 2, 3, 4, 5, 6], \"labels\": [-100, 2, 3, 4, 5, 6]}\n"
                  "{\"input_ids\": [1, 2, 3, 4]}\n",
                  cfg);
  ASSERT_EQ(r.examples.size(), 3u);
  EXPECT_EQ(r.examples[0].ids, (std::vector<int32_t>{1, 3 + 'a', 3 + 'b', 3 + 'c'}));
  EXPECT_EQ(r.examples[1].labels, (std::vector<int32_t>{-100, 2, 3, 4}));
  EXPECT_EQ(r.stats.truncated, 2);
  EXPECT_EQ(r.stats.kept, 3);
  EXPECT_EQ(r.stats.tokens, 12);
}

TEST(Dataset, DropSkipsAndCounts) {
  TempDir d;
  DataSettings cfg;
  cfg.max_seq_len = 4;
  cfg.overflow = "drop";
  Loaded r = load(d, "{\"text\": \"abcdef\"}\n{\"text\": \"ab\"}\n{\"input_ids\": [1, 2, 3, 4, 5]}\n", cfg);
  ASSERT_EQ(r.examples.size(), 1u);
  EXPECT_EQ(r.examples[0].ids.size(), 4u);
  EXPECT_EQ(r.stats.dropped, 2);
  EXPECT_EQ(r.stats.kept, 1);
  EXPECT_EQ(r.stats.truncated, 0);
}

TEST(Dataset, RowsWithNothingToLearnAreSkippedAndCounted) {
  TempDir d;
  DataSettings cfg;
  cfg.max_seq_len = 3;
  Loaded r = load(d,
                  "{\"input_ids\": [7]}\n"                                              // one token
                  "{\"input_ids\": [7, 8], \"labels\": [7, -100]}\n"                    // only labels[0], never a target
                  "{\"input_ids\": [1, 2, 3, 4], \"labels\": [-100, -100, -100, 4]}\n"  // target cut away
                  "{\"input_ids\": [7, 8], \"labels\": [-100, 8]}\n",
                  cfg);
  ASSERT_EQ(r.examples.size(), 1u);
  EXPECT_EQ(r.examples[0].labels, (std::vector<int32_t>{-100, 8}));
  EXPECT_EQ(r.stats.skipped, 3);
  EXPECT_EQ(r.stats.truncated, 1);
  EXPECT_EQ(r.stats.rows, 4);
  EXPECT_EQ(r.stats.kept, 1);

  // A text row of one token: add_bos alone on an empty text.
  DataSettings bos_only;
  bos_only.add_eos = false;
  Loaded t = load(d, "{\"text\": \"\"}\n{\"text\": \"a\"}\n", bos_only);
  EXPECT_EQ(t.stats.bad, 1);  // an empty text is a malformed row
  ASSERT_EQ(t.stats.problems.size(), 1u);
  EXPECT_NE(t.stats.problems[0].find("train.jsonl:1: 'text' is empty"), std::string::npos) << t.stats.problems[0];
  EXPECT_EQ(t.stats.kept, 1);
}

TEST(DatasetErrors, RowsAreNamedByLine) {
  expect_row_error("{\"text\": \"a\"}\n\n{\"text\": \"a\",}\n", ":3: invalid JSON: ");
  expect_row_error("{\"text\": \"a\"}\n[1, 2]\n", ":2: row is not a JSON object (found array)");
  expect_row_error("\"text\"\n", ":1: row is not a JSON object (found string)");
  std::string rows;
  for (int i = 0; i < 16; ++i) rows += "{\"text\": \"ok\"}\n";
  expect_row_error(rows + "{\"txt\": \"a\"}\n", ":17: row matches no format");
  DataSettings text;
  text.format = "text";
  text.text_field = "body";
  expect_row_error("{\"input_ids\": [1, 2]}\n", ":1: row has no 'body' field", text);
  DataSettings ids;
  ids.format = "input_ids";
  expect_row_error("{\"input_ids\": [1, 2]}\n{\"text\": \"a\"}\n", ":2: row has no 'input_ids' field", ids);
}

TEST(DatasetErrors, WrongTypes) {
  expect_row_error("{\"text\": 5}\n", ":1: 'text' must be a string, found a number");
  expect_row_error("{\"text\": null}\n", ":1: 'text' must be a string, found null");
  expect_row_error("{\"input_ids\": \"1 2 3\"}\n", ":1: 'input_ids' must be a list of integers, found a string");
  expect_row_error("{\"input_ids\": [1, 2.5]}\n", ":1: input_ids[1] must be an integer, found a number");
  expect_row_error("{\"input_ids\": [1, [2]]}\n", ":1: input_ids[1] must be an integer, found an array");
  expect_row_error("{\"input_ids\": [1, 2], \"labels\": {\"a\": 1}}\n",
                   ":1: 'labels' must be a list of integers, found an object");
}

TEST(DatasetErrors, IdsOutOfRangeAndLabelMismatch) {
  expect_row_error("{\"input_ids\": [1, 259]}\n", ":1: input_ids[1] = 259 is out of range [0, 259)");
  expect_row_error("{\"input_ids\": [-1, 5]}\n", ":1: input_ids[0] = -1 is out of range [0, 259)");
  expect_row_error("{\"input_ids\": [1, 2], \"labels\": [1, 300]}\n",
                   ":1: labels[1] = 300 is out of range (expected -100 or an id in [0, 259))");
  expect_row_error("{\"input_ids\": [1, 2], \"labels\": [1, -1]}\n", ":1: labels[1] = -1 is out of range");
  expect_row_error("{\"input_ids\": [1, 2, 3], \"labels\": [1, 2]}\n",
                   ":1: 'labels' has 2 entries but 'input_ids' has 3");
  expect_row_error("{\"input_ids\": []}\n", ":1: 'input_ids' is empty");
  // A tokenizer whose ids exceed the model's vocabulary means the wrong tokenizer.
  TempDir d;
  const ByteTokenizer tok(1, 2);
  DataSettings cfg;
  cfg.train = d.write("train.jsonl", "{\"text\": \"a\"}\n");
  expect_error([&] { load_examples(cfg.train, cfg, &tok, 50, "alpaca", nullptr); },
               cfg.train + ":1: the tokenizer produced id 100, outside the model's vocabulary [0, 50)");
}

TEST(DatasetErrors, EmptyTextAndMissingSpecialTokens) {
  DataSettings plain;
  plain.add_bos = false;
  plain.add_eos = false;
  expect_row_error("{\"text\": \"a\"}\n{\"text\": \"\"}\n", ":2: 'text' is empty", plain);
  const ByteTokenizer no_specials(-1, -1);
  expect_row_error("{\"text\": \"a\"}\n", ":1: data.add_bos is true but the tokenizer has no BOS token", {}, &no_specials);
  DataSettings eos_only;
  eos_only.add_bos = false;
  expect_row_error("{\"text\": \"a\"}\n", ":1: data.add_eos is true but the tokenizer has no EOS token", eos_only,
                   &no_specials);
  TempDir d;
  DataSettings cfg;
  cfg.train = d.write("train.jsonl", "{\"input_ids\": [1, 2]}\n{\"text\": \"a\"}\n");
  expect_error([&] { load_examples(cfg.train, cfg, nullptr, kVocab, "alpaca", nullptr); },
               cfg.train + ":2: a text row needs the model's tokenizer");
}

TEST(DatasetErrors, FileLevelProblems) {
  TempDir d;
  DataSettings cfg;
  cfg.train = (d.path() / "none.jsonl").string();
  expect_error([&] { load_examples(cfg.train, cfg, nullptr, kVocab, "alpaca", nullptr); }, cfg.train + ": not found");
  cfg.train = d.path().string();
  expect_error([&] { load_examples(cfg.train, cfg, nullptr, kVocab, "alpaca", nullptr); }, cfg.train + ": no .jsonl, .parquet or .txt files in this directory");
  expect_row_error("", ": dataset is empty");
  expect_row_error("\n  \n\n", ": dataset is empty");

  DataSettings drop;
  drop.max_seq_len = 8;
  drop.overflow = "drop";
  std::string rows;
  for (int i = 0; i < 12; ++i) rows += "{\"text\": \"a long enough row\"}\n";
  expect_row_error(rows, ": all 12 rows are longer than data.max_seq_len=8 and were dropped", drop);
  expect_row_error("{\"input_ids\": [1]}\n{\"text\": \"a long enough row\"}\n",
                   ": no example left: of 2 rows, 0 were malformed, 1 longer than data.max_seq_len=8 and dropped, "
                   "1 had fewer than 2 tokens",
                   drop);
}

// ---- SentencePiece ----

// The committed tiny tokenizer when present, else one trained here on a small corpus.
std::string tiny_tokenizer_dir(const TempDir& scratch) {
  const fs::path committed = fs::path(FTUNE_SOURCE_DIR) / "examples" / "tiny-tokenizer";
  if (fs::exists(committed / "tokenizer.model")) return committed.string();
  std::string corpus;
  const char* words[] = {"the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "away", "from",
                         "home", "while", "birds", "sang", "in", "trees", "over", "river", "light", "rain"};
  std::mt19937 rng(7);
  for (int line = 0; line < 400; ++line) {
    for (int w = 0; w < 8; ++w) corpus += std::string(w ? " " : "") + words[rng() % std::size(words)];
    corpus += line % 5 ? ".\n" : "!\n";
  }
  const std::string input = scratch.write("corpus.txt", corpus);
  fs::create_directories(scratch.path() / "tok");
  const std::string prefix = (scratch.path() / "tok" / "tokenizer").string();
  auto status = sentencepiece::SentencePieceTrainer::Train(
      {{"input", input}, {"model_prefix", prefix}, {"model_type", "bpe"}, {"vocab_size", "120"},
       {"character_coverage", "1.0"}, {"hard_vocab_limit", "false"}, {"unk_id", "0"}, {"bos_id", "1"},
       {"eos_id", "2"}, {"pad_id", "-1"}, {"minloglevel", "1"}});
  if (!status.ok()) ADD_FAILURE() << "training the test tokenizer failed: " << status.ToString();
  return (scratch.path() / "tok").string();
}

TEST(SentencePiece, LoadsEncodesAndDecodes) {
  TempDir scratch;
  auto tok = load_tokenizer(tiny_tokenizer_dir(scratch));
  EXPECT_GT(tok->vocab_size(), 3);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  const std::string text = "the cat sat on a mat";
  std::vector<int32_t> ids = tok->encode(text);
  ASSERT_FALSE(ids.empty());
  for (int32_t id : ids) {
    EXPECT_GE(id, 0);
    EXPECT_LT(id, tok->vocab_size());
    EXPECT_NE(id, tok->bos_id());  // no special tokens from encode
    EXPECT_NE(id, tok->eos_id());
  }
  EXPECT_EQ(tok->decode(ids), text);
  expect_error([&] { tok->decode({static_cast<int32_t>(tok->vocab_size())}); }, "is outside the vocabulary");

  // A text dataset is [bos] + encode(text) + [eos].
  TempDir d;
  DataSettings cfg;
  cfg.train = d.write("train.jsonl", "{\"text\": \"" + text + "\"}\n");
  DatasetStats st;
  auto ex = load_examples(cfg.train, cfg, tok.get(), tok->vocab_size(), "alpaca", &st);
  ASSERT_EQ(ex.size(), 1u);
  std::vector<int32_t> want = {tok->bos_id()};
  want.insert(want.end(), ids.begin(), ids.end());
  want.push_back(tok->eos_id());
  EXPECT_EQ(ex[0].ids, want);
  EXPECT_EQ(ex[0].labels, want);
  EXPECT_EQ(st.tokens, static_cast<int64_t>(want.size()));
}

TEST(SentencePiece, QuickstartExampleTokenizesEveryRow) {
  const fs::path dir = fs::path(FTUNE_SOURCE_DIR) / "examples" / "quickstart";
  if (!fs::exists(dir / "tokenizer.model") || !fs::exists(dir / "train.jsonl")) GTEST_SKIP() << "no quickstart example";
  auto tok = load_tokenizer(dir.string());
  DataSettings cfg;
  cfg.train = (dir / "train.jsonl").string();
  cfg.max_seq_len = 64;
  DatasetStats st;
  auto ex = load_examples(cfg.train, cfg, tok.get(), tok->vocab_size(), "alpaca", &st);
  EXPECT_EQ(static_cast<int64_t>(ex.size()), st.kept);
  EXPECT_EQ(st.kept + st.dropped + st.skipped + st.bad, st.rows);
  for (const Example& e : ex) {
    EXPECT_EQ(e.ids.front(), tok->bos_id());
    EXPECT_LE(static_cast<int64_t>(e.ids.size()), cfg.max_seq_len);
  }
}

TEST(SentencePiece, Errors) {
  TempDir d;
  const std::string dir = d.path().string();
  expect_error([&] { load_tokenizer(dir + "/absent"); }, dir + "/absent: model directory not found");
  expect_error([&] { load_tokenizer(dir); }, dir + ": no tokenizer found (expected tokenizer.json or tokenizer.model)");
  d.write("tokenizer.model", "this is not a protobuf");
  expect_error([&] { load_tokenizer(dir); }, (d.path() / "tokenizer.model").string() + ": not a valid SentencePiece model");
  // tokenizer.json is preferred when both exist, as transformers' fast tokenizers do.
  d.write("tokenizer.json", "{}");
  expect_error([&] { load_tokenizer(dir); }, (d.path() / "tokenizer.json").string() + ": ");
}

}  // namespace
}  // namespace ftune

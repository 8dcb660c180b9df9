// Row formats, prompt templates and loss masks, plain-text sources, validation split and the
// resumable batch iterator.
#include <gtest/gtest.h>

#include <fstream>
#include <map>

#include "core/error.h"
#include "data/batcher.h"
#include "data/chat_template.h"
#include "data/dataset.h"
#include "data/formats.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace ftune {
namespace {

using nlohmann::json;

// One id per byte (3 + byte), and the special tokens of the Llama 2/3 and ChatML templates.
class FakeTokenizer : public Tokenizer {
 public:
  explicit FakeTokenizer(bool chatml = true, bool prefix = false) : prefix_(prefix) {
    int32_t id = 300;
    for (const char* t : {"<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"})
      specials_[t] = id++;
    if (chatml) specials_["<|im_start|>"] = id++, specials_["<|im_end|>"] = id++;
  }
  std::vector<int32_t> encode(const std::string& text) const override {
    std::vector<int32_t> ids;
    if (prefix_) ids.push_back(3 + '_');
    for (unsigned char c : text) ids.push_back(3 + c);
    return ids;
  }
  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string s;
    for (int32_t id : ids) {
      if (id >= 3 && id < 259) s.push_back(static_cast<char>(id - 3));
      for (const auto& [k, v] : specials_)
        if (v == id) s += k;
    }
    return s;
  }
  int64_t vocab_size() const override { return 320; }
  int32_t bos_id() const override { return 1; }
  int32_t eos_id() const override { return 2; }
  int32_t token_id(const std::string& t) const override {
    auto it = specials_.find(t);
    return it == specials_.end() ? -1 : it->second;
  }
  bool adds_dummy_prefix() const override { return prefix_; }

 private:
  std::map<std::string, int32_t> specials_;
  bool prefix_;
};

// The text of the trained tokens (labels != -100) and of all tokens.
std::pair<std::string, std::string> texts(const Tokenizer& tok, const std::vector<int32_t>& ids,
                                          const std::vector<int32_t>& labels) {
  std::vector<int32_t> trained;
  for (size_t i = 0; i < ids.size(); ++i)
    if (labels[i] != -100) trained.push_back(ids[i]);
  return {tok.decode(trained), tok.decode(ids)};
}

std::pair<std::string, std::string> run(const json& row, const std::string& tpl, const Tokenizer& tok,
                                        bool all = false, const std::string& custom = "") {
  const Sample s = to_sample(row, "auto", ColumnMap({}));
  TemplateOptions o;
  o.name = tpl;
  o.custom = custom;
  o.train_on_all = all;
  std::vector<int32_t> ids, labels;
  tokenize_pieces(render(s, o, tok), tok, tpl, &ids, &labels);
  EXPECT_EQ(ids.size(), labels.size());
  return texts(tok, ids, labels);
}

const json kChat = {{"messages",
                     {{{"role", "system"}, {"content", "Be brief."}},
                      {{"role", "user"}, {"content", "Hi?"}},
                      {{"role", "assistant"}, {"content", " Hello. "}},
                      {{"role", "user"}, {"content", "Bye?"}},
                      {{"role", "assistant"}, {"content", "Bye."}}}}};

TEST(Templates, Llama3TrainsOnlyAssistantTurns) {
  FakeTokenizer tok;
  auto [trained, all] = run(kChat, "llama3", tok);
  EXPECT_EQ(all,
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nBye?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nBye.<|eot_id|>");
  EXPECT_EQ(trained, "Hello.<|eot_id|>Bye.<|eot_id|>");
  auto [t2, a2] = run(kChat, "llama3", tok, true);
  EXPECT_EQ(t2, a2);  // train_on: all
}

TEST(Templates, Llama2InstFormatWithSystemAndTurns) {
  FakeTokenizer tok;
  const Sample s = to_sample(kChat, "auto", ColumnMap({}));
  TemplateOptions o;
  o.name = "llama2";
  std::vector<int32_t> ids, labels;
  tokenize_pieces(render(s, o, tok), tok, "llama2", &ids, &labels);
  // <s> and </s> are the tokenizer's BOS/EOS ids, not text.
  EXPECT_EQ(ids.front(), 1);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 1), 2);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 2), 2);
  auto [trained, all] = texts(tok, ids, labels);
  EXPECT_EQ(all, "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi? [/INST] Hello. [INST] Bye? [/INST] Bye. ");
  EXPECT_EQ(trained, " Hello.  Bye. ");
  EXPECT_EQ(labels.back(), 2);  // </s> is trained
}

TEST(Templates, DummyPrefixTokenizersDropOneSpaceBetweenPieces) {
  FakeTokenizer tok(true, true);  // like SentencePiece: every encode starts with a word marker
  auto [trained, all] = run(kChat, "llama2", tok);
  EXPECT_EQ(trained, "_Hello. _Bye. ");  // " Hello. " -> marker + "Hello. ", never "_ Hello."
}

TEST(Templates, ChatmlWithAndWithoutSpecialTokens) {
  FakeTokenizer with(true), without(false);
  const json row = {{"prompt", "2+2?"}, {"completion", "4"}};
  auto [t1, a1] = run(row, "chatml", with);
  EXPECT_EQ(a1, "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n");
  EXPECT_EQ(t1, "4<|im_end|>");
  auto [t2, a2] = run(row, "chatml", without);
  EXPECT_EQ(a2, a1);  // spelled out as text
  EXPECT_EQ(t2, "4<|im_end|>\n");
}

TEST(Templates, AlpacaWithAndWithoutInput) {
  FakeTokenizer tok;
  auto [t1, a1] = run({{"instruction", "Add."}, {"input", "1 and 2"}, {"output", "3"}}, "alpaca", tok);
  EXPECT_NE(a1.find("paired with an input"), std::string::npos);
  EXPECT_NE(a1.find("### Instruction:\nAdd.\n\n### Input:\n1 and 2\n\n### Response:\n3"), std::string::npos);
  EXPECT_EQ(t1, "3");  // + EOS (id 2, decoded as nothing)
  auto [t2, a2] = run({{"instruction", "Say hi."}, {"output", "hi"}}, "alpaca", tok);
  EXPECT_EQ(a2.find("paired with an input"), std::string::npos);
  EXPECT_EQ(t2, "hi");
}

TEST(Templates, CustomTemplate) {
  FakeTokenizer tok;
  auto [t, a] = run({{"prompt", "cat"}, {"completion", "feline"}}, "custom", tok, false, "Word: {prompt}\nMeans: {completion}.");
  EXPECT_EQ(a, "Word: cat\nMeans: feline.");
  EXPECT_EQ(t, "feline.");
  EXPECT_THROW(run({{"prompt", "a"}, {"completion", "b"}}, "custom", tok, false, "no placeholders"), Error);
}

TEST(Formats, ColumnsAndProblems) {
  const ColumnMap cols({"output=answer", "instruction=question"});
  const Sample s = to_sample({{"question", "Q"}, {"answer", "A"}}, "auto", cols);
  ASSERT_EQ(s.turns.size(), 2u);
  EXPECT_EQ(s.turns[1].content, "A");
  EXPECT_THROW(ColumnMap({"nonsense"}), Error);
  EXPECT_THROW(ColumnMap({"bogus=x"}), Error);
  auto reason = [](const json& row, const std::string& fmt) {
    try {
      to_sample(row, fmt, ColumnMap({}));
    } catch (const RowProblem& p) {
      return p.reason;
    }
    return std::string();
  };
  EXPECT_EQ(reason({{"messages", {{{"role", "user"}, {"content", "x"}}}}}, "messages"),
            "'messages' has no assistant message to learn from");
  EXPECT_EQ(reason({{"messages", {{{"role", "bot"}, {"content", "x"}}}}}, "messages"),
            "messages[0]: role 'bot' is not system, user or assistant");
  EXPECT_EQ(reason({{"messages", {"hi"}}}, "messages"), "messages[0] must be an object with role and content, found a string");
  EXPECT_EQ(reason({{"messages", {{{"role", "user"}, {"content", nullptr}}}}}, "messages"),
            "messages[0]: 'content' must be a string, found null");
  EXPECT_EQ(reason({{"instruction", "x"}}, "alpaca"), "row has no 'output' field");
  EXPECT_EQ(reason({{"text", nullptr}}, "text"), "'text' must be a string, found null");
  EXPECT_EQ(reason({{"foo", 1}}, "auto").rfind("row matches no format", 0), 0u);
}

TEST(Sources, TextFilesByDocumentParagraphLineAndDirectories) {
  testing::TempDir d("text");
  std::filesystem::create_directories(d / "corpus/sub");
  std::ofstream(d / "corpus/a.txt") << "First line.\nSecond line.\n\nNew paragraph.\r\n";
  std::ofstream(d / "corpus/sub/b.md") << "Only one.";
  std::ofstream(d / "corpus/.hidden.txt") << "never read";
  std::ofstream(d / "corpus/notes.csv") << "ignored";
  FakeTokenizer tok;
  DataSettings cfg;
  cfg.add_bos = cfg.add_eos = false;
  for (auto [by, n] : {std::pair<const char*, size_t>{"document", 2}, {"paragraph", 3}, {"line", 4}}) {
    cfg.text_sample_by = by;
    DatasetStats st;
    const auto ex = load_examples(d / "corpus", cfg, &tok, 320, "alpaca", &st);
    EXPECT_EQ(ex.size(), n) << by;
    if (std::string(by) == "paragraph") EXPECT_EQ(tok.decode(ex[0].ids), "First line.\nSecond line.");
  }
}

TEST(Sources, ParquetChatRowsThroughTheWholePipeline) {
  // pyarrow-written file with a list<struct<role, content>> `messages` column (and others that the
  // messages format never decodes).
  FakeTokenizer tok;
  DataSettings cfg;
  cfg.format = "messages";
  cfg.max_seq_len = 4096;
  DatasetStats st;
  const std::string path = std::string(FTUNE_SOURCE_DIR) + "/tests/fixtures/parquet/dict_snappy.parquet";
  const auto ex = load_examples(path, cfg, &tok, 320, "llama3", &st);
  EXPECT_EQ(st.rows, 60);
  EXPECT_EQ(st.kept + st.bad + st.skipped + st.dropped, st.rows);
  EXPECT_GT(st.kept, 10);
  EXPECT_GT(st.bad, 0);  // null `messages` rows are reported, not fatal
  ASSERT_FALSE(st.problems.empty());
  EXPECT_NE(st.problems[0].find("dict_snappy.parquet row "), std::string::npos) << st.problems[0];
  for (const auto& e : ex) EXPECT_EQ(e.ids.front(), 300);  // <|begin_of_text|>
}

TEST(Split, ValidationFractionIsDeterministicAndDisjoint) {
  testing::TempDir d("split");
  {
    std::ofstream f(d / "t.jsonl");
    for (int i = 0; i < 200; ++i) f << "{\"input_ids\": [" << 5 + i % 50 << ", " << i % 7 + 3 << ", 9]}\n";
  }
  DataSettings cfg;
  cfg.train = d / "t.jsonl";
  cfg.val_fraction = 0.2;
  const DataSplit a = load_data(cfg, nullptr, 100, "", 42), b = load_data(cfg, nullptr, 100, "", 42),
                  c = load_data(cfg, nullptr, 100, "", 43);
  EXPECT_EQ(a.train.size() + a.val.size(), 200u);
  EXPECT_GT(a.val.size(), 20u);
  EXPECT_LT(a.val.size(), 60u);
  ASSERT_EQ(a.val.size(), b.val.size());
  for (size_t i = 0; i < a.val.size(); ++i) EXPECT_EQ(a.val[i].ids, b.val[i].ids);
  bool differs = c.val.size() != a.val.size();
  for (size_t i = 0; !differs && i < a.val.size(); ++i) differs = a.val[i].ids != c.val[i].ids;
  EXPECT_TRUE(differs);
  cfg.val_fraction = 0.5;
  cfg.train = d / "one.jsonl";
  std::ofstream(d / "one.jsonl") << "{\"input_ids\": [1, 2, 3]}\n";
  EXPECT_THROW(load_data(cfg, nullptr, 100, "", 1), Error);
}

TEST(Iterator, RestoredStateContinuesExactly) {
  std::vector<Example> ex(23);
  for (size_t i = 0; i < ex.size(); ++i) ex[i].ids = ex[i].labels = {static_cast<int32_t>(i), 1, 2};
  for (int64_t pack : {0, 9}) {
    MicroBatcher a(ex, 4, true, 5, 0, pack);
    for (int i = 0; i < 9; ++i) a.next();  // into the second epoch
    const BatcherState st = a.state();
    std::vector<std::vector<int32_t>> want;
    for (int i = 0; i < 12; ++i) want.push_back(a.next().ids);
    MicroBatcher b(ex, 4, true, 5, 0, pack);
    b.restore(st);
    for (int i = 0; i < 12; ++i) EXPECT_EQ(b.next().ids, want[i]) << "batch " << i << " pack " << pack;
    EXPECT_EQ(b.epoch(), a.epoch());
  }
}

}  // namespace
}  // namespace ftune

// Mutation fuzzing of the JSONL path (reader, formats, templates, tokenization): damaged files
// must load with the bad rows skipped and counted, or fail with one ftune::Error line; never crash.
#include <gtest/gtest.h>

#include <fstream>

#include "core/error.h"
#include "core/rng.h"
#include "data/dataset.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace ftune {
namespace {

class ByteTokenizer : public Tokenizer {
 public:
  std::vector<int32_t> encode(const std::string& t) const override {
    std::vector<int32_t> ids;
    for (unsigned char c : t) ids.push_back(3 + c);
    return ids;
  }
  std::string decode(const std::vector<int32_t>&) const override { return ""; }
  int64_t vocab_size() const override { return 259; }
  int32_t bos_id() const override { return 1; }
  int32_t eos_id() const override { return 2; }
};

const char* kSeed =
    "{\"text\": \"plain row with \\u00e9 and \\ud83d\\ude00\"}\n"
    "{\"instruction\": \"Add.\", \"input\": \"1, 2\", \"output\": \"3\"}\n"
    "{\"messages\": [{\"role\": \"system\", \"content\": \"s\"}, {\"role\": \"user\", \"content\": \"u\"}, "
    "{\"role\": \"assistant\", \"content\": \"a\"}]}\n"
    "{\"prompt\": \"p\", \"completion\": \"c\"}\n"
    "{\"input_ids\": [5, 6, 7, 8], \"labels\": [-100, 6, 7, 8]}\n"
    "{\"text\": \"multi-byte: \xe6\x97\xa5\xe6\x9c\xac\"}\n";

TEST(JsonlFuzz, MutatedFilesNeverCrash) {
  testing::TempDir dir("jsonl-fuzz");
  const std::string path = dir / "f.jsonl";
  const std::string seed = kSeed;
  ByteTokenizer tok;
  int loaded = 0, rejected = 0;
  for (int i = 0; i < 3000; ++i) {
    Rng r(9000 + i);
    std::string m = seed;
    const int edits = 1 + static_cast<int>(r.below(6));
    for (int k = 0; k < edits && !m.empty(); ++k) {
      const size_t at = r.below(m.size());
      switch (r.below(5)) {
        case 0: m[at] = static_cast<char>(r.below(256)); break;  // any byte, invalid UTF-8 included
        case 1: m.erase(at, 1 + r.below(8)); break;
        case 2: m.insert(at, 1, "{}[]\":,\\\n\x80\xff"[r.below(12)]); break;
        case 3: m.insert(at, m.substr(r.below(m.size()), r.below(40))); break;
        default: m.resize(at); break;  // truncation
      }
    }
    std::ofstream(path, std::ios::binary | std::ios::trunc) << m;
    DataSettings cfg;
    cfg.max_seq_len = 64;
    cfg.template_name = i % 2 ? "chatml" : "alpaca";
    DatasetStats st;
    try {
      load_examples(path, cfg, &tok, 259, cfg.template_name, &st);
      ++loaded;
      EXPECT_EQ(st.kept + st.bad + st.dropped + st.skipped, st.rows);
    } catch (const Error& e) {
      ++rejected;
      EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
    }
  }
  EXPECT_GT(loaded, 1000);
  std::printf("[ measured ] %d files loaded (bad rows skipped), %d rejected whole\n", loaded, rejected);
}

}  // namespace
}  // namespace ftune

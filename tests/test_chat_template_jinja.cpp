// ftune's chat templates against the models' own Jinja chat_template (tests/fixtures/chat_templates,
// rendered by python3 jinja2 through tests/cli/chat_template_jinja.py): the same text, byte for byte.
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "data/chat_template.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace ftune {
namespace {

using nlohmann::json;
const std::string kDir = std::string(FTUNE_SOURCE_DIR) + "/tests/fixtures/chat_templates";

// Token lookups only: bos 1, eos 2, and the chat special tokens when `specials`.
class StubTokenizer final : public Tokenizer {
 public:
  explicit StubTokenizer(bool specials) : specials_(specials) {}
  std::vector<int32_t> encode(const std::string&) const override { return {}; }
  std::string decode(const std::vector<int32_t>&) const override { return ""; }
  int64_t vocab_size() const override { return 100; }
  int32_t bos_id() const override { return 1; }
  int32_t eos_id() const override { return 2; }
  int32_t token_id(const std::string& t) const override {
    static const std::map<std::string, int32_t> ids = {{"<|im_start|>", 10}, {"<|im_end|>", 11}};
    const auto it = ids.find(t);
    return specials_ && it != ids.end() ? it->second : -1;
  }

 private:
  bool specials_;
};

// The text of pieces as a template renders it: special tokens by their strings.
std::string text_of(const std::vector<Piece>& pieces) {
  std::string s;
  for (const Piece& p : pieces) s += p.text;
  return s;
}

std::vector<Turn> turns_of(const json& messages) {
  std::vector<Turn> t;
  for (const json& m : messages) t.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
  return t;
}

// Jinja's renderings, or a null json after a visible skip when python3 jinja2 is absent.
json jinja_renderings(std::string* skip) {
  testing::TempDir d("jinja");
  const std::string cmd = "python3 " + std::string(FTUNE_SOURCE_DIR) + "/tests/cli/chat_template_jinja.py --templates " +
                          kDir + " --cases " + kDir + "/cases.json > " + d / "out.json";
  const int rc = std::system(cmd.c_str());
  if (rc != -1 && WIFEXITED(rc) && WEXITSTATUS(rc) == 77) {
    *skip = "python3 jinja2 is not installed (apt-get install python3-jinja2)";
    return nullptr;
  }
  EXPECT_TRUE(rc != -1 && WIFEXITED(rc) && WEXITSTATUS(rc) == 0) << cmd << " failed";
  std::ifstream f(d / "out.json");
  std::stringstream ss;
  ss << f.rdbuf();
  return json::parse(ss.str(), nullptr, false);
}

std::string show(const std::string& s) { return json(s).dump(); }

TEST(ChatTemplateJinja, RendersAsTheModelsTemplates) {
  std::string skip;
  const json out = jinja_renderings(&skip);
  if (!skip.empty()) GTEST_SKIP() << skip;
  ASSERT_TRUE(out.is_object() && out.contains("rendered")) << "chat_template_jinja.py printed no JSON";
  std::ifstream cf(kDir + "/cases.json");
  const json cases = json::parse(cf);
  // Fixture -> ftune template. Mistral's refuses conversations with a system turn (its
  // raise_exception): ftune must refuse the same ones, with an error.
  const std::map<std::string, std::string> names = {{"llama2-chat", "llama2"},
                                                    {"llama3-instruct", "llama3"},
                                                    {"llama3.1-instruct", "llama3.1"},
                                                    {"mistral-instruct", "mistral"},
                                                    {"chatml", "chatml"}};
  int refused = 0;
  int compared = 0;
  for (const bool specials : {true, false}) {
    const StubTokenizer tok(specials);
    for (const auto& [fixture, name] : names) {
      for (const json& c : cases) {
        const std::string where = fixture + " / " + c["name"].get<std::string>() + (specials ? "" : " (no specials)");
        const json& want = out["rendered"][fixture][c["name"].get<std::string>()];
        Sample s;
        s.kind = Sample::Kind::Chat;
        s.turns = turns_of(c["messages"]);
        TemplateOptions o;
        o.name = name;
        if (name == "mistral" && want["train"].is_null()) {  // Jinja refused it
          EXPECT_THROW(render(s, o, tok), Error) << where;
          ++refused, ++compared;
          continue;
        }
        ASSERT_TRUE(want["train"].is_string()) << where << ": Jinja refused the conversation";
        EXPECT_EQ(show(text_of(render(s, o, tok))), show(want["train"].get<std::string>())) << where << " (training)";
        s.turns.pop_back();
        EXPECT_EQ(show(text_of(chat_prompt_pieces(name, s.turns, tok))), show(want["prompt"].get<std::string>()))
            << where << " (add_generation_prompt)";
        compared += 2;
      }
    }
  }
  EXPECT_GE(compared, 2 * 2 * 4 * static_cast<int>(cases.size()));
  EXPECT_GT(refused, 0);  // the system-turn cases
  EXPECT_LT(refused, 2 * static_cast<int>(cases.size()));
}

// The template each fixture's chat_template is detected as, from a tokenizer_config.json holding it.
TEST(ChatTemplateJinja, DetectsEachFixture) {
  for (const auto& [fixture, name] : std::map<std::string, std::string>{{"llama2-chat", "llama2"},
                                                                         {"llama3-instruct", "llama3"},
                                                                         {"llama3.1-instruct", "llama3.1"},
                                                                         {"mistral-instruct", "mistral"},
                                                                         {"chatml", "chatml"}}) {
    std::ifstream f(kDir + "/" + fixture + ".jinja");
    ASSERT_TRUE(f) << kDir << "/" << fixture << ".jinja is missing";
    std::stringstream ss;
    ss << f.rdbuf();
    testing::TempDir d("detect");
    std::ofstream(d / "tokenizer_config.json") << json{{"chat_template", ss.str()}}.dump();
    EXPECT_EQ(detect_chat_template(d.str()), name) << fixture;
    EXPECT_EQ(chat_template_source(d.str()), ss.str()) << fixture;
  }
}

// The token ids: ftune's (its templates' pieces tokenized by its tokenizers, themselves checked
// against Hugging Face tokenizers on text) against transformers' apply_chat_template with the real
// tokenizers (tools/make_chat_template_goldens.py), for every conversation, whole and as a prompt.
TEST(ChatTemplateJinja, TokenIdsAreTransformers) {
  std::ifstream gf(kDir + "/golden_ids.json");
  if (!gf)
    GTEST_SKIP() << kDir << "/golden_ids.json is not made yet: run tools/make_chat_template_goldens.py where "
                 << "transformers is installed";
  const json golden = json::parse(gf);
  const char* env = std::getenv("FTUNE_ASSETS");
  const std::string assets = env && *env ? env : std::string(FTUNE_SOURCE_DIR) + "/build/assets";
  const std::map<std::string, std::pair<std::string, std::string>> pairs = {
      {"llama2-chat", {"llama2", "llama2-meta"}},
      {"mistral-instruct", {"mistral", "tokenizer-llama2/package/models"}},
      {"llama3-instruct", {"llama3", "tokenizer-llama3/package/models"}},
      {"llama3.1-instruct", {"llama3.1", "tokenizer-llama3/package/models"}}};
  std::ifstream cf(kDir + "/cases.json");
  const json cases = json::parse(cf);
  int compared = 0;
  for (const auto& [fixture, p] : pairs) {
    const auto& [name, dir] = p;
    std::unique_ptr<Tokenizer> tok;
    try {
      tok = load_tokenizer(assets + "/" + dir);
    } catch (const Error& e) {
      ADD_FAILURE() << e.what() << ": run `bash scripts/fetch-assets.sh " << assets << "`";
      continue;
    }
    for (const json& c : cases) {
      const std::string where = fixture + " / " + c["name"].get<std::string>();
      const json& want = golden["ids"][fixture][c["name"].get<std::string>()];
      Sample s;
      s.kind = Sample::Kind::Chat;
      s.turns = turns_of(c["messages"]);
      TemplateOptions o;
      o.name = name;
      if (want["train"].is_null()) {
        EXPECT_THROW(render(s, o, *tok), Error) << where;
        continue;
      }
      std::vector<int32_t> ids, labels;
      tokenize_pieces(render(s, o, *tok), *tok, name, &ids, &labels);
      EXPECT_EQ(ids, want["train"].get<std::vector<int32_t>>()) << where << " (training)";
      s.turns.pop_back();
      EXPECT_EQ(chat_prompt_ids(name, s.turns, *tok), want["prompt"].get<std::vector<int32_t>>()) << where << " (prompt)";
      compared += 2;
    }
  }
  EXPECT_GE(compared, 2 * 3 * static_cast<int>(cases.size()));
}

}  // namespace
}  // namespace ftune

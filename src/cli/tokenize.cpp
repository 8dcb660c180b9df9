// `ftune tokenize --tokenizer DIR [--add-special] (--input FILE.jsonl | --text "...")`: token ids
// of text, for checking a tokenizer against other libraries.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/error.h"
#include "core/json_limits.h"
#include "tokenizer/bpe_tokenizer.h"

namespace ftune {

namespace {

// The tokenizer of a directory as load_tokenizer picks it, keeping the tokenizer.json type when
// that is what it is, since only it knows the post-processor's special tokens.
struct LoadedTokenizer {
  std::unique_ptr<Tokenizer> any;
  const BpeTokenizer* bpe = nullptr;
};

LoadedTokenizer load(const std::string& dir) {
  LoadedTokenizer t;
  t.any = load_tokenizer(dir);
  t.bpe = dynamic_cast<const BpeTokenizer*>(t.any.get());
  return t;
}

std::vector<int32_t> encode(const LoadedTokenizer& t, const std::string& text, bool add_special) {
  if (t.bpe) return t.bpe->encode_with_special(text, add_special);
  std::vector<int32_t> ids;
  if (add_special && t.any->bos_id() >= 0) ids.push_back(t.any->bos_id());
  for (int32_t id : t.any->encode(text)) ids.push_back(id);
  return ids;
}

}  // namespace

void add_tokenize_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("tokenize", "Print the token ids of text (tokenizer.json or tokenizer.model)");
  struct Args {
    std::string tokenizer, input, text;
    bool add_special = false;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("--tokenizer", a->tokenizer, "Directory with tokenizer.json or tokenizer.model")->required();
  cmd->add_flag("--add-special", a->add_special, "Add the special tokens of the post-processor (e.g. <s>)");
  auto* in = cmd->add_option("--input", a->input, "JSONL with a \"text\" field per line; writes {\"ids\": [...]} lines");
  auto* tx = cmd->add_option("--text", a->text, "One text; prints its ids and pieces");
  in->excludes(tx);
  cmd->callback([a, in, tx] {
    if (in->count() == 0 && tx->count() == 0) fail("tokenize: give --input FILE.jsonl or --text TEXT");
    const LoadedTokenizer t = load(a->tokenizer);
    if (tx->count()) {
      const auto ids = encode(t, a->text, a->add_special);
      fmt::print("ids: {}\n", ids);
      std::vector<std::string> pieces;
      for (int32_t id : ids) pieces.push_back(t.bpe ? t.bpe->id_to_token(id) : t.any->decode({id}));
      fmt::print("pieces: {}\n", nlohmann::json(pieces).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
      return;
    }
    std::ifstream f(a->input, std::ios::binary);
    if (!std::filesystem::is_regular_file(a->input) || !f) fail("{}: file not found", a->input);
    std::string line;
    for (int64_t n = 1; std::getline(f, line); ++n) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.empty()) continue;
      nlohmann::json row;
      try {
        row = parse_json_bounded(line);
      } catch (const JsonTooDeep& e) {
        fail("{}:{}: {}", a->input, n, e.what());
      } catch (const nlohmann::json::parse_error&) {
        fail("{}:{}: invalid JSON", a->input, n);
      }
      if (!row.is_object() || !row.contains("text") || !row["text"].is_string())
        fail("{}:{}: text: expected a string", a->input, n);
      fmt::print("{{\"ids\": {}}}\n", nlohmann::json(encode(t, row["text"].get<std::string>(), a->add_special)).dump());
    }
  });
}

}  // namespace ftune

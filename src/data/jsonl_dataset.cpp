// JSONL training data: each non-blank line is one example, either text (tokenized here) or
// ready-made input_ids with optional labels. Every rejected row is named by file and line.
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "data/dataset.h"
#include "tokenizer/tokenizer.h"

namespace ftune {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

constexpr int32_t kIgnore = -100;

std::string parse_reason(const json::parse_error& e) {
  std::string s = e.what();
  auto col = s.find("column ");
  auto colon = s.find(": ", col == std::string::npos ? 0 : col);
  if (colon != std::string::npos) s = s.substr(colon + 2);
  for (char& ch : s)
    if (ch == '\n' || ch == '\r') ch = ' ';
  return s;
}

// A JSON value in a message: its type, and the value itself when it is short.
std::string found(const json& v) {
  std::string s = v.dump();
  if (v.is_null()) return "null";
  if (v.is_object() || v.is_array()) return fmt::format("an {}", v.type_name());
  if (s.size() > 40) s = s.substr(0, 37) + "...";
  return fmt::format("{} {}", v.is_string() ? "the string" : v.is_boolean() ? "the boolean" : "the number", s);
}

bool blank(const std::string& line) { return line.find_first_not_of(" \t\r\n") == std::string::npos; }

// Row-level context for messages: "<file>:<line>".
struct Where {
  const std::string& file;
  int64_t line;
};

std::vector<int32_t> read_ids(const json& row, const char* key, int64_t vocab_size, bool allow_ignore, Where at) {
  const json& v = row.at(key);
  if (!v.is_array()) fail("{}:{}: '{}' must be a list of integers, found {}", at.file, at.line, key, found(v));
  std::vector<int32_t> out;
  out.reserve(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    const json& x = v[i];
    if (!x.is_number_integer())
      fail("{}:{}: {}[{}] must be an integer, found {}", at.file, at.line, key, i, found(x));
    const int64_t id = x.get<int64_t>();
    if (allow_ignore && id == kIgnore) {
      out.push_back(kIgnore);
      continue;
    }
    if (id < 0 || id >= vocab_size) {
      if (allow_ignore)
        fail("{}:{}: {}[{}] = {} is out of range (expected -100 or an id in [0, {}))", at.file, at.line, key, i, id,
             vocab_size);
      fail("{}:{}: {}[{}] = {} is out of range [0, {})", at.file, at.line, key, i, id, vocab_size);
    }
    out.push_back(static_cast<int32_t>(id));
  }
  return out;
}

Example text_example(const json& row, const DataSettings& cfg, const Tokenizer* tok, int64_t vocab_size, Where at) {
  const json& v = row.at(cfg.text_field);
  if (!v.is_string())
    fail("{}:{}: '{}' must be a string, found {} (data.text_field = '{}')", at.file, at.line, cfg.text_field, found(v),
         cfg.text_field);
  if (!tok) fail("{}:{}: a text row needs the model's tokenizer, and none was loaded", at.file, at.line);
  Example ex;
  if (cfg.add_bos) {
    if (tok->bos_id() < 0) fail("{}: data.add_bos is true but the tokenizer has no BOS token", at.file);
    ex.ids.push_back(tok->bos_id());
  }
  for (int32_t id : tok->encode(v.get<std::string>())) ex.ids.push_back(id);
  if (cfg.add_eos) {
    if (tok->eos_id() < 0) fail("{}: data.add_eos is true but the tokenizer has no EOS token", at.file);
    ex.ids.push_back(tok->eos_id());
  }
  if (ex.ids.empty())
    fail("{}:{}: '{}' is empty after tokenization (and data.add_bos and data.add_eos are false)", at.file, at.line,
         cfg.text_field);
  // A tokenizer larger than the model's embedding table is a mismatched model directory.
  for (int32_t id : ex.ids)
    if (id < 0 || id >= vocab_size)
      fail("{}:{}: the tokenizer produced id {}, outside the model's vocabulary [0, {})", at.file, at.line, id,
           vocab_size);
  ex.labels = ex.ids;
  return ex;
}

Example ids_example(const json& row, int64_t vocab_size, Where at) {
  Example ex;
  ex.ids = read_ids(row, "input_ids", vocab_size, false, at);
  if (ex.ids.empty()) fail("{}:{}: 'input_ids' is empty", at.file, at.line);
  if (row.contains("labels") && !row.at("labels").is_null()) {
    ex.labels = read_ids(row, "labels", vocab_size, true, at);
    if (ex.labels.size() != ex.ids.size())
      fail("{}:{}: 'labels' has {} entries but 'input_ids' has {}", at.file, at.line, ex.labels.size(), ex.ids.size());
  } else {
    ex.labels = ex.ids;
  }
  return ex;
}

// The loss predicts labels[i] from position i-1, so labels[0] is never a target.
bool has_target(const Example& ex) {
  for (size_t i = 1; i < ex.labels.size(); ++i)
    if (ex.labels[i] != kIgnore) return true;
  return false;
}

}  // namespace

std::vector<Example> load_jsonl_dataset(const DataSettings& cfg, const Tokenizer* tokenizer, int64_t vocab_size,
                                        DatasetStats* stats) {
  const std::string& file = cfg.train;
  if (file.empty()) fail("data.train is not set");
  if (fs::is_directory(file)) fail("{}: is a directory, expected a JSONL file", file);
  if (!fs::exists(file)) fail("{}: not found", file);
  std::ifstream in(file, std::ios::binary);
  if (!in) fail("{}: cannot be read", file);
  FT_ASSERT(vocab_size > 0);

  DatasetStats local;
  DatasetStats& st = stats ? *stats : local;
  st = DatasetStats{};
  std::vector<Example> out;
  std::string line;
  for (int64_t lineno = 1; std::getline(in, line); ++lineno) {
    // Editors on Windows often start a UTF-8 file with a byte-order mark.
    if (lineno == 1 && line.starts_with("\xEF\xBB\xBF")) line.erase(0, 3);
    if (blank(line)) continue;
    ++st.rows;
    const Where at{file, lineno};
    json row;
    try {
      row = json::parse(line);
    } catch (const json::parse_error& e) {
      fail("{}:{}: invalid JSON at column {}: {}", file, lineno, e.byte, parse_reason(e));
    }
    if (!row.is_object()) fail("{}:{}: row is not a JSON object, found {}", file, lineno, found(row));

    const bool has_ids = row.contains("input_ids");
    Example ex;
    if (cfg.format == "input_ids" || (cfg.format == "auto" && has_ids)) {
      if (!has_ids) fail("{}:{}: row has no 'input_ids' field (data.format = 'input_ids')", file, lineno);
      ex = ids_example(row, vocab_size, at);
    } else if (cfg.format == "text" || cfg.format == "auto") {
      if (!row.contains(cfg.text_field))
        fail("{}:{}: row has no '{}' field (data.text_field = '{}'){}", file, lineno, cfg.text_field, cfg.text_field,
             cfg.format == "auto" ? " and no 'input_ids'" : "");
      ex = text_example(row, cfg, tokenizer, vocab_size, at);
    } else {
      fail("data.format: unknown format '{}'", cfg.format);
    }

    if (static_cast<int64_t>(ex.ids.size()) > cfg.max_seq_len) {
      if (cfg.overflow == "drop") {
        ++st.dropped;
        continue;
      }
      ex.ids.resize(cfg.max_seq_len);
      ex.labels.resize(cfg.max_seq_len);
      ++st.truncated;
    }
    if (ex.ids.size() < 2 || !has_target(ex)) {
      ++st.skipped;
      continue;
    }
    ++st.kept;
    st.tokens += static_cast<int64_t>(ex.ids.size());
    out.push_back(std::move(ex));
  }
  if (in.bad()) fail("{}: read error", file);

  if (st.rows == 0) fail("{}: dataset is empty", file);
  if (out.empty()) {
    if (st.dropped == st.rows)
      fail("{}: all {} rows are longer than data.max_seq_len={} and were dropped", file, st.rows, cfg.max_seq_len);
    fail("{}: dataset is empty after filtering: of {} rows, {} were longer than data.max_seq_len={} and dropped, {} "
         "had fewer than 2 tokens or no trained label",
         file, st.rows, st.dropped, cfg.max_seq_len, st.skipped);
  }
  return out;
}

}  // namespace ftune

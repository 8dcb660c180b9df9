// Dataset rows in the shapes people store them (raw text, Alpaca, chat messages,
// prompt/completion, token ids) mapped to one format-neutral Sample.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace ftune {

struct Turn {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

struct Sample {
  enum class Kind { Text, Chat, Ids } kind = Kind::Text;
  std::string text;                 // Text
  std::vector<Turn> turns;          // Chat (alpaca and prompt/completion rows become a user/assistant exchange)
  std::vector<int64_t> ids, labels; // Ids; labels empty = same as ids
  bool alpaca_input = false;        // Chat from alpaca with a non-empty `input` (the alpaca template words it)
  std::string alpaca_instruction, alpaca_context;
};

// A row the format cannot use, with the reason (caught, counted and reported by the loader).
struct RowProblem {
  std::string reason;
};

// Canonical field names and the dataset's own names for them (data.columns: "output=answer").
class ColumnMap {
 public:
  explicit ColumnMap(const std::vector<std::string>& mapping);  // throws naming a malformed entry
  const std::string& operator()(const std::string& canonical) const;

 private:
  std::map<std::string, std::string> map_;
};

// format: "auto", "text", "alpaca", "messages", "prompt_completion" or "input_ids".
// Throws RowProblem for a row that lacks a field or has the wrong types.
Sample to_sample(const nlohmann::json& row, const std::string& format, const ColumnMap& cols);

// The fields a format reads (required and optional), after renames; empty for "auto" (all).
std::vector<std::string> format_columns(const std::string& format, const ColumnMap& cols);

// The format "auto" picks for a row (for messages and previews).
std::string detect_format(const nlohmann::json& row, const ColumnMap& cols);

}  // namespace ftune

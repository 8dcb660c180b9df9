// Row formats: which fields each one reads, and what a usable value looks like.
#include "data/formats.h"

#include <fmt/format.h>

#include "core/error.h"

namespace ftune {

using nlohmann::json;

namespace {

const char* kCanonical[] = {"text", "instruction", "input", "output", "system", "messages", "role", "content",
                            "prompt", "completion", "input_ids", "labels"};

std::string describe(const json& v) {
  if (v.is_null()) return "null";
  if (v.is_string()) return "a string";
  return fmt::format("{} {}", v.is_array() || v.is_object() ? "an" : "a", v.type_name());
}

const std::string& need_string(const json& row, const std::string& key, bool allow_empty = false) {
  auto it = row.find(key);
  if (it == row.end()) throw RowProblem{fmt::format("row has no '{}' field", key)};
  if (!it->is_string()) throw RowProblem{fmt::format("'{}' must be a string, found {}", key, describe(*it))};
  if (!allow_empty && it->get_ref<const std::string&>().empty()) throw RowProblem{fmt::format("'{}' is empty", key)};
  return it->get_ref<const std::string&>();
}

std::string opt_string(const json& row, const std::string& key) {
  auto it = row.find(key);
  if (it == row.end() || it->is_null()) return "";
  if (!it->is_string()) throw RowProblem{fmt::format("'{}' must be a string, found {}", key, describe(*it))};
  return it->get<std::string>();
}

std::vector<int64_t> int_list(const json& row, const std::string& key) {
  const json& v = row.at(key);
  if (!v.is_array()) throw RowProblem{fmt::format("'{}' must be a list of integers, found {}", key, describe(v))};
  std::vector<int64_t> out;
  out.reserve(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    if (!v[i].is_number_integer())
      throw RowProblem{fmt::format("{}[{}] must be an integer, found {}", key, i, describe(v[i]))};
    out.push_back(v[i].get<int64_t>());
  }
  return out;
}

}  // namespace

ColumnMap::ColumnMap(const std::vector<std::string>& mapping) {
  for (const char* c : kCanonical) map_[c] = c;
  for (const auto& m : mapping) {
    const auto eq = m.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == m.size())
      fail("data.columns: '{}' is not of the form name=column (e.g. output=answer)", m);
    const std::string key = m.substr(0, eq);
    if (!map_.count(key)) fail("data.columns: '{}' is not a field name ftune knows", key);
    map_[key] = m.substr(eq + 1);
  }
}

const std::string& ColumnMap::operator()(const std::string& canonical) const { return map_.at(canonical); }

std::vector<std::string> format_columns(const std::string& f, const ColumnMap& c) {
  std::vector<std::string> names;
  if (f == "text") names = {"text"};
  else if (f == "alpaca") names = {"instruction", "input", "output", "system"};
  else if (f == "messages") names = {"messages"};
  else if (f == "prompt_completion") names = {"prompt", "completion", "system"};
  else if (f == "input_ids") names = {"input_ids", "labels"};
  std::vector<std::string> out;
  for (const auto& n : names) out.push_back(c(n));
  return out;
}

std::string detect_format(const json& row, const ColumnMap& c) {
  if (row.contains(c("input_ids"))) return "input_ids";
  if (row.contains(c("messages"))) return "messages";
  if (row.contains(c("instruction")) && row.contains(c("output"))) return "alpaca";
  if (row.contains(c("prompt")) && row.contains(c("completion"))) return "prompt_completion";
  if (row.contains(c("text"))) return "text";
  throw RowProblem{fmt::format("row matches no format (fields: text, messages, instruction/output, prompt/completion "
                               "or input_ids; data.columns maps other names)")};
}

Sample to_sample(const json& row, const std::string& format, const ColumnMap& c) {
  const std::string f = format == "auto" ? detect_format(row, c) : format;
  Sample s;
  if (f == "text") {
    s.kind = Sample::Kind::Text;
    s.text = need_string(row, c("text"));
  } else if (f == "input_ids") {
    s.kind = Sample::Kind::Ids;
    if (!row.contains(c("input_ids"))) throw RowProblem{fmt::format("row has no '{}' field", c("input_ids"))};
    s.ids = int_list(row, c("input_ids"));
    if (s.ids.empty()) throw RowProblem{fmt::format("'{}' is empty", c("input_ids"))};
    if (row.contains(c("labels")) && !row.at(c("labels")).is_null()) {
      s.labels = int_list(row, c("labels"));
      if (s.labels.size() != s.ids.size())
        throw RowProblem{fmt::format("'{}' has {} entries but '{}' has {}", c("labels"), s.labels.size(),
                                     c("input_ids"), s.ids.size())};
    }
  } else if (f == "alpaca") {
    s.kind = Sample::Kind::Chat;
    const std::string sys = opt_string(row, c("system"));
    s.alpaca_instruction = need_string(row, c("instruction"));
    s.alpaca_context = opt_string(row, c("input"));
    s.alpaca_input = !s.alpaca_context.empty();
    if (!sys.empty()) s.turns.push_back({"system", sys});
    s.turns.push_back({"user", s.alpaca_context.empty() ? s.alpaca_instruction
                                                         : s.alpaca_instruction + "\n\n" + s.alpaca_context});
    s.turns.push_back({"assistant", need_string(row, c("output"))});
  } else if (f == "prompt_completion") {
    s.kind = Sample::Kind::Chat;
    const std::string sys = opt_string(row, c("system"));
    if (!sys.empty()) s.turns.push_back({"system", sys});
    s.turns.push_back({"user", need_string(row, c("prompt"))});
    s.turns.push_back({"assistant", need_string(row, c("completion"))});
  } else if (f == "messages") {
    s.kind = Sample::Kind::Chat;
    auto it = row.find(c("messages"));
    if (it == row.end()) throw RowProblem{fmt::format("row has no '{}' field", c("messages"))};
    if (!it->is_array()) throw RowProblem{fmt::format("'{}' must be a list, found {}", c("messages"), describe(*it))};
    for (size_t i = 0; i < it->size(); ++i) {
      const json& m = (*it)[i];
      if (!m.is_object())
        throw RowProblem{fmt::format("{}[{}] must be an object with role and content, found {}", c("messages"), i,
                                     describe(m))};
      Turn t;
      try {
        t.role = need_string(m, c("role"));
        t.content = need_string(m, c("content"), true);
      } catch (const RowProblem& p) {
        throw RowProblem{fmt::format("{}[{}]: {}", c("messages"), i, p.reason)};
      }
      if (t.role != "system" && t.role != "user" && t.role != "assistant")
        throw RowProblem{fmt::format("{}[{}]: role '{}' is not system, user or assistant", c("messages"), i, t.role)};
      s.turns.push_back(std::move(t));
    }
    bool any_assistant = false;
    for (const auto& t : s.turns) any_assistant |= t.role == "assistant";
    if (!any_assistant) throw RowProblem{fmt::format("'{}' has no assistant message to learn from", c("messages"))};
  } else {
    fail("data.format: unknown format '{}'", f);
  }
  return s;
}

}  // namespace ftune

// The nesting bound every JSON reader of ftune applies. nlohmann::json parses iteratively, but
// copying, printing and destroying a value recurse once per level, so a row of a few hundred
// thousand '[' would overflow the stack long after parsing. No file ftune reads (datasets,
// config.json, tokenizer files, adapters, quant states) nests anywhere near this deep.
#pragma once
#include <nlohmann/json.hpp>

#include <stdexcept>
#include <string>
#include <string_view>

namespace ftune {

inline constexpr int kMaxJsonDepth = 256;

// Thrown by the parser callback below; callers turn it into their own one-line error.
struct JsonTooDeep : std::runtime_error {
  JsonTooDeep() : std::runtime_error("nests deeper than " + std::to_string(kMaxJsonDepth) + " levels") {}
};

// True for the parse events that open a level deeper than kMaxJsonDepth.
template <typename Event>
bool json_too_deep(int depth, Event ev) {
  return (ev == Event::object_start || ev == Event::array_start) && depth >= kMaxJsonDepth;
}

// nlohmann::json::parse with the depth bound. Throws JsonTooDeep or json::parse_error.
template <typename Input>
nlohmann::json parse_json_bounded(Input&& input) {
  using json = nlohmann::json;
  return json::parse(std::forward<Input>(input), [](int depth, json::parse_event_t ev, json&) {
    if (json_too_deep(depth, ev)) throw JsonTooDeep();
    return true;
  });
}

// The library's message without its "[json.exception.parse_error.101] " tag.
inline std::string json_reason(const std::exception& e) {
  std::string_view what = e.what();
  if (const size_t close = what.find("] "); what.starts_with("[json.") && close != std::string_view::npos)
    what.remove_prefix(close + 2);
  return std::string(what);
}

}  // namespace ftune

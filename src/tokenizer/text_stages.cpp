// Normalizers, pre-tokenizers and decoders of tokenizer.json: the subset the Llama 2 and Llama 3
// files use, plus the close relatives (Metaspace, ByteLevel with its regex). Anything else is refused
// by name so that a tokenizer is never silently approximated.
#include "core/error.h"
#include "tokenizer/text_stages.h"

namespace ftune {

using nlohmann::json;

namespace {

std::string type_of(const json& node, const std::string& where) {
  if (!node.is_object() || !node.contains("type") || !node["type"].is_string())
    fail("{}: expected an object with a string \"type\"", where);
  return node["type"].get<std::string>();
}

std::string str_at(const json& node, const char* key, const std::string& where) {
  if (!node.contains(key) || !node[key].is_string()) fail("{}.{}: expected a string", where, key);
  return node[key].get<std::string>();
}

bool bool_at(const json& node, const char* key, bool dflt) {
  return node.contains(key) && node[key].is_boolean() ? node[key].get<bool>() : dflt;
}

// A Replace/Split pattern: {"String": s} or {"Regex": r}.
std::pair<std::string, bool> pattern_at(const json& node, const std::string& where) {
  const std::string w = where + ".pattern";
  if (!node.contains("pattern") || !node["pattern"].is_object()) fail("{}: expected {{\"String\"|\"Regex\": ...}}", w);
  const json& p = node["pattern"];
  if (p.contains("String") && p["String"].is_string()) return {p["String"].get<std::string>(), true};
  if (p.contains("Regex") && p["Regex"].is_string()) return {p["Regex"].get<std::string>(), false};
  fail("{}: expected {{\"String\"|\"Regex\": ...}}", w);
}

void replace_all(std::string& s, const std::string& from, const std::string& to) {
  if (from.empty() || s.find(from) == std::string::npos) return;
  std::string out;
  out.reserve(s.size() + s.size() / 4);
  size_t i = 0;
  for (size_t j; (j = s.find(from, i)) != std::string::npos; i = j + from.size()) {
    out.append(s, i, j - i);
    out += to;
  }
  out.append(s, i);
  s = std::move(out);
}

// The first character of a string (a Metaspace replacement or a Strip content).
std::string first_char(const std::string& s, const std::string& where) {
  if (s.empty()) fail("{}: expected a one-character string", where);
  return s.substr(0, utf8_len(static_cast<unsigned char>(s[0])));
}

constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

}  // namespace

// ---------------------------------------------------------------- normalizers

struct Normalizer::Step {
  enum class Kind { Prepend, Replace } kind;
  std::string a, b;
};

Normalizer::Normalizer(const json& node, const std::string& where) {
  if (!node.is_null()) add(node, where);
}
Normalizer::~Normalizer() = default;

void Normalizer::add(const json& node, const std::string& where) {
  const std::string type = type_of(node, where);
  if (type == "Sequence") {
    if (!node.contains("normalizers") || !node["normalizers"].is_array()) fail("{}.normalizers: expected an array", where);
    for (size_t i = 0; i < node["normalizers"].size(); ++i)
      add(node["normalizers"][i], fmt::format("{}.normalizers[{}]", where, i));
  } else if (type == "Prepend") {
    steps_.push_back({Step::Kind::Prepend, str_at(node, "prepend", where), {}});
  } else if (type == "Replace") {
    auto [pat, literal] = pattern_at(node, where);
    if (!literal) fail("{}.pattern: unsupported Replace normalizer with a Regex pattern", where);
    steps_.push_back({Step::Kind::Replace, pat, str_at(node, "content", where)});
  } else {
    fail("{}.type: unsupported normalizer \"{}\"", where, type);
  }
}

bool Normalizer::prepends() const {
  for (const Step& s : steps_)
    if (s.kind == Step::Kind::Prepend) return true;
  return false;
}

void Normalizer::apply(std::string& text, bool continues) const {
  for (const Step& s : steps_) {
    if (text.empty()) return;  // no normalizer adds text to an empty piece
    if (s.kind == Step::Kind::Prepend) {
      if (!continues) text.insert(0, s.a);
    } else
      replace_all(text, s.a, s.b);
  }
}

// ---------------------------------------------------------------- pre-tokenizers

struct PreTokenizer::Step {
  enum class Kind { Split, ByteLevel, Metaspace } kind;
  std::unique_ptr<Regex> regex;  // Split; ByteLevel with use_regex
  bool remove_matches = false;   // Split behavior "Removed" (else "Isolated")
  bool add_prefix_space = false;
  std::string replacement;  // Metaspace
  enum class Prepend { Always, First, Never } prepend = Prepend::Always;
  bool split = true;
};

PreTokenizer::PreTokenizer(const json& node, const std::string& where) {
  if (!node.is_null()) add(node, where);
}
PreTokenizer::~PreTokenizer() = default;

void PreTokenizer::add(const json& node, const std::string& where) {
  const std::string type = type_of(node, where);
  Step s;
  if (type == "Sequence") {
    if (!node.contains("pretokenizers") || !node["pretokenizers"].is_array())
      fail("{}.pretokenizers: expected an array", where);
    for (size_t i = 0; i < node["pretokenizers"].size(); ++i)
      add(node["pretokenizers"][i], fmt::format("{}.pretokenizers[{}]", where, i));
    return;
  } else if (type == "Split") {
    s.kind = Step::Kind::Split;
    auto [pat, literal] = pattern_at(node, where);
    const std::string behavior = str_at(node, "behavior", where);
    if (behavior != "Isolated" && behavior != "Removed")
      fail("{}.behavior: unsupported Split behavior \"{}\"", where, behavior);
    if (bool_at(node, "invert", false)) fail("{}.invert: unsupported Split with invert true", where);
    s.remove_matches = behavior == "Removed";
    s.regex = std::make_unique<Regex>(pat, literal, where + ".pattern");
  } else if (type == "ByteLevel") {
    s.kind = Step::Kind::ByteLevel;
    s.add_prefix_space = bool_at(node, "add_prefix_space", true);
    if (bool_at(node, "use_regex", true)) s.regex = std::make_unique<Regex>(kGpt2Pattern, false, where);
  } else if (type == "Metaspace") {
    s.kind = Step::Kind::Metaspace;
    s.replacement = first_char(str_at(node, "replacement", where), where + ".replacement");
    std::string scheme = "always";
    if (node.contains("prepend_scheme") && node["prepend_scheme"].is_string())
      scheme = node["prepend_scheme"].get<std::string>();
    else if (node.contains("add_prefix_space") && !bool_at(node, "add_prefix_space", true))
      scheme = "never";
    if (scheme == "always")
      s.prepend = Step::Prepend::Always;
    else if (scheme == "first")
      s.prepend = Step::Prepend::First;
    else if (scheme == "never")
      s.prepend = Step::Prepend::Never;
    else
      fail("{}.prepend_scheme: unsupported value \"{}\"", where, scheme);
    s.split = bool_at(node, "split", true);
  } else {
    fail("{}.type: unsupported pre-tokenizer \"{}\"", where, type);
  }
  steps_.push_back(std::move(s));
}

bool PreTokenizer::prepends() const {
  for (const Step& s : steps_)
    if (s.kind == Step::Kind::Metaspace && s.prepend != Step::Prepend::Never) return true;
  return false;
}

void PreTokenizer::apply(std::vector<PreToken>& pieces) const {
  std::vector<PreToken> next;
  std::vector<std::pair<size_t, size_t>> matches;
  for (const Step& s : steps_) {
    next.clear();
    next.reserve(pieces.size() * 2);
    for (PreToken& p : pieces) {
      const size_t produced_from = next.size();
      if (s.kind == Step::Kind::Metaspace) {
        replace_all(p.text, " ", s.replacement);
        const bool prepend = !p.continues && (s.prepend == Step::Prepend::Always ||
                                              (s.prepend == Step::Prepend::First && p.at_start));
        if (prepend && p.text.compare(0, s.replacement.size(), s.replacement) != 0) p.text.insert(0, s.replacement);
        if (!s.split) {
          next.push_back(std::move(p));
          continue;
        }
        // Each replacement char starts a new piece (it stays with the text after it).
        size_t begin = 0;
        for (size_t j = p.text.find(s.replacement, 1); j != std::string::npos; j = p.text.find(s.replacement, j + 1)) {
          next.push_back({p.text.substr(begin, j - begin), p.at_start && begin == 0, p.continues && begin == 0});
          begin = j;
        }
        if (begin < p.text.size()) next.push_back({p.text.substr(begin), p.at_start && begin == 0, p.continues && begin == 0});
        continue;
      }
      if (s.kind == Step::Kind::ByteLevel && s.add_prefix_space && (p.text.empty() || p.text[0] != ' '))
        p.text = " " + p.text;
      if (!s.regex) {
        next.push_back(std::move(p));
      } else {
        matches.clear();
        s.regex->find_all(p.text, matches);
        size_t last = 0;
        bool first = p.at_start;
        const auto emit = [&](size_t b, size_t e) {
          if (e > b) next.push_back({p.text.substr(b, e - b), first && b == 0});
        };
        for (auto [b, e] : matches) {
          emit(last, b);
          if (!s.remove_matches) emit(b, e);
          last = e;
        }
        emit(last, p.text.size());
      }
      if (s.kind == Step::Kind::ByteLevel) {
        for (size_t i = produced_from; i < next.size(); ++i) {
          std::string mapped;
          mapped.reserve(next[i].text.size() * 2);
          for (unsigned char c : next[i].text) mapped += bytes_.encode(c);
          next[i].text = std::move(mapped);
        }
      }
    }
    pieces.swap(next);
  }
}

// ---------------------------------------------------------------- decoders

struct Decoder::Step {
  enum class Kind { Replace, ByteFallback, Fuse, Strip, ByteLevel, Metaspace } kind;
  std::string a, b;  // Replace from/to; Strip content; Metaspace replacement
  int start = 0, stop = 0;
  bool strip_first = false;  // Metaspace: drop the space the pre-tokenizer prepended
};

Decoder::Decoder(const json& node, const std::string& where) {
  if (!node.is_null()) add(node, where);
}
Decoder::~Decoder() = default;

void Decoder::add(const json& node, const std::string& where) {
  const std::string type = type_of(node, where);
  Step s;
  if (type == "Sequence") {
    if (!node.contains("decoders") || !node["decoders"].is_array()) fail("{}.decoders: expected an array", where);
    for (size_t i = 0; i < node["decoders"].size(); ++i)
      add(node["decoders"][i], fmt::format("{}.decoders[{}]", where, i));
    return;
  } else if (type == "Replace") {
    auto [pat, literal] = pattern_at(node, where);
    if (!literal) fail("{}.pattern: unsupported Replace decoder with a Regex pattern", where);
    s = {Step::Kind::Replace, pat, str_at(node, "content", where)};
  } else if (type == "ByteFallback") {
    s.kind = Step::Kind::ByteFallback;
  } else if (type == "Fuse") {
    s.kind = Step::Kind::Fuse;
  } else if (type == "Strip") {
    s.kind = Step::Kind::Strip;
    s.a = first_char(str_at(node, "content", where), where + ".content");
    s.start = node.value("start", 0);
    s.stop = node.value("stop", 0);
  } else if (type == "ByteLevel") {
    s.kind = Step::Kind::ByteLevel;
  } else if (type == "Metaspace") {
    s.kind = Step::Kind::Metaspace;
    s.a = first_char(str_at(node, "replacement", where), where + ".replacement");
    std::string scheme = node.contains("prepend_scheme") && node["prepend_scheme"].is_string()
                             ? node["prepend_scheme"].get<std::string>()
                             : (bool_at(node, "add_prefix_space", true) ? "always" : "never");
    s.strip_first = scheme != "never";
  } else {
    fail("{}.type: unsupported decoder \"{}\"", where, type);
  }
  steps_.push_back(std::move(s));
}

namespace {

// "<0xAB>" -> 0xAB, or -1.
int byte_token(const std::string& t) {
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
  int v = 0;
  for (int i = 3; i < 5; ++i) {
    const char c = t[i];
    int d = (c >= '0' && c <= '9') ? c - '0' : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
    if (d < 0) return -1;
    v = v * 16 + d;
  }
  return v;
}

}  // namespace

std::string Decoder::decode(std::vector<std::string> tokens) const {
  if (steps_.empty()) {  // no decoder: the tokens joined by spaces
    std::string out;
    for (size_t i = 0; i < tokens.size(); ++i) out += (i ? " " : "") + tokens[i];
    return out;
  }
  for (const Step& s : steps_) {
    switch (s.kind) {
      case Step::Kind::Replace:
        for (auto& t : tokens) replace_all(t, s.a, s.b);
        break;
      case Step::Kind::ByteFallback: {
        std::vector<std::string> out;
        std::string run;  // consecutive byte tokens, decoded together
        int run_len = 0;
        const auto flush = [&] {
          if (run_len == 0) return;
          if (utf8_invalid_at(run) == std::string::npos) {
            out.push_back(run);
          } else {
            for (int i = 0; i < run_len; ++i) out.emplace_back("\xEF\xBF\xBD");
          }
          run.clear();
          run_len = 0;
        };
        for (auto& t : tokens) {
          const int b = byte_token(t);
          if (b >= 0) {
            run += static_cast<char>(b);
            ++run_len;
          } else {
            flush();
            out.push_back(std::move(t));
          }
        }
        flush();
        tokens.swap(out);
        break;
      }
      case Step::Kind::Fuse: {
        std::string all;
        for (const auto& t : tokens) all += t;
        tokens.assign(1, std::move(all));
        break;
      }
      case Step::Kind::Strip:
        for (auto& t : tokens) {
          for (int i = 0; i < s.start && t.compare(0, s.a.size(), s.a) == 0; ++i) t.erase(0, s.a.size());
          for (int i = 0; i < s.stop && t.size() >= s.a.size() && t.compare(t.size() - s.a.size(), s.a.size(), s.a) == 0; ++i)
            t.erase(t.size() - s.a.size());
        }
        break;
      case Step::Kind::ByteLevel: {
        std::string bytes;
        for (const auto& t : tokens) {
          const size_t mark = bytes.size();
          bool ok = true;
          for (size_t i = 0; i < t.size() && ok;) {
            const int b = bytes_.decode(utf8_decode(t, i));
            if (b < 0) ok = false;
            else bytes += static_cast<char>(b);
            i += utf8_len(static_cast<unsigned char>(t[i]));
          }
          // A token outside the byte alphabet (an added token, say) is taken as its own text.
          if (!ok) bytes.replace(mark, std::string::npos, t);
        }
        tokens.assign(1, utf8_lossy(bytes));
        break;
      }
      case Step::Kind::Metaspace:
        for (size_t i = 0; i < tokens.size(); ++i) {
          replace_all(tokens[i], s.a, " ");
          if (i == 0 && s.strip_first && !tokens[i].empty() && tokens[i][0] == ' ') tokens[i].erase(0, 1);
        }
        break;
    }
  }
  std::string out;
  for (const auto& t : tokens) out += t;
  return out;
}

}  // namespace ftune

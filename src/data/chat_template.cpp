// The chat templates of the Llama 2 and Llama 3 families, ChatML and Alpaca, and a custom one. The chat
// ones render text as the models' Jinja chat_template does (tests/test_chat_template_jinja.cpp).
#include "data/chat_template.h"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "core/json_limits.h"
#include "tokenizer/tokenizer.h"

namespace ftune {

namespace {

// Python's str.strip() (Jinja's `trim`, `.strip()`): drops the code points str.isspace() calls space.
bool py_space(uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}
// The code point of the UTF-8 sequence at s[i] and its length (a stray byte counts as itself).
std::pair<uint32_t, size_t> code_point(const std::string& s, size_t i) {
  const auto u = [&](size_t k) { return static_cast<uint32_t>(static_cast<unsigned char>(s[k])); };
  const uint32_t c = u(i);
  const size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
  if (n == 1 || i + n > s.size()) return {c, 1};
  uint32_t v = c & (0x7F >> n);
  for (size_t k = 1; k < n; ++k) v = (v << 6) | (u(i + k) & 0x3F);
  return {v, n};
}
std::string strip(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e) {
    const auto [c, n] = code_point(s, b);
    if (!py_space(c)) break;
    b += n;
  }
  while (e > b) {
    size_t start = e - 1;  // back to the first byte of the last code point
    while (start > b && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80 && e - start < 4) --start;
    const auto [c, n] = code_point(s, start);
    if (start + n != e || !py_space(c)) break;
    e = start;
  }
  return s.substr(b, e - b);
}

struct Builder {
  std::vector<Piece> out;
  bool all;
  void text(std::string t, bool trained) {
    if (!t.empty()) out.push_back({std::move(t), false, -1, all || trained});
  }
  void special(const std::string& t, bool trained) { out.push_back({t, true, -1, all || trained}); }
  void id(int32_t i, const char* name, bool trained) { out.push_back({name, true, i, all || trained}); }
};

// Splits the turns into (system, [(user, assistant)...]); a trailing user turn without answer is dropped.
void exchanges(const Sample& s, std::string* system, std::vector<std::pair<std::string, std::string>>* ex) {
  std::string user;
  for (const auto& t : s.turns) {
    if (t.role == "system") *system = t.content;
    else if (t.role == "user") user = t.content;
    else ex->emplace_back(user, t.content), user.clear();
  }
}

void render_llama2(const Sample& s, Builder& b, const Tokenizer& tok) {
  std::string system;
  std::vector<std::pair<std::string, std::string>> ex;
  exchanges(s, &system, &ex);
  bool has_system = false;  // even an empty system turn gets its <<SYS>> block, as in the Jinja template
  for (const auto& t : s.turns) has_system |= t.role == "system";
  for (size_t i = 0; i < ex.size(); ++i) {
    b.id(tok.bos_id(), "<s>", false);
    const std::string user = i == 0 && has_system ? "<<SYS>>\n" + system + "\n<</SYS>>\n\n" + ex[i].first : ex[i].first;
    b.text("[INST] " + strip(user) + " [/INST]", false);
    b.text(" " + strip(ex[i].second) + " ", true);
    b.id(tok.eos_id(), "</s>", true);
  }
}

// Mistral-7B-Instruct: <s>[INST] user [/INST]answer</s>[INST] ... with the contents as given (no
// stripping), turns alternating user/assistant from a user turn, and no system role: a
// conversation the template's own raise_exception refuses is refused here too.
void render_mistral(const Sample& s, Builder& b, const Tokenizer& tok) {
  for (size_t i = 0; i < s.turns.size(); ++i) {
    const std::string& role = s.turns[i].role;
    if (role != "user" && role != "assistant")
      fail("data.template=mistral: the Mistral template has only user and assistant turns, not '{}'", role);
    if ((role == "user") != (i % 2 == 0))
      fail("data.template=mistral: the Mistral template needs turns alternating user/assistant from a user turn");
  }
  b.id(tok.bos_id(), "<s>", false);
  for (const auto& t : s.turns) {
    if (t.role == "user") {
      b.text("[INST] " + t.content + " [/INST]", false);
    } else {
      b.text(t.content, true);
      b.id(tok.eos_id(), "</s>", true);
    }
  }
}

void render_llama3(const Sample& s, Builder& b) {
  b.special("<|begin_of_text|>", false);
  for (const auto& t : s.turns) {
    const bool answer = t.role == "assistant";
    b.special("<|start_header_id|>", false);
    b.text(t.role, false);
    b.special("<|end_header_id|>", false);
    b.text("\n\n", false);
    b.text(strip(t.content), answer);
    b.special("<|eot_id|>", answer);
  }
}

// Llama 3.1: a system turn always comes first, with the knowledge cutoff and date the template defaults to.
void render_llama31(const Sample& s, Builder& b) {
  const bool has_system = !s.turns.empty() && s.turns[0].role == "system";
  b.special("<|begin_of_text|>", false);
  b.special("<|start_header_id|>", false);
  b.text("system", false);
  b.special("<|end_header_id|>", false);
  b.text("\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n" +
             (has_system ? strip(s.turns[0].content) : std::string()),
         false);
  b.special("<|eot_id|>", false);
  Sample rest = s;
  if (has_system) rest.turns.erase(rest.turns.begin());
  Builder turns{{}, b.all};
  render_llama3(rest, turns);
  b.out.insert(b.out.end(), turns.out.begin() + 1, turns.out.end());  // without a second <|begin_of_text|>
}

void render_chatml(const Sample& s, Builder& b, const Tokenizer& tok) {
  const bool has_specials = tok.token_id("<|im_start|>") >= 0 && tok.token_id("<|im_end|>") >= 0;
  for (const auto& t : s.turns) {
    const bool answer = t.role == "assistant";
    if (has_specials) b.special("<|im_start|>", false);
    b.text((has_specials ? "" : "<|im_start|>") + t.role + "\n", false);
    b.text(t.content, answer);
    if (has_specials) b.special("<|im_end|>", answer);
    b.text(has_specials ? "\n" : "<|im_end|>\n", answer && !has_specials);
  }
}

void render_alpaca(const Sample& s, Builder& b, const Tokenizer& tok, bool add_bos) {
  std::string system;
  std::vector<std::pair<std::string, std::string>> ex;
  exchanges(s, &system, &ex);
  if (add_bos && tok.bos_id() >= 0) b.id(tok.bos_id(), "<bos>", false);
  for (size_t i = 0; i < ex.size(); ++i) {
    const bool with_input = i == 0 && s.alpaca_input;
    std::string prompt = system.empty()
                             ? (with_input ? "Below is an instruction that describes a task, paired with an input that "
                                             "provides further context. Write a response that appropriately completes "
                                             "the request.\n\n"
                                           : "Below is an instruction that describes a task. Write a response that "
                                             "appropriately completes the request.\n\n")
                             : system + "\n\n";
    if (i > 0) prompt = "\n\n";
    if (with_input)
      prompt += "### Instruction:\n" + s.alpaca_instruction + "\n\n### Input:\n" + s.alpaca_context + "\n\n";
    else
      prompt += "### Instruction:\n" + ex[i].first + "\n\n";
    prompt += "### Response:\n";
    b.text(prompt, false);
    b.text(ex[i].second, true);
  }
  if (tok.eos_id() >= 0) b.id(tok.eos_id(), "<eos>", true);
}

void render_custom(const Sample& s, Builder& b, const Tokenizer& tok, const std::string& tpl, bool add_bos) {
  const auto at = tpl.find("{completion}");
  if (tpl.find("{prompt}") == std::string::npos || at == std::string::npos)
    fail("data.custom_template must contain {{prompt}} and {{completion}}, found '{}'", tpl);
  std::string system;
  std::vector<std::pair<std::string, std::string>> ex;
  exchanges(s, &system, &ex);
  auto fill = [&](std::string t, const std::string& prompt) {
    for (auto [key, val] : {std::pair<std::string, std::string>{"{prompt}", prompt}, {"{system}", system}})
      for (size_t p; (p = t.find(key)) != std::string::npos;) t.replace(p, key.size(), val);
    return t;
  };
  if (add_bos && tok.bos_id() >= 0) b.id(tok.bos_id(), "<bos>", false);
  for (const auto& [user, answer] : ex) {
    b.text(fill(tpl.substr(0, at), user), false);
    b.text(answer + fill(tpl.substr(at + 12), user), true);
  }
  if (tok.eos_id() >= 0) b.id(tok.eos_id(), "<eos>", true);
}

}  // namespace

std::vector<Piece> render(const Sample& s, const TemplateOptions& opt, const Tokenizer& tok) {
  Builder b{{}, opt.train_on_all};
  if (s.kind == Sample::Kind::Text) {
    if (opt.add_bos) {
      if (tok.bos_id() < 0) fail("data.add_bos is true but the tokenizer has no BOS token");
      b.id(tok.bos_id(), "<bos>", true);
    }
    b.text(s.text, true);
    if (opt.add_eos) {
      if (tok.eos_id() < 0) fail("data.add_eos is true but the tokenizer has no EOS token");
      b.id(tok.eos_id(), "<eos>", true);
    }
    return b.out;
  }
  if (opt.name == "llama2") render_llama2(s, b, tok);
  else if (opt.name == "mistral") render_mistral(s, b, tok);
  else if (opt.name == "llama3") render_llama3(s, b);
  else if (opt.name == "llama3.1") render_llama31(s, b);
  else if (opt.name == "chatml") render_chatml(s, b, tok);
  else if (opt.name == "alpaca") render_alpaca(s, b, tok, opt.add_bos);
  else if (opt.name == "custom") render_custom(s, b, tok, opt.custom, opt.add_bos);
  else fail("data.template: unknown template '{}' (llama2, llama3, llama3.1, mistral, chatml, alpaca, custom)",
            opt.name);
  return b.out;
}

void tokenize_pieces(const std::vector<Piece>& pieces, const Tokenizer& tok, const std::string& template_name,
                     std::vector<int32_t>* ids, std::vector<int32_t>* labels) {
  const bool dummy_prefix = tok.adds_dummy_prefix();
  bool first_text = true, after_text = false;
  for (const auto& p : pieces) {
    const size_t before = ids->size();
    if (p.special) {
      const int32_t id = p.id >= 0 ? p.id : tok.token_id(p.text);
      if (id < 0)
        fail("the tokenizer has no token '{}', which data.template={} needs (choose another template)", p.text,
             template_name);
      ids->push_back(id);
    } else {
      // SentencePiece-style tokenizers mark a word start on every call; a piece that continues
      // the text after a space must not get a second marker: the marker stands for that space. One that continues text with no space between (Mistral's
      // answer right after "[/INST]") gets no marker at all, as in one string.
      const bool drop_space = dummy_prefix && !first_text && p.text.starts_with(' ');
      const bool glued = dummy_prefix && after_text && !p.text.empty() && !p.text.starts_with(' ');
      for (int32_t id : glued ? tok.encode_continuation(p.text) : tok.encode(drop_space ? p.text.substr(1) : p.text))
        ids->push_back(id);
      first_text = false;
    }
    after_text = !p.special;
    labels->resize(ids->size(), -100);
    if (p.trained)
      for (size_t i = before; i < ids->size(); ++i) (*labels)[i] = (*ids)[i];
  }
}

std::string chat_template_source(const std::string& model_dir) {
  const auto path = std::filesystem::path(model_dir) / "tokenizer_config.json";
  std::ifstream f(path);
  if (!f) return "";
  nlohmann::json j;
  try {
    j = parse_json_bounded(f);
  } catch (const std::exception&) {  // unreadable: no template to follow, as when the file is absent
    return "";
  }
  if (!j.is_object() || !j.contains("chat_template")) return "";
  std::string t;
  const auto& ct = j["chat_template"];
  if (ct.is_string()) t = ct.get<std::string>();
  else if (ct.is_array())  // a list of named templates: the default one
    for (const auto& e : ct)
      if (e.is_object() && e.value("name", "") == "default" && e.contains("template") && e["template"].is_string())
        t = e["template"].get<std::string>();
  return t;
}

std::string detect_chat_template(const std::string& model_dir) {
  const std::string t = chat_template_source(model_dir);
  if (t.find("<|start_header_id|>") != std::string::npos)
    return t.find("Cutting Knowledge Date") != std::string::npos ? "llama3.1" : "llama3";
  if (t.find("[INST]") != std::string::npos) return t.find("<<SYS>>") != std::string::npos ? "llama2" : "mistral";
  if (t.find("<|im_start|>") != std::string::npos) return "chatml";
  return "";
}

std::vector<Piece> chat_prompt_pieces(const std::string& name, const std::vector<Turn>& turns, const Tokenizer& tok) {
  Sample s;
  s.kind = Sample::Kind::Chat;
  s.turns = turns;
  s.turns.push_back({"assistant", ""});
  TemplateOptions o;
  o.name = name;
  std::vector<Piece> pieces = render(s, o, tok);
  // Cut where the last trained run (the empty answer and its end-of-turn) begins; what follows it
  // (ChatML's newline after <|im_end|>) belongs to the answer too.
  size_t end = pieces.size();
  while (end > 0 && !pieces[end - 1].trained) --end;
  if (end == 0) return pieces;  // nothing trained: no answer to cut
  while (end > 0 && pieces[end - 1].trained) --end;
  pieces.resize(end);
  return pieces;
}

std::vector<int32_t> chat_prompt_ids(const std::string& name, const std::vector<Turn>& turns, const Tokenizer& tok) {
  const std::vector<Piece> pieces = chat_prompt_pieces(name, turns, tok);
  std::vector<int32_t> ids, labels;
  tokenize_pieces(pieces, tok, name, &ids, &labels);
  return ids;
}

std::string end_of_turn_token(const std::string& name) {
  if (name == "llama3" || name == "llama3.1") return "<|eot_id|>";
  if (name == "chatml") return "<|im_end|>";
  return "";
}

}  // namespace ftune

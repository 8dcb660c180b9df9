// The routes of `ftune serve`: request checks (each error names its field), the sequences handed to
// the engine, and responses in OpenAI's and vLLM's shapes.
#include "infer/api.h"

#include <fmt/format.h>

#include <algorithm>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <random>

#include "core/error.h"
#include "core/json_limits.h"
#include "data/chat_template.h"

namespace ftune {

namespace {

using json = nlohmann::json;

// A request the client got wrong: its status, OpenAI's error type, and the field.
struct ApiError {
  int status;
  std::string type, param, message, code;
};

template <typename... Args>
[[noreturn]] void bad(const std::string& param, fmt::format_string<Args...> f, Args&&... args) {
  throw ApiError{400, "invalid_request_error", param, fmt::format(f, std::forward<Args>(args)...), ""};
}

json error_body(const ApiError& e) {
  return {{"error",
           {{"message", e.message},
            {"type", e.type},
            {"param", e.param.empty() ? json() : json(e.param)},
            {"code", e.code.empty() ? json() : json(e.code)}}}};
}

// A value of the request as an error message quotes it: short, valid UTF-8.
std::string shown(const json& v) {
  std::string s = v.dump(-1, ' ', false, json::error_handler_t::replace);
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return s;
}

bool absent(const json& req, const char* key) { return !req.contains(key) || req[key].is_null(); }

int64_t get_int(const json& req, const char* key, int64_t def, int64_t lo, int64_t hi) {
  if (absent(req, key)) return def;
  const json& v = req[key];
  if (!v.is_number_integer()) bad(key, "{}: expected an integer, got {}", key, shown(v));
  const int64_t x =
      v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX) ? INT64_MAX : v.get<int64_t>();
  if (x < lo || x > hi) bad(key, "{}: expected an integer in [{}, {}], got {}", key, lo, hi, shown(v));
  return x;
}

double get_number(const json& req, const char* key, double def, double lo, double hi, bool lo_open) {
  if (absent(req, key)) return def;
  const json& v = req[key];
  if (!v.is_number()) bad(key, "{}: expected a number, got {}", key, shown(v));
  const double x = v.get<double>();
  if (!(lo_open ? x > lo : x >= lo) || !(x <= hi))
    bad(key, "{}: expected a number in {}{}, {}], got {}", key, lo_open ? "(" : "[", lo, hi, shown(v));
  return x;
}

bool get_bool(const json& req, const char* key, bool def) {
  if (absent(req, key)) return def;
  if (!req[key].is_boolean()) bad(key, "{}: expected true or false, got {}", key, shown(req[key]));
  return req[key].get<bool>();
}

// Options of OpenAI's that the server does not implement: refused unless left at their defaults.
void refuse_unsupported(const json& req) {
  for (const char* key : {"n", "best_of"})
    if (get_int(req, key, 1, 1, INT64_MAX) != 1) bad(key, "{}: only 1 is supported", key);
  if (get_bool(req, "stream", false)) bad("stream", "stream: streaming responses are not supported");
  for (const char* key : {"frequency_penalty", "presence_penalty"})
    if (get_number(req, key, 0.0, -2.0, 2.0, false) != 0.0) bad(key, "{}: only 0 is supported", key);
  if (!absent(req, "logit_bias") && !(req["logit_bias"].is_object() && req["logit_bias"].empty()))
    bad("logit_bias", "logit_bias: not supported");
  if (!absent(req, "suffix")) bad("suffix", "suffix: not supported");
}

std::vector<int32_t> token_ids(const json& list, int64_t vocab, const std::string& field) {
  std::vector<int32_t> ids;
  for (const json& v : list) {
    if (!v.is_number_integer()) bad(field, "{}: token ids must be integers, got {}", field, shown(v));
    const int64_t id = v.is_number_unsigned() ? static_cast<int64_t>(std::min<uint64_t>(v.get<uint64_t>(), INT64_MAX))
                                              : v.get<int64_t>();
    if (id < 0 || id >= vocab) bad(field, "{}: token id {} is outside the vocabulary of {}", field, id, vocab);
    ids.push_back(static_cast<int32_t>(id));
  }
  return ids;
}

std::string finish_reason(const Generation& g) { return g.finish_reason == "length" ? "length" : "stop"; }

// Length in code points (OpenAI's text_offset counts characters, not bytes).
int64_t chars(const std::string& s) {
  return std::count_if(s.begin(), s.end(), [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; });
}

json usage(int64_t prompt, int64_t completion) {
  return {{"prompt_tokens", prompt}, {"completion_tokens", completion}, {"total_tokens", prompt + completion}};
}

// A special token's string in tokenizer_config.json: a plain string or {"content": ...}.
std::string config_token(const json& cfg, const char* key) {
  if (!cfg.is_object() || !cfg.contains(key)) return "";
  const json& v = cfg[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return "";
}

}  // namespace

ServedModel served_model(const std::string& name, const std::string& model_dir, const Tokenizer* tok,
                         const LlamaConfig& cfg, const std::string& chat) {
  ServedModel m;
  m.name = name;
  m.chat_template = chat == "auto" ? detect_chat_template(model_dir) : chat;
  m.chat_template_source = chat_template_source(model_dir);
  json tc;
  if (std::ifstream f(std::filesystem::path(model_dir) / "tokenizer_config.json"); f) {
    try {
      tc = parse_json_bounded(f);
    } catch (const std::exception&) {  // unreadable: the tokenizer's own strings stand in
    }
  }
  if (tc.is_object() && tc.contains("tokenizer_class") && tc["tokenizer_class"].is_string())
    m.tokenizer_class = tc["tokenizer_class"].get<std::string>();
  if (tok) {
    m.bos_token = config_token(tc, "bos_token");
    m.eos_token = config_token(tc, "eos_token");
    m.pad_token = config_token(tc, "pad_token");
    if (m.bos_token.empty() && tok->bos_id() >= 0) m.bos_token = tok->id_to_token(tok->bos_id());
    if (m.eos_token.empty() && tok->eos_id() >= 0) m.eos_token = tok->id_to_token(tok->eos_id());
    if (m.pad_token.empty() && cfg.pad_token_id >= 0)
      m.pad_token = tok->id_to_token(static_cast<int32_t>(cfg.pad_token_id));
  }
  return m;
}

Api::Api(ServingEngine& engine, const Tokenizer* tok, ServedModel model)
    : engine_(engine), tok_(tok), model_(std::move(model)) {
  if (!tok_) return;
  // Tokenizers that do not read special tokens' strings in text (SentencePiece) get them cut out
  // first, so that /tokenize("</s>") is the EOS id, which lm-eval's remote tokenizer relies on.
  std::vector<std::string> names = {model_.bos_token, model_.eos_token, model_.pad_token};
  for (const char* t : {"<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                        "<|eot_id|>", "<|im_start|>", "<|im_end|>"})
    names.emplace_back(t);
  for (const std::string& s : names) {
    const int32_t id = s.empty() ? -1 : tok_->token_id(s);
    if (id < 0 || std::any_of(specials_.begin(), specials_.end(), [&](const auto& p) { return p.first == s; }))
      continue;
    if (tok_->encode(s) == std::vector<int32_t>{id}) continue;  // the tokenizer reads it itself
    specials_.emplace_back(s, id);
  }
  std::sort(specials_.begin(), specials_.end(),
            [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
}

std::vector<int32_t> Api::encode_text(const std::string& text, bool add_special) const {
  const Tokenizer& tok = need_tokenizer("prompt");
  std::vector<int32_t> ids;
  if (add_special && tok.bos_id() >= 0) ids.push_back(tok.bos_id());
  size_t at = 0;
  while (at < text.size()) {
    size_t hit = std::string::npos, which = 0;
    for (size_t i = 0; i < specials_.size(); ++i)  // leftmost, then longest (the list is longest first)
      if (const size_t p = text.find(specials_[i].first, at); p < hit) hit = p, which = i;
    const size_t end = hit == std::string::npos ? text.size() : hit;
    if (end > at) {
      const auto part = tok.encode(text.substr(at, end - at));
      ids.insert(ids.end(), part.begin(), part.end());
    }
    if (hit == std::string::npos) break;
    ids.push_back(specials_[which].second);
    at = hit + specials_[which].first.size();
  }
  return ids;
}

const Tokenizer& Api::need_tokenizer(const char* field) const {
  if (!tok_)
    throw ApiError{400, "invalid_request_error", field,
                   fmt::format("{}: the model '{}' has no tokenizer; send token ids", field, model_.name), ""};
  return *tok_;
}

std::string Api::adapter_of(const json& req) const {
  if (absent(req, "model")) return "";
  if (!req["model"].is_string()) bad("model", "model: expected a string, got {}", shown(req["model"]));
  const std::string name = req["model"].get<std::string>();
  if (name == model_.name) return "";
  if (engine_.has_adapter(name)) return name;
  std::string known = model_.name;
  for (const AdapterSource& a : engine_.adapters()) known += ", " + a.name;
  throw ApiError{404, "invalid_request_error", "model",
                 fmt::format("model: '{}' is not served here (models: {})", name, known), "model_not_found"};
}

GenerateOptions Api::generation(const json& req, int64_t max_tokens) const {
  GenerateOptions o;
  o.max_new_tokens = max_tokens;
  o.sampling.temperature = get_number(req, "temperature", 1.0, 0.0, 100.0, false);
  o.sampling.top_p = get_number(req, "top_p", 1.0, 0.0, 1.0, true);
  o.sampling.top_k = std::max<int64_t>(get_int(req, "top_k", 0, -1, INT64_MAX), 0);
  // No seed: a fresh one, as OpenAI's sampling differs from call to call.
  o.sampling.seed = absent(req, "seed") ? std::random_device{}()
                                        : static_cast<uint64_t>(get_int(req, "seed", 0, INT64_MIN, INT64_MAX));
  if (!absent(req, "stop")) {
    const json& s = req["stop"];
    if (s.is_string())
      o.stop.push_back(s.get<std::string>());
    else if (s.is_array() && std::all_of(s.begin(), s.end(), [](const json& x) { return x.is_string(); }))
      for (const json& x : s) o.stop.push_back(x.get<std::string>());
    else
      bad("stop", "stop: expected a string or a list of strings, got {}", shown(s));
    std::erase(o.stop, std::string());
    if (!o.stop.empty()) need_tokenizer("stop");
  }
  if (!get_bool(req, "ignore_eos", false))
    for (int64_t e : engine_.config().eos_token_ids) o.eos_ids.push_back(static_cast<int32_t>(e));
  if (!absent(req, "stop_token_ids")) {
    if (!req["stop_token_ids"].is_array()) bad("stop_token_ids", "stop_token_ids: expected a list of token ids");
    for (int32_t id : token_ids(req["stop_token_ids"], engine_.config().vocab_size, "stop_token_ids"))
      o.eos_ids.push_back(id);
  }
  return o;
}

void Api::check_context(const std::vector<int32_t>& prompt, int64_t max_tokens, const char* what) const {
  const int64_t ctx = engine_.config().max_position_embeddings, n = static_cast<int64_t>(prompt.size());
  if (n == 0) bad(what, "{}: empty (it needs at least one token)", what);
  if (n + max_tokens > ctx)
    bad(what,
        "This model's maximum context length is {} tokens, but {} tokens were asked for ({} in the {}, {} in "
        "max_tokens); shorten the {} or lower max_tokens",
        ctx, n + max_tokens, n, what, max_tokens, what);
}

std::string Api::piece(const std::vector<int32_t>& seq, size_t i, int32_t token, bool as_ids) const {
  if (!tok_ || as_ids) return fmt::format("token_id:{}", token);
  const size_t from = i >= 8 ? i - 8 : 0;
  std::vector<int32_t> w(seq.begin() + static_cast<std::ptrdiff_t>(from), seq.begin() + static_cast<std::ptrdiff_t>(i));
  const std::string before = tok_->decode(w);
  w.push_back(token);
  const std::string after = tok_->decode(w);
  return after.starts_with(before) ? after.substr(before.size()) : tok_->decode({token});
}

json Api::completion_logprobs(const std::vector<int32_t>& prompt, const SequenceResult& r, bool echo,
                              bool as_ids) const {
  std::vector<int32_t> seq = prompt;
  seq.insert(seq.end(), r.gen.tokens.begin(), r.gen.tokens.end());
  json tokens = json::array(), lps = json::array(), tops = json::array(), offsets = json::array();
  int64_t offset = 0;
  for (size_t i = echo ? 0 : prompt.size(); i < seq.size(); ++i) {
    const std::string p = piece(seq, i, seq[i], as_ids);
    tokens.push_back(p);
    offsets.push_back(tok_ && !as_ids ? offset : 0);
    offset += chars(p);
    if (i == 0) {  // the first token has no context to be predicted from
      lps.push_back(nullptr), tops.push_back(nullptr);
      continue;
    }
    const TokenLogprob& lp = i < prompt.size() ? r.prompt_logprobs[i - 1] : r.logprobs[i - prompt.size()];
    lps.push_back(lp.logprob);
    json top = json::object();  // the alternatives, best first kept where two tokens read alike, then the token
    for (const auto& [id, v] : lp.top)
      if (const std::string k = piece(seq, i, id, as_ids); !top.contains(k)) top[k] = v;
    if (!top.contains(p)) top[p] = lp.logprob;
    tops.push_back(std::move(top));
  }
  return {{"tokens", tokens}, {"token_logprobs", lps}, {"top_logprobs", tops}, {"text_offset", offsets}};
}

json Api::chat_logprobs(const std::vector<int32_t>& prompt, const SequenceResult& r) const {
  std::vector<int32_t> seq = prompt;
  seq.insert(seq.end(), r.gen.tokens.begin(), r.gen.tokens.end());
  auto entry = [](const std::string& token, double lp) {
    std::vector<int> bytes;
    for (unsigned char c : token) bytes.push_back(c);
    return json{{"token", token}, {"logprob", lp}, {"bytes", bytes}};
  };
  json content = json::array();
  for (size_t g = 0; g < r.gen.tokens.size(); ++g) {
    const size_t i = prompt.size() + g;
    json e = entry(piece(seq, i, seq[i], false), r.logprobs[g].logprob);
    json top = json::array();
    for (const auto& [id, v] : r.logprobs[g].top) top.push_back(entry(piece(seq, i, id, false), v));
    e["top_logprobs"] = std::move(top);
    content.push_back(std::move(e));
  }
  return {{"content", content}};
}

json Api::completions(const json& req) {
  refuse_unsupported(req);
  const std::string adapter = adapter_of(req);
  const int64_t V = engine_.config().vocab_size;
  if (absent(req, "prompt")) bad("prompt", "prompt: required");
  const json& p = req["prompt"];
  std::vector<std::vector<int32_t>> prompts;
  std::vector<std::string> texts;  // what echo returns of each prompt
  auto all = [&](auto pred) { return std::all_of(p.begin(), p.end(), pred); };
  if (p.is_string()) {
    texts.push_back(p.get<std::string>()), prompts.push_back(encode_text(texts.back(), true));
  } else if (p.is_array() && !p.empty() && all([](const json& x) { return x.is_string(); })) {
    for (const json& x : p) texts.push_back(x.get<std::string>()), prompts.push_back(encode_text(texts.back(), true));
  } else if (p.is_array() && !p.empty() && all([](const json& x) { return x.is_number(); })) {
    prompts.push_back(token_ids(p, V, "prompt"));
  } else if (p.is_array() && !p.empty() && all([](const json& x) { return x.is_array(); })) {
    for (const json& x : p) prompts.push_back(token_ids(x, V, "prompt"));
  } else {
    bad("prompt", "prompt: expected a string, a list of strings, a list of token ids or a list of lists of token ids");
  }
  if (texts.empty())
    for (const auto& ids : prompts) texts.push_back(tok_ ? tok_->decode(ids) : "");
  const int64_t max_tokens = get_int(req, "max_tokens", 16, 0, engine_.config().max_position_embeddings);
  const bool echo = get_bool(req, "echo", false);
  const int64_t logprobs = absent(req, "logprobs") ? -1 : get_int(req, "logprobs", 0, 0, 20);
  const bool as_ids = get_bool(req, "return_tokens_as_token_ids", false);  // vLLM's: "token_id:N" for tokens
  GenerateOptions gen = generation(req, max_tokens);
  std::vector<SequenceRequest> seqs;
  for (size_t i = 0; i < prompts.size(); ++i) {
    check_context(prompts[i], max_tokens, "prompt");
    SequenceRequest s;
    s.prompt = prompts[i], s.adapter = adapter, s.gen = gen, s.stream = i;
    s.gen.context = prompts[i];
    s.prompt_logprobs = echo && logprobs >= 0, s.top_logprobs = logprobs;
    seqs.push_back(std::move(s));
  }
  const std::vector<SequenceResult> results = engine_.run(std::move(seqs));
  json choices = json::array();
  int64_t prompt_tokens = 0, completion_tokens = 0;
  for (size_t i = 0; i < results.size(); ++i) {
    const SequenceResult& r = results[i];
    choices.push_back({{"index", i},
                       {"text", (echo ? texts[i] : "") + r.gen.text},
                       {"finish_reason", finish_reason(r.gen)},
                       {"logprobs", logprobs >= 0 ? completion_logprobs(prompts[i], r, echo, as_ids) : json()}});
    prompt_tokens += static_cast<int64_t>(prompts[i].size());
    completion_tokens += static_cast<int64_t>(r.gen.tokens.size());
  }
  return {{"id", fmt::format("cmpl-{}", ++next_id_)},
          {"object", "text_completion"},
          {"created", std::time(nullptr)},
          {"model", absent(req, "model") ? model_.name : req["model"].get<std::string>()},
          {"choices", choices},
          {"usage", usage(prompt_tokens, completion_tokens)}};
}

std::vector<int32_t> Api::chat_prompt(const json& messages) const {
  const Tokenizer& tok = need_tokenizer("messages");
  if (model_.chat_template.empty())
    bad("messages",
        "messages: the model '{}' has no chat template ftune knows (start the server with --chat-template "
        "llama2, llama3, llama3.1, mistral or chatml)",
        model_.name);
  if (!messages.is_array() || messages.empty()) bad("messages", "messages: expected a non-empty list of messages");
  std::vector<Turn> turns;
  for (size_t i = 0; i < messages.size(); ++i) {
    const json& m = messages[i];
    const std::string at = fmt::format("messages[{}]", i);
    if (!m.is_object()) bad(at, "{}: expected an object with role and content", at);
    const std::string role = m.contains("role") && m["role"].is_string() ? m["role"].get<std::string>() : "";
    if (role != "system" && role != "user" && role != "assistant")
      bad(at + ".role", "{}.role: expected system, user or assistant, got {}", at, shown(m.value("role", json())));
    std::string content;
    const json c = m.value("content", json());
    if (c.is_string()) {
      content = c.get<std::string>();
    } else if (c.is_array()) {  // content parts: the text ones, in order
      for (const json& part : c) {
        if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") ||
            !part["text"].is_string())
          bad(at + ".content", "{}.content: only text parts ({{\"type\": \"text\", \"text\": ...}}) are supported", at);
        content += part["text"].get<std::string>();
      }
    } else {
      bad(at + ".content", "{}.content: expected a string or a list of text parts, got {}", at, shown(c));
    }
    turns.push_back({role, content});
  }
  try {
    return chat_prompt_ids(model_.chat_template, turns, tok);
  } catch (const Error& e) {  // a conversation the template refuses (Mistral's: a system turn)
    bad("messages", "messages: {}", e.what());
  }
}

json Api::chat(const json& req) {
  refuse_unsupported(req);
  const std::string adapter = adapter_of(req);
  if (absent(req, "messages")) bad("messages", "messages: required");
  const std::vector<int32_t> prompt = chat_prompt(req["messages"]);
  const int64_t ctx = engine_.config().max_position_embeddings;
  const int64_t room = std::max<int64_t>(ctx - static_cast<int64_t>(prompt.size()), 0);
  const char* key = absent(req, "max_completion_tokens") ? "max_tokens" : "max_completion_tokens";
  const int64_t max_tokens = get_int(req, key, room, 0, ctx);  // by default, what the context leaves
  const bool logprobs = get_bool(req, "logprobs", false);
  const int64_t top = get_int(req, "top_logprobs", 0, 0, 20);
  check_context(prompt, max_tokens, "messages");
  SequenceRequest s;
  s.prompt = prompt, s.adapter = adapter, s.gen = generation(req, max_tokens);
  s.gen.context = prompt;
  if (const std::string eot = end_of_turn_token(model_.chat_template); !eot.empty() && tok_->token_id(eot) >= 0)
    s.gen.eos_ids.push_back(tok_->token_id(eot));  // generation ends where the template's turn does
  s.top_logprobs = logprobs ? top : -1;
  std::vector<SequenceRequest> one;
  one.push_back(std::move(s));
  const SequenceResult r = std::move(engine_.run(std::move(one)).front());
  json choice = {{"index", 0},
                 {"message", {{"role", "assistant"}, {"content", r.gen.text}}},
                 {"finish_reason", finish_reason(r.gen)},
                 {"logprobs", logprobs ? chat_logprobs(prompt, r) : json()}};
  return {{"id", fmt::format("chatcmpl-{}", ++next_id_)},
          {"object", "chat.completion"},
          {"created", std::time(nullptr)},
          {"model", absent(req, "model") ? model_.name : req["model"].get<std::string>()},
          {"choices", json::array({choice})},
          {"usage", usage(static_cast<int64_t>(prompt.size()), static_cast<int64_t>(r.gen.tokens.size()))}};
}

json Api::models() const {
  const int64_t ctx = engine_.config().max_position_embeddings, now = std::time(nullptr);
  json data = json::array();
  data.push_back({{"id", model_.name},
                  {"object", "model"},
                  {"created", now},
                  {"owned_by", "ftune"},
                  {"root", model_.name},
                  {"parent", nullptr},
                  {"max_model_len", ctx}});
  for (const AdapterSource& a : engine_.adapters())
    data.push_back({{"id", a.name},
                    {"object", "model"},
                    {"created", now},
                    {"owned_by", "ftune"},
                    {"root", a.dir},
                    {"parent", model_.name},
                    {"max_model_len", ctx}});
  return {{"object", "list"}, {"data", data}};
}

json Api::tokenize(const json& req) const {
  adapter_of(req);  // a model, when named, must be served here
  std::vector<int32_t> ids;
  if (!absent(req, "messages")) {
    ids = chat_prompt(req["messages"]);
  } else {
    if (absent(req, "prompt") || !req["prompt"].is_string()) bad("prompt", "prompt: expected a string");
    ids = encode_text(req["prompt"].get<std::string>(), get_bool(req, "add_special_tokens", true));
  }
  return {{"count", ids.size()}, {"max_model_len", engine_.config().max_position_embeddings}, {"tokens", ids}};
}

json Api::detokenize(const json& req) const {
  adapter_of(req);
  const Tokenizer& tok = need_tokenizer("tokens");
  if (absent(req, "tokens") || !req["tokens"].is_array()) bad("tokens", "tokens: expected a list of token ids");
  return {{"prompt", tok.decode(token_ids(req["tokens"], engine_.config().vocab_size, "tokens"))}};
}

json Api::tokenizer_info() const {
  if (!tok_)
    throw ApiError{404, "not_found_error", "", fmt::format("the model '{}' has no tokenizer", model_.name), ""};
  auto str = [](const std::string& s) { return s.empty() ? json() : json(s); };
  auto id = [&](const std::string& s) { return s.empty() || tok_->token_id(s) < 0 ? json() : json(tok_->token_id(s)); };
  json info = {{"tokenizer_class", model_.tokenizer_class.empty() ? "ftune" : model_.tokenizer_class},
               {"bos_token", str(model_.bos_token)},
               {"eos_token", str(model_.eos_token)},
               {"pad_token", str(model_.pad_token)},
               {"bos_token_id", id(model_.bos_token)},
               {"eos_token_id", id(model_.eos_token)},
               {"pad_token_id", id(model_.pad_token)},
               {"add_bos_token", tok_->bos_id() >= 0},
               {"model_max_length", engine_.config().max_position_embeddings},
               {"vocab_size", tok_->vocab_size()},
               {"chat_template_name", str(model_.chat_template)}};
  if (!model_.chat_template_source.empty()) info["chat_template"] = model_.chat_template_source;
  return info;
}

Api::Reply Api::handle(const std::string& method, const std::string& path, const std::string& body) {
  try {
    const bool post = method == "POST";
    auto parse = [&] {
      json j;
      try {
        j = parse_json_bounded(body);
      } catch (const std::exception& e) {
        bad("", "the request body is not valid JSON ({})", json_reason(e));
      }
      if (!j.is_object()) bad("", "the request body must be a JSON object, got {}", j.type_name());
      return j;
    };
    if (path == "/v1/completions" && post) return {200, completions(parse())};
    if (path == "/v1/chat/completions" && post) return {200, chat(parse())};
    if (path == "/tokenize" && post) return {200, tokenize(parse())};
    if (path == "/detokenize" && post) return {200, detokenize(parse())};
    if (path == "/v1/models" && method == "GET") return {200, models()};
    if (path == "/tokenizer_info" && method == "GET") return {200, tokenizer_info()};
    if (path == "/health" && method == "GET") return {200, json::object()};
    for (const char* known : {"/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize", "/v1/models",
                              "/tokenizer_info", "/health"})
      if (path == known)
        throw ApiError{405, "invalid_request_error", "", fmt::format("{} does not take {} requests", path, method), ""};
    throw ApiError{404, "not_found_error", "", fmt::format("no route {} {}", method, path), ""};
  } catch (const ApiError& e) {
    return {e.status, error_body(e)};
  } catch (const Error& e) {  // every mistake of the client's is an ApiError above: this one is the server's
    return {500, error_body({500, "server_error", "", e.what(), ""})};
  } catch (const std::bad_alloc&) {
    return {503, error_body({503, "server_error", "", "out of host memory", ""})};
  } catch (const std::exception& e) {
    return {500, error_body({500, "server_error", "", fmt::format("internal error: {}", e.what()), ""})};
  }
}

}  // namespace ftune

// Reads and writes a Hugging Face Llama config.json (the transformers 4 form with rope_theta /
// rope_scaling / torch_dtype, and the transformers 5 form with rope_parameters / dtype).
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "core/json_limits.h"
#include "model/llama_config.h"

namespace ftune {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

// A value as it appears in the file, short enough for a one-line message.
std::string shown(const json& v) {
  std::string s = v.dump();
  if (s.size() > 40) s = s.substr(0, 37) + "...";
  return s;
}

// nlohmann's message without its "[json.exception...] parse error at line L, column C: " lead.
std::string parse_reason(const json::parse_error& e) {
  std::string s = e.what();
  auto col = s.find("column ");
  auto colon = s.find(": ", col == std::string::npos ? 0 : col);
  if (colon != std::string::npos) s = s.substr(colon + 2);
  for (char& ch : s)
    if (ch == '\n' || ch == '\r') ch = ' ';
  return s;
}

bool present(const json& obj, const char* key) { return obj.contains(key) && !obj.at(key).is_null(); }

// Reading one field of an object; `where` is the dotted name used in messages (e.g.
// "rope_scaling.factor") so that a nested key is named in full.
class Reader {
 public:
  Reader(const json& obj, std::string label, std::string prefix)
      : obj_(obj), label_(std::move(label)), prefix_(std::move(prefix)) {}

  bool has(const char* key) const { return present(obj_, key); }
  std::string where(const char* key) const { return prefix_ + key; }
  const std::string& label() const { return label_; }

  int64_t positive_int(const char* key) const {
    if (!has(key)) fail("{}: missing '{}' (a positive integer)", label_, where(key));
    return positive_int_or(key, 0);
  }
  int64_t positive_int_or(const char* key, int64_t fallback) const {
    if (!has(key)) return fallback;
    const json& v = obj_.at(key);
    if (!v.is_number_integer() || v.get<int64_t>() <= 0)
      fail("{}: '{}' must be a positive integer, found {}", label_, where(key), shown(v));
    return v.get<int64_t>();
  }
  double positive_number_or(const char* key, double fallback) const {
    if (!has(key)) return fallback;
    const json& v = obj_.at(key);
    if (!v.is_number() || v.get<double>() <= 0)
      fail("{}: '{}' must be a positive number, found {}", label_, where(key), shown(v));
    return v.get<double>();
  }
  double positive_number(const char* key) const {
    if (!has(key)) fail("{}: missing '{}' (a positive number)", label_, where(key));
    return positive_number_or(key, 0);
  }
  bool boolean_or(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    const json& v = obj_.at(key);
    if (!v.is_boolean()) fail("{}: '{}' must be true or false, found {}", label_, where(key), shown(v));
    return v.get<bool>();
  }
  std::string string_or(const char* key, const std::string& fallback) const {
    if (!has(key)) return fallback;
    const json& v = obj_.at(key);
    if (!v.is_string()) fail("{}: '{}' must be a string, found {}", label_, where(key), shown(v));
    return v.get<std::string>();
  }
  // Token ids may be one integer or a list of them (Llama 3.1 instruct lists three eos ids);
  // an explicit null means the model has none.
  std::vector<int64_t> token_ids_or(const char* key, std::vector<int64_t> fallback) const {
    if (!obj_.contains(key)) return fallback;
    const json& v = obj_.at(key);
    if (v.is_null()) return {};
    auto one = [&](const json& x) {
      if (!x.is_number_integer() || x.get<int64_t>() < 0)
        fail("{}: '{}' must be a non-negative integer or a list of them, found {}", label_, where(key),
             shown(v));
      return x.get<int64_t>();
    };
    if (!v.is_array()) return {one(v)};
    std::vector<int64_t> ids;
    for (const json& x : v) ids.push_back(one(x));
    return ids;
  }

 private:
  const json& obj_;
  std::string label_;
  std::string prefix_;
};

void check_architecture(const json& root, const std::string& label) {
  bool named = false;
  if (present(root, "architectures")) {
    const json& a = root.at("architectures");
    if (!a.is_array() || a.empty())
      fail("{}: 'architectures' must be a non-empty list of class names, found {}", label, shown(a));
    bool llama = false;
    for (const json& x : a) llama = llama || (x.is_string() && x.get<std::string>() == "LlamaForCausalLM");
    if (!llama) {
      const json& first = a.front();
      fail("{}: architecture '{}' is not supported (supported: LlamaForCausalLM)", label,
           first.is_string() ? first.get<std::string>() : first.dump());
    }
    named = true;
  }
  if (present(root, "model_type")) {
    const json& t = root.at("model_type");
    if (!t.is_string() || t.get<std::string>() != "llama")
      fail("{}: model_type '{}' is not supported (supported: llama)", label,
           t.is_string() ? t.get<std::string>() : t.dump());
    named = true;
  }
  if (!named) fail("{}: neither 'architectures' nor 'model_type' is set; expected a Llama config", label);
}

// `r` reads either rope_scaling (old form) or rope_parameters (new form); both use the same
// field names, with "type" a legacy alias of "rope_type".
RopeScaling parse_rope(const Reader& r) {
  RopeScaling rs;
  const char* type_key = r.has("rope_type") ? "rope_type" : "type";
  rs.type = r.string_or(type_key, "default");
  if (rs.type == "default") return rs;
  if (rs.type == "linear") {
    rs.factor = r.positive_number("factor");
    return rs;
  }
  if (rs.type == "llama3") {
    rs.factor = r.positive_number("factor");
    rs.low_freq_factor = r.positive_number("low_freq_factor");
    rs.high_freq_factor = r.positive_number("high_freq_factor");
    rs.original_max_position_embeddings = r.positive_int("original_max_position_embeddings");
    // The smoothing in between divides by (high - low).
    if (rs.high_freq_factor <= rs.low_freq_factor)
      fail("{}: '{}' ({}) must be greater than '{}' ({})", r.label(), r.where("high_freq_factor"),
           rs.high_freq_factor, r.where("low_freq_factor"), rs.low_freq_factor);
    return rs;
  }
  fail("{}: {} '{}' is not supported (supported: default, linear, llama3)", r.label(), r.where(type_key),
       rs.type);
}

std::string parse_dtype(const Reader& r) {
  const char* key = r.has("dtype") ? "dtype" : "torch_dtype";
  std::string d = r.string_or(key, "float32");
  if (d != "float32" && d != "bfloat16" && d != "float16")
    fail("{}: '{}' must be one of float32, bfloat16, float16, found '{}'", r.label(), key, d);
  return d;
}

}  // namespace

int64_t LlamaConfig::num_parameters() const {
  const int64_t h = hidden_size;
  const int64_t attn = h * q_dim() + 2 * h * kv_dim() + q_dim() * h;
  const int64_t mlp = 3 * h * intermediate_size;
  const int64_t norms = 2 * h;
  const int64_t embed = vocab_size * h;
  return embed + num_hidden_layers * (attn + mlp + norms) + h + (tie_word_embeddings ? 0 : embed);
}

LlamaConfig parse_llama_config(const std::string& json_text, const std::string& label) {
  json root;
  try {
    root = parse_json_bounded(json_text);
  } catch (const JsonTooDeep& e) {
    fail("{}: {}", label, e.what());
  } catch (const json::parse_error& e) {
    fail("{}: invalid JSON at byte {}: {}", label, e.byte, parse_reason(e));
  }
  if (!root.is_object()) fail("{}: expected a JSON object at the top level, found {}", label, root.type_name());
  check_architecture(root, label);

  const Reader r(root, label, "");
  LlamaConfig c;
  c.vocab_size = r.positive_int("vocab_size");
  c.hidden_size = r.positive_int("hidden_size");
  c.intermediate_size = r.positive_int("intermediate_size");
  c.num_hidden_layers = r.positive_int("num_hidden_layers");
  c.num_attention_heads = r.positive_int("num_attention_heads");
  c.num_key_value_heads = r.positive_int_or("num_key_value_heads", c.num_attention_heads);
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    fail("{}: 'num_attention_heads' ({}) must be a multiple of 'num_key_value_heads' ({})", label,
         c.num_attention_heads, c.num_key_value_heads);
  if (r.has("head_dim")) {
    c.head_dim = r.positive_int("head_dim");
  } else {
    if (c.hidden_size % c.num_attention_heads != 0)
      fail("{}: 'hidden_size' ({}) must be a multiple of 'num_attention_heads' ({}) when 'head_dim' is not set",
           label, c.hidden_size, c.num_attention_heads);
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  // RoPE rotates pairs (i, i + d/2).
  if (c.head_dim % 2 != 0) fail("{}: 'head_dim' ({}) must be even for rotary embeddings", label, c.head_dim);
  c.max_position_embeddings = r.positive_int_or("max_position_embeddings", 2048);
  c.rms_norm_eps = r.positive_number_or("rms_norm_eps", 1e-6);

  std::string act = r.string_or("hidden_act", "silu");
  if (act != "silu") fail("{}: 'hidden_act' '{}' is not supported (supported: silu)", label, act);
  if (r.boolean_or("attention_bias", false))
    fail("{}: 'attention_bias' is true; projections with biases are not supported", label);
  if (r.boolean_or("mlp_bias", false)) fail("{}: 'mlp_bias' is true; projections with biases are not supported", label);
  c.tie_word_embeddings = r.boolean_or("tie_word_embeddings", false);

  if (present(root, "rope_parameters")) {
    const json& p = root.at("rope_parameters");
    if (!p.is_object()) fail("{}: 'rope_parameters' must be an object, found {}", label, shown(p));
    const Reader pr(p, label, "rope_parameters.");
    c.rope_theta = pr.has("rope_theta") ? pr.positive_number("rope_theta") : r.positive_number_or("rope_theta", 10000.0);
    c.rope_scaling = parse_rope(pr);
  } else {
    c.rope_theta = r.positive_number_or("rope_theta", 10000.0);
    if (present(root, "rope_scaling")) {
      const json& s = root.at("rope_scaling");
      if (!s.is_object()) fail("{}: 'rope_scaling' must be an object or null, found {}", label, shown(s));
      c.rope_scaling = parse_rope(Reader(s, label, "rope_scaling."));
    }
  }

  c.bos_token_ids = r.token_ids_or("bos_token_id", {1});
  c.eos_token_ids = r.token_ids_or("eos_token_id", {2});
  std::vector<int64_t> pad = r.token_ids_or("pad_token_id", {});
  if (pad.size() > 1) fail("{}: 'pad_token_id' must be a single integer, found {}", label, shown(root.at("pad_token_id")));
  c.pad_token_id = pad.empty() ? -1 : pad[0];
  c.torch_dtype = parse_dtype(r);
  return c;
}

LlamaConfig load_llama_config(const std::string& dir) {
  const std::string path = (fs::path(dir) / "config.json").string();
  if (!fs::is_regular_file(path)) fail("{}: not found (is this a Hugging Face model directory?)", path);
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot be read", path);
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_llama_config(ss.str(), path);
}

std::string llama_config_to_json(const LlamaConfig& cfg) {
  // transformers writes sorted keys with indent 2 (json.dumps(..., sort_keys=True)); nlohmann's
  // default object is a sorted map, so the layout matches.
  auto ids = [](const std::vector<int64_t>& v) -> json {
    if (v.empty()) return nullptr;
    if (v.size() == 1) return v[0];
    return v;
  };
  json j;
  j["architectures"] = {"LlamaForCausalLM"};
  j["attention_bias"] = false;
  j["attention_dropout"] = 0.0;
  j["bos_token_id"] = ids(cfg.bos_token_ids);
  j["eos_token_id"] = ids(cfg.eos_token_ids);
  j["head_dim"] = cfg.head_dim;
  j["hidden_act"] = "silu";
  j["hidden_size"] = cfg.hidden_size;
  j["initializer_range"] = 0.02;
  j["intermediate_size"] = cfg.intermediate_size;
  j["max_position_embeddings"] = cfg.max_position_embeddings;
  j["mlp_bias"] = false;
  j["model_type"] = "llama";
  j["num_attention_heads"] = cfg.num_attention_heads;
  j["num_hidden_layers"] = cfg.num_hidden_layers;
  j["num_key_value_heads"] = cfg.num_key_value_heads;
  if (cfg.pad_token_id >= 0) j["pad_token_id"] = cfg.pad_token_id;
  j["pretraining_tp"] = 1;
  j["rms_norm_eps"] = cfg.rms_norm_eps;
  const RopeScaling& rs = cfg.rope_scaling;
  if (rs.type == "default") {
    j["rope_scaling"] = nullptr;
  } else {
    json s;
    s["rope_type"] = rs.type;
    s["factor"] = rs.factor;
    if (rs.type == "llama3") {
      s["low_freq_factor"] = rs.low_freq_factor;
      s["high_freq_factor"] = rs.high_freq_factor;
      s["original_max_position_embeddings"] = rs.original_max_position_embeddings;
    }
    j["rope_scaling"] = s;
  }
  j["rope_theta"] = cfg.rope_theta;
  j["tie_word_embeddings"] = cfg.tie_word_embeddings;
  j["torch_dtype"] = cfg.torch_dtype;
  j["use_cache"] = true;
  j["vocab_size"] = cfg.vocab_size;
  return j.dump(2) + "\n";
}

}  // namespace ftune

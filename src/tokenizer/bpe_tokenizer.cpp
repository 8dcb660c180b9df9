// tokenizer.json loading and the encode pipeline: added tokens are cut out of the raw text first,
// then each remaining run is normalized, pre-tokenized and merged by the BPE model.
#include "tokenizer/bpe_tokenizer.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/json_limits.h"

namespace ftune {

using nlohmann::json;
namespace fs = std::filesystem;

namespace {

json read_json(const std::string& path) {
  if (!fs::is_regular_file(path)) fail("{}: file not found", path);
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("{}: cannot open", path);
  std::stringstream ss;
  ss << f.rdbuf();
  try {
    return parse_json_bounded(ss.str());
  } catch (const JsonTooDeep& e) {
    fail("{}: {}", path, e.what());
  } catch (const json::parse_error& e) {
    std::string msg = e.what();
    std::replace(msg.begin(), msg.end(), '\n', ' ');
    fail("{}: invalid JSON ({})", path, msg);
  }
}

bool flag(const json& node, const char* key) { return node.contains(key) && node[key].is_boolean() && node[key].get<bool>(); }

bool is_word_char(uint32_t cp) {
  return cp == '_' || (cp < 0x80 ? std::isalnum(static_cast<int>(cp)) != 0 : !is_unicode_space(cp));
}

// A token string from tokenizer_config.json: "<s>" or {"content": "<s>", ...}.
std::string config_token(const json& cfg, const char* key) {
  if (!cfg.contains(key)) return {};
  const json& v = cfg[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return {};
}

}  // namespace

BpeTokenizer::BpeTokenizer(const std::string& path) : path_(path) {
  const json root = read_json(path);
  if (!root.is_object()) fail("{}: expected a JSON object at the top level", path);
  if (!root.contains("model")) fail("{}: model: missing", path);
  model_ = std::make_unique<BpeModel>(root["model"], path);
  const auto node = [&](const char* key) { return root.contains(key) ? root[key] : json(); };
  normalizer_ = std::make_unique<Normalizer>(node("normalizer"), path + ": normalizer");
  pre_tokenizer_ = std::make_unique<PreTokenizer>(node("pre_tokenizer"), path + ": pre_tokenizer");
  decoder_ = std::make_unique<Decoder>(node("decoder"), path + ": decoder");

  int32_t max_id = -1;
  for (const auto& [tok, id] : model_->vocab()) max_id = std::max(max_id, id);
  load_added_tokens(node("added_tokens"));
  for (const AddedToken& t : added_) max_id = std::max(max_id, t.id);
  id_to_token_.assign(static_cast<size_t>(max_id + 1), std::string());
  for (const auto& [tok, id] : model_->vocab()) id_to_token_[id] = tok;
  for (const AddedToken& t : added_) id_to_token_[t.id] = t.content;

  load_post_processor(node("post_processor"), path + ": post_processor");
  load_config();
}

BpeTokenizer::~BpeTokenizer() = default;

void BpeTokenizer::load_added_tokens(const json& node) {
  if (node.is_null()) return;
  if (!node.is_array()) fail("{}: added_tokens: expected an array", path_);
  for (size_t i = 0; i < node.size(); ++i) {
    const json& t = node[i];
    if (!t.is_object() || !t.contains("content") || !t["content"].is_string() || !t.contains("id") ||
        !t["id"].is_number_integer() || t["id"].get<int64_t>() < 0 || t["id"].get<int64_t>() > INT32_MAX)
      fail("{}: added_tokens[{}]: expected {{\"id\": non-negative integer, \"content\": string, ...}}", path_, i);
    AddedToken a{t["content"].get<std::string>(), t["id"].get<int32_t>(), flag(t, "special"), flag(t, "lstrip"),
                 flag(t, "rstrip"), flag(t, "single_word"), flag(t, "normalized")};
    if (a.content.empty()) fail("{}: added_tokens[{}].content: empty", path_, i);
    added_.push_back(std::move(a));
  }
  std::vector<int> order(added_.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int>(i);
  std::stable_sort(order.begin(), order.end(),
                   [&](int x, int y) { return added_[x].content.size() > added_[y].content.size(); });
  for (int i : order) {
    const auto first = static_cast<unsigned char>(added_[i].content[0]);
    // Without a normalizer both passes see the same text, so one pass does.
    if (added_[i].normalized && !normalizer_->empty()) {
      normalized_added_[first].push_back(i);
      has_normalized_added_ = true;
    } else {
      raw_added_[first].push_back(i);
    }
  }
}

int32_t BpeTokenizer::lookup(const std::string& token) const {
  for (const AddedToken& t : added_)
    if (t.content == token) return t.id;
  return model_->token_id(token);
}

void BpeTokenizer::load_post_processor(const json& node, const std::string& where) {
  if (node.is_null()) return;
  const std::string type = node.is_object() && node.contains("type") && node["type"].is_string()
                               ? node["type"].get<std::string>()
                               : std::string();
  if (type == "Sequence") {
    if (!node.contains("processors") || !node["processors"].is_array()) fail("{}.processors: expected an array", where);
    for (size_t i = 0; i < node["processors"].size(); ++i)
      load_post_processor(node["processors"][i], fmt::format("{}.processors[{}]", where, i));
  } else if (type == "ByteLevel") {
    // Changes offsets only, never ids.
  } else if (type == "TemplateProcessing") {
    if (!node.contains("single") || !node["single"].is_array()) fail("{}.single: expected an array", where);
    const json& specials = node.contains("special_tokens") ? node["special_tokens"] : json::object();
    bool seen_a = false;
    for (size_t i = 0; i < node["single"].size(); ++i) {
      const json& item = node["single"][i];
      const std::string w = fmt::format("{}.single[{}]", where, i);
      if (item.contains("Sequence")) {
        seen_a = true;
      } else if (item.contains("SpecialToken") && item["SpecialToken"].contains("id")) {
        const std::string name = item["SpecialToken"]["id"].get<std::string>();
        if (!specials.contains(name) || !specials[name].contains("ids") || !specials[name]["ids"].is_array())
          fail("{}: special token \"{}\" is not in {}.special_tokens", w, name, where);
        auto& dst = seen_a ? template_after_ : template_before_;
        for (const json& id : specials[name]["ids"]) dst.push_back(id.get<int32_t>());
      } else {
        fail("{}: expected {{\"Sequence\": ...}} or {{\"SpecialToken\": ...}}", w);
      }
    }
    has_template_ = true;
  } else if (type == "RobertaProcessing" || type == "BertProcessing") {
    for (const char* key : {"cls", "sep"})
      if (!node.contains(key) || !node[key].is_array() || node[key].size() != 2 || !node[key][1].is_number_integer())
        fail("{}.{}: expected [token, id]", where, key);
    template_before_.push_back(node["cls"][1].get<int32_t>());
    template_after_.push_back(node["sep"][1].get<int32_t>());
    has_template_ = true;
  } else {
    fail("{}.type: unsupported post-processor \"{}\"", where, type);
  }
}

void BpeTokenizer::load_config() {
  const fs::path cfg_path = fs::path(path_).parent_path() / "tokenizer_config.json";
  json cfg = json::object();
  if (fs::exists(cfg_path)) cfg = read_json(cfg_path.string());
  if (!cfg.is_object()) fail("{}: expected a JSON object at the top level", cfg_path.string());
  const auto resolve = [&](const char* key, const char* fallback) {
    std::string name = config_token(cfg, key);
    if (name.empty()) name = fallback;
    const int32_t id = lookup(name);
    if (id < 0 && cfg.contains(key) && !cfg[key].is_null())
      fail("{}: {}: \"{}\" is not a token of {}", cfg_path.string(), key, name, path_);
    return id;
  };
  bos_id_ = resolve("bos_token", "<s>");
  eos_id_ = resolve("eos_token", "</s>");
  // A template with one leading special token names the bos when the config does not.
  if (bos_id_ < 0 && template_before_.size() == 1) bos_id_ = template_before_[0];
  config_add_bos_ = cfg.contains("add_bos_token") && cfg["add_bos_token"].is_boolean() && cfg["add_bos_token"].get<bool>();
  config_add_eos_ = cfg.contains("add_eos_token") && cfg["add_eos_token"].is_boolean() && cfg["add_eos_token"].get<bool>();
}

void BpeTokenizer::split_added(const std::string& text, size_t begin, size_t end, const Buckets& set,
                               std::vector<Segment>& out) const {
  size_t last = begin;  // end of the previous segment
  size_t pos = begin;
  while (pos < end) {
    const auto& bucket = set[static_cast<unsigned char>(text[pos])];
    int hit = -1;
    for (int i : bucket) {
      const std::string& c = added_[i].content;
      if (c.size() <= end - pos && text.compare(pos, c.size(), c) == 0) {
        hit = i;
        break;
      }
    }
    if (hit < 0) {
      ++pos;
      continue;
    }
    const AddedToken& t = added_[hit];
    size_t start = pos, stop = pos + t.content.size();
    if (t.single_word) {
      bool word_before = false, word_after = false;
      if (start > begin) {
        size_t k = start - 1;
        while (k > begin && (static_cast<unsigned char>(text[k]) & 0xC0) == 0x80) --k;
        word_before = is_word_char(utf8_decode(text, k));
      }
      if (stop < end) word_after = is_word_char(utf8_decode(text, stop));
      if (word_before || word_after) {
        pos = stop;
        continue;
      }
    }
    if (t.lstrip) {
      while (start > last) {
        size_t k = start - 1;
        while (k > last && (static_cast<unsigned char>(text[k]) & 0xC0) == 0x80) --k;
        if (!is_unicode_space(utf8_decode(text, k))) break;
        start = k;
      }
    }
    if (t.rstrip) {
      while (stop < end && is_unicode_space(utf8_decode(text, stop)))
        stop += utf8_len(static_cast<unsigned char>(text[stop]));
    }
    if (start > last) out.push_back({last, start, -1});
    out.push_back({start, stop, t.id});
    last = pos = stop;
  }
  if (last < end) out.push_back({last, end, -1});
}

void BpeTokenizer::encode_plain(std::string piece, bool at_start, std::vector<int32_t>& out, bool continues) const {
  std::vector<PreToken> pieces;
  if (!normalizer_->empty()) {
    normalizer_->apply(piece, continues);
    if (has_normalized_added_) {
      std::vector<Segment> segs;
      split_added(piece, 0, piece.size(), normalized_added_, segs);
      for (size_t i = 0; i < segs.size(); ++i) {
        if (segs[i].id >= 0) {
          // Flush what came before, in order.
          pre_tokenizer_->apply(pieces);
          for (const PreToken& p : pieces) model_->encode_word(p.text, out);
          pieces.clear();
          out.push_back(segs[i].id);
        } else {
          pieces.push_back({piece.substr(segs[i].begin, segs[i].end - segs[i].begin), at_start && segs[i].begin == 0,
                            continues && segs[i].begin == 0});
        }
      }
      pre_tokenizer_->apply(pieces);
      for (const PreToken& p : pieces) model_->encode_word(p.text, out);
      return;
    }
  }
  if (piece.empty()) return;
  pieces.push_back({std::move(piece), at_start, continues});
  if (!pre_tokenizer_->empty()) pre_tokenizer_->apply(pieces);
  for (const PreToken& p : pieces) model_->encode_word(p.text, out);
}

void BpeTokenizer::encode_into(const std::string& text, std::vector<int32_t>& out, bool continues) const {
  const size_t bad = utf8_invalid_at(text);
  if (bad != std::string::npos) fail("{}: cannot encode text that is not valid UTF-8 (byte offset {})", path_, bad);
  std::vector<Segment> segs;
  split_added(text, 0, text.size(), raw_added_, segs);
  for (const Segment& s : segs) {
    if (s.id >= 0)
      out.push_back(s.id);
    else
      encode_plain(text.substr(s.begin, s.end - s.begin), s.begin == 0, out, continues && s.begin == 0);
  }
}

std::vector<int32_t> BpeTokenizer::encode(const std::string& text) const { return encode_text(text, false); }

std::vector<int32_t> BpeTokenizer::encode_text(const std::string& text, bool continues) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  encode_into(text, out, continues);
  return out;
}

std::vector<int32_t> BpeTokenizer::encode_continuation(const std::string& text) const {
  return encode_text(text, true);
}

std::vector<int32_t> BpeTokenizer::encode_with_special(const std::string& text, bool add_special) const {
  if (!add_special) return encode(text);
  std::vector<int32_t> out;
  if (has_template_) {
    out = template_before_;
    encode_into(text, out);
    out.insert(out.end(), template_after_.begin(), template_after_.end());
    return out;
  }
  if (config_add_bos_ && bos_id_ >= 0) out.push_back(bos_id_);
  encode_into(text, out);
  if (config_add_eos_ && eos_id_ >= 0) out.push_back(eos_id_);
  return out;
}

std::string BpeTokenizer::id_to_token(int32_t id) const {
  return id >= 0 && static_cast<size_t>(id) < id_to_token_.size() ? id_to_token_[id] : std::string();
}

std::string BpeTokenizer::decode(const std::vector<int32_t>& ids) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    if (id < 0 || static_cast<size_t>(id) >= id_to_token_.size())
      fail("{}: token id {} is outside the vocabulary [0, {})", path_, id, id_to_token_.size());
    tokens.push_back(id_to_token_[id]);
  }
  return decoder_->decode(std::move(tokens));
}

std::unique_ptr<BpeTokenizer> make_bpe_tokenizer(const std::string& path) { return std::make_unique<BpeTokenizer>(path); }

}  // namespace ftune

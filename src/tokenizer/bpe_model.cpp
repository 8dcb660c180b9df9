// BPE over one pre-token: characters (or their <0xXX> bytes, or unk) merged lowest rank first,
// leftmost on ties, with a heap of candidate pairs over a linked list of symbols.
#include "tokenizer/bpe_model.h"

#include <fmt/format.h>

#include <algorithm>

#include "core/error.h"
#include "tokenizer/text_stages.h"

namespace ftune {

using nlohmann::json;

namespace {

uint64_t pair_key(int32_t a, int32_t b) { return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b); }

bool is_unset(const json& node, const char* key) {
  return !node.contains(key) || node[key].is_null() || (node[key].is_string() && node[key].get<std::string>().empty());
}

}  // namespace

BpeModel::BpeModel(const json& node, const std::string& where) : where_(where) {
  if (!node.is_object()) fail("{}: model: expected an object", where);
  const std::string type = node.value("type", std::string("BPE"));
  if (type != "BPE") fail("{}: model.type: unsupported model type \"{}\" (only BPE)", where, type);
  if (node.contains("dropout") && node["dropout"].is_number() && node["dropout"].get<double>() > 0)
    fail("{}: model.dropout: unsupported BPE dropout {}", where, node["dropout"].get<double>());
  if (!is_unset(node, "continuing_subword_prefix"))
    fail("{}: model.continuing_subword_prefix: unsupported (only null)", where);
  if (!is_unset(node, "end_of_word_suffix")) fail("{}: model.end_of_word_suffix: unsupported (only null)", where);
  fuse_unk_ = node.value("fuse_unk", false);
  byte_fallback_ = node.value("byte_fallback", false);
  ignore_merges_ = node.value("ignore_merges", false);

  if (!node.contains("vocab") || !node["vocab"].is_object()) fail("{}: model.vocab: expected an object", where);
  vocab_.reserve(node["vocab"].size());
  for (const auto& [tok, id] : node["vocab"].items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX)
      fail("{}: model.vocab[\"{}\"]: expected a non-negative integer id", where, tok);
    vocab_.emplace(tok, id.get<int32_t>());
  }
  byte_ids_.fill(-1);
  for (int b = 0; b < 256; ++b) byte_ids_[b] = token_id(fmt::format("<0x{:02X}>", b));

  if (node.contains("unk_token") && node["unk_token"].is_string()) {
    const std::string unk = node["unk_token"].get<std::string>();
    unk_id_ = token_id(unk);
    if (unk_id_ < 0) fail("{}: model.unk_token: \"{}\" is not in model.vocab", where, unk);
  }

  if (!node.contains("merges") || !node["merges"].is_array()) fail("{}: model.merges: expected an array", where);
  const json& merges = node["merges"];
  merges_.reserve(merges.size() * 2);
  std::string a, b;
  for (size_t i = 0; i < merges.size(); ++i) {
    const json& m = merges[i];
    if (m.is_string()) {
      const std::string& s = m.get_ref<const std::string&>();
      const size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
        fail("{}: model.merges[{}]: expected \"a b\" with exactly one space, got \"{}\"", where, i, s);
      a.assign(s, 0, sp);
      b.assign(s, sp + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      a = m[0].get<std::string>();
      b = m[1].get<std::string>();
    } else {
      fail("{}: model.merges[{}]: expected \"a b\" or [\"a\", \"b\"]", where, i);
    }
    const int32_t ia = token_id(a), ib = token_id(b), inew = token_id(a + b);
    if (ia < 0) fail("{}: model.merges[{}]: token \"{}\" is not in model.vocab", where, i, a);
    if (ib < 0) fail("{}: model.merges[{}]: token \"{}\" is not in model.vocab", where, i, b);
    if (inew < 0) fail("{}: model.merges[{}]: merged token \"{}\" is not in model.vocab", where, i, a + b);
    merges_.insert_or_assign(pair_key(ia, ib), Merge{static_cast<int32_t>(i), inew});
  }
}

int32_t BpeModel::token_id(std::string_view token) const {
  auto it = vocab_.find(token);
  return it == vocab_.end() ? -1 : it->second;
}

const std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>& BpeModel::vocab() const { return vocab_; }

void BpeModel::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    const int32_t id = token_id(word);
    if (id >= 0) {
      out.push_back(id);
      return;
    }
  }
  const bool cacheable = word.size() <= kMaxCachedWord;
  CacheShard& shard = cache_[StringHash{}(word) % kCacheShards];
  if (cacheable) {
    std::lock_guard<std::mutex> lock(shard.mutex);
    auto it = shard.map.find(word);
    if (it != shard.map.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t mark = out.size();
  merge_word(word, out);
  if (cacheable) {
    std::lock_guard<std::mutex> lock(shard.mutex);
    if (shard.map.size() >= kMaxCache / kCacheShards) shard.map.clear();
    shard.map.emplace(std::string(word), std::vector<int32_t>(out.begin() + static_cast<std::ptrdiff_t>(mark), out.end()));
  }
}

void BpeModel::merge_word(std::string_view word, std::vector<int32_t>& out) const {
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
    bool alive;
  };
  std::vector<Symbol> sym;
  sym.reserve(word.size());
  const auto push = [&](int32_t id) {
    const auto n = static_cast<int32_t>(sym.size());
    sym.push_back({id, n - 1, n + 1, true});
  };
  bool pending_unk = false;
  for (size_t i = 0; i < word.size();) {
    const size_t n = std::min<size_t>(utf8_len(static_cast<unsigned char>(word[i])), word.size() - i);
    const std::string_view ch = word.substr(i, n);
    i += n;
    const int32_t id = token_id(ch);
    if (id >= 0) {
      if (pending_unk) push(unk_id_), pending_unk = false;
      push(id);
      continue;
    }
    if (byte_fallback_ &&
        std::all_of(ch.begin(), ch.end(), [&](char c) { return byte_ids_[static_cast<unsigned char>(c)] >= 0; })) {
      if (pending_unk) push(unk_id_), pending_unk = false;
      for (char c : ch) push(byte_ids_[static_cast<unsigned char>(c)]);
      continue;
    }
    if (unk_id_ < 0)
      fail("{}: cannot encode \"{}\": it is not in model.vocab and model.unk_token is not set", where_, std::string(ch));
    if (pending_unk && !fuse_unk_) push(unk_id_);
    pending_unk = true;
  }
  if (pending_unk) push(unk_id_);
  if (sym.empty()) return;
  sym.back().next = -1;

  struct Candidate {
    int32_t rank;
    int32_t pos;
    int32_t new_id;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::vector<Candidate> heap;
  const auto consider = [&](int32_t left) {
    if (left < 0 || sym[left].next < 0) return;
    auto it = merges_.find(pair_key(sym[left].id, sym[sym[left].next].id));
    if (it == merges_.end()) return;
    heap.push_back({it->second.rank, left, it->second.new_id});
    std::push_heap(heap.begin(), heap.end(), std::greater<>{});
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(sym.size()); ++i) consider(i);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), std::greater<>{});
    const Candidate c = heap.back();
    heap.pop_back();
    Symbol& left = sym[c.pos];
    if (!left.alive || left.next < 0) continue;
    // Stale when either side changed since the candidate was queued.
    auto it = merges_.find(pair_key(left.id, sym[left.next].id));
    if (it == merges_.end() || it->second.new_id != c.new_id) continue;
    Symbol& right = sym[left.next];
    right.alive = false;
    left.id = c.new_id;
    left.next = right.next;
    if (right.next >= 0) sym[right.next].prev = c.pos;
    consider(left.prev);
    consider(c.pos);
  }
  for (int32_t i = 0; i >= 0; i = sym[i].next) out.push_back(sym[i].id);
}

}  // namespace ftune

// The BPE model of tokenizer.json: vocabulary, ranked merges, byte fallback and unknown tokens,
// turning one pre-token into ids. Results are cached per pre-token.
#pragma once
#include <nlohmann/json.hpp>

#include <array>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace ftune {

// Transparent hash so maps keyed by std::string accept std::string_view look-ups.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

class BpeModel {
 public:
  // `node` is the "model" object; `where` names the file for errors.
  BpeModel(const nlohmann::json& node, const std::string& where);
  BpeModel(const BpeModel&) = delete;
  BpeModel& operator=(const BpeModel&) = delete;

  // Appends the ids of one pre-token.
  void encode_word(std::string_view word, std::vector<int32_t>& out) const;
  // Id of a vocabulary entry, or -1.
  int32_t token_id(std::string_view token) const;
  const std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>& vocab() const;
  size_t num_merges() const { return merges_.size(); }

 private:
  void merge_word(std::string_view word, std::vector<int32_t>& out) const;

  struct Merge {
    int32_t rank;
    int32_t new_id;
  };
  std::string where_;
  std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>> vocab_;
  std::unordered_map<uint64_t, Merge> merges_;
  int32_t unk_id_ = -1;
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  std::array<int32_t, 256> byte_ids_{};  // ids of <0xXX>, -1 where absent

  // Pre-token -> ids, in shards chosen by the word's hash so that threads encoding different words
  // rarely wait on the same lock. Bounded: a shard is cleared when it grows past its share of
  // kMaxCache entries.
  static constexpr size_t kMaxCache = 200000;
  static constexpr size_t kCacheShards = 64;
  static constexpr size_t kMaxCachedWord = 256;
  struct CacheShard {
    std::mutex mutex;
    std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> map;
  };
  mutable std::array<CacheShard, kCacheShards> cache_;
};

}  // namespace ftune

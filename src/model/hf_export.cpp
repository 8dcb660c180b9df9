// Hugging Face model directory writer: side files copied, weights sharded greedily in key order.
#include "model/hf_export.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <map>

#include "core/error.h"
#include "io/safetensors.h"
#include "params/param_table.h"

namespace ftune {

namespace fs = std::filesystem;

std::vector<std::string> hf_side_files(const std::string& base_dir) {
  static const char* const kNames[] = {"config.json",          "generation_config.json", "tokenizer.json",
                                       "tokenizer.model",      "tokenizer_config.json",  "special_tokens_map.json",
                                       "added_tokens.json",    "chat_template.jinja"};
  std::vector<std::string> out;
  for (const char* n : kNames)
    if (fs::is_regular_file(fs::path(base_dir) / n)) out.emplace_back(n);
  return out;
}

void save_hf_model(const std::string& dir, const std::string& base_dir, const ParamTable& table, const LlamaWeights& w,
                   DType dtype, uint64_t max_shard_bytes) {
  save_hf_model(dir, base_dir, table, [&](const ParamSpec& s) { return param_tensor(w, s); }, dtype, max_shard_bytes);
}

void save_hf_model(const std::string& dir, const std::string& base_dir, const ParamTable& table,
                   const std::function<Tensor(const ParamSpec&)>& tensor_of, DType dtype, uint64_t max_shard_bytes) {
  FT_ASSERT(max_shard_bytes > 0);
  for (const std::string& name : hf_side_files(base_dir)) {
    std::error_code ec;
    fs::copy_file(fs::path(base_dir) / name, fs::path(dir) / name, fs::copy_options::overwrite_existing, ec);
    if (ec) fail("{}/{}: cannot copy to {}: {}", base_dir, name, dir, ec.message());
  }
  // Greedy in table (checkpoint) order: a tensor that would overflow the shard opens the next one,
  // as transformers' shard_checkpoint does.
  const uint64_t elem = static_cast<uint64_t>(dtype_size(dtype));
  std::vector<std::vector<const ParamSpec*>> shards(1);
  uint64_t in_shard = 0, total = 0;
  for (const ParamSpec& s : table.specs()) {
    const uint64_t bytes = static_cast<uint64_t>(s.numel()) * elem;
    if (in_shard > 0 && in_shard + bytes > max_shard_bytes) shards.emplace_back(), in_shard = 0;
    shards.back().push_back(&s);
    in_shard += bytes;
    total += bytes;
  }
  const size_t n = shards.size();
  std::map<std::string, std::string> weight_map;
  for (size_t i = 0; i < n; ++i) {
    const std::string file =
        n == 1 ? std::string("model.safetensors") : fmt::format("model-{:05d}-of-{:05d}.safetensors", i + 1, n);
    SafetensorsWriter out;
    for (const ParamSpec* s : shards[i]) {
      const Tensor t = tensor_of(*s);
      FT_ASSERT(t.numel() == s->numel());
      out.add_f32(s->key, t, dtype);
      weight_map[s->key] = file;
    }
    out.write((fs::path(dir) / file).string(), {{"format", "pt"}});
  }
  if (n == 1) return;
  nlohmann::json index;
  index["metadata"] = {{"total_size", total}};
  index["weight_map"] = weight_map;
  const std::string path = (fs::path(dir) / "model.safetensors.index.json").string();
  std::ofstream f(path);
  f << index.dump(2) << "\n";
  f.flush();
  if (!f) fail("{}: cannot write", path);
}

}  // namespace ftune

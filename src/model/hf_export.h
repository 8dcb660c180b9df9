// A trained model as a Hugging Face model directory that AutoModelForCausalLM.from_pretrained
// loads: config.json and generation_config.json as the base has them, the base's tokenizer files,
// and every weight in the base's dtype as safetensors shards with model.safetensors.index.json, or
// one model.safetensors when they fit one shard (as transformers' save_pretrained writes them).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "model/llama_config.h"
#include "model/weights.h"

namespace ftune {

class ParamTable;
struct ParamSpec;

// transformers' default max_shard_size, "5GB" = 5 * 10^9 bytes.
inline constexpr uint64_t kMaxShardBytes = 5'000'000'000ull;

// The files of `base_dir` copied beside the weights: config, generation config, tokenizer.
std::vector<std::string> hf_side_files(const std::string& base_dir);

// Writes into `dir` (which must exist). `dtype` is the dtype the weights are stored in.
void save_hf_model(const std::string& dir, const std::string& base_dir, const ParamTable& table, const LlamaWeights& w,
                   DType dtype, uint64_t max_shard_bytes = kMaxShardBytes);
// The same with each tensor asked for when it is written (fp32, the spec's shape), so that host
// memory holds one shard at a time, not the model.
void save_hf_model(const std::string& dir, const std::string& base_dir, const ParamTable& table,
                   const std::function<Tensor(const ParamSpec&)>& tensor_of, DType dtype,
                   uint64_t max_shard_bytes = kMaxShardBytes);

}  // namespace ftune

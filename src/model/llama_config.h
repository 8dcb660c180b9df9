// The architecture of a Llama-family model, as read from a Hugging Face config.json.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace ftune {

struct RopeScaling {
  std::string type = "default";  // "default", "linear" or "llama3"
  double factor = 1.0;
  double low_freq_factor = 1.0;                 // llama3
  double high_freq_factor = 4.0;                // llama3
  int64_t original_max_position_embeddings = 8192;  // llama3
};

struct LlamaConfig {
  int64_t vocab_size = 32000;
  int64_t hidden_size = 4096;
  int64_t intermediate_size = 11008;
  int64_t num_hidden_layers = 32;
  int64_t num_attention_heads = 32;
  int64_t num_key_value_heads = 32;  // null in the file -> num_attention_heads
  int64_t head_dim = 128;            // null in the file -> hidden_size / num_attention_heads
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  std::vector<int64_t> bos_token_ids = {1};
  std::vector<int64_t> eos_token_ids = {2};  // eos_token_id may be an int or a list
  int64_t pad_token_id = -1;                 // -1 = none
  std::string torch_dtype = "float32";       // "float32", "bfloat16", "float16"

  int64_t q_dim() const { return num_attention_heads * head_dim; }
  int64_t kv_dim() const { return num_key_value_heads * head_dim; }
  // Total parameter count of the base model.
  int64_t num_parameters() const;
};

// Reads and validates `<dir>/config.json` (both the rope_theta/rope_scaling/torch_dtype form
// and the newer rope_parameters/dtype form). Throws ftune::Error naming the file and key: a
// missing file, invalid JSON, an architecture other than Llama (named in the message), a
// missing or non-positive size, heads not dividing, attention_bias/mlp_bias true, an unknown
// rope type.
LlamaConfig load_llama_config(const std::string& dir);
LlamaConfig parse_llama_config(const std::string& json_text, const std::string& label);
// Writes `cfg` as a transformers-style config.json (LlamaForCausalLM).
std::string llama_config_to_json(const LlamaConfig& cfg);

}  // namespace ftune

// Model shape presets.
#include "model/presets.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "core/error.h"

namespace ftune {

namespace {
LlamaConfig make(int64_t vocab, int64_t hidden, int64_t inter, int64_t layers, int64_t heads, int64_t kv,
                 int64_t max_pos, double eps, double theta) {
  LlamaConfig c;
  c.vocab_size = vocab;
  c.hidden_size = hidden;
  c.intermediate_size = inter;
  c.num_hidden_layers = layers;
  c.num_attention_heads = heads;
  c.num_key_value_heads = kv;
  c.head_dim = hidden / heads;
  c.max_position_embeddings = max_pos;
  c.rms_norm_eps = eps;
  c.rope_theta = theta;
  c.torch_dtype = "bfloat16";
  return c;
}
}  // namespace

std::vector<std::string> preset_names() {
  return {"tiny", "tinyllama", "llama2-7b", "llama2-13b", "llama2-70b", "llama3-8b", "llama3-70b"};
}

LlamaConfig preset_config(const std::string& name) {
  if (name == "tiny") {
    LlamaConfig c = make(1024, 128, 352, 4, 4, 2, 512, 1e-5, 10000.0);
    c.torch_dtype = "float32";
    return c;
  }
  if (name == "tinyllama") return make(32000, 2048, 5632, 22, 32, 4, 2048, 1e-5, 10000.0);
  if (name == "llama2-7b") return make(32000, 4096, 11008, 32, 32, 32, 4096, 1e-5, 10000.0);
  if (name == "llama2-13b") return make(32000, 5120, 13824, 40, 40, 40, 4096, 1e-5, 10000.0);
  if (name == "llama2-70b") return make(32000, 8192, 28672, 80, 64, 8, 4096, 1e-5, 10000.0);
  if (name == "llama3-8b") {
    LlamaConfig c = make(128256, 4096, 14336, 32, 32, 8, 8192, 1e-5, 500000.0);
    c.bos_token_ids = {128000};
    c.eos_token_ids = {128001};
    return c;
  }
  if (name == "llama3-70b") {  // Llama-3.1/3.3-70B without their RoPE scaling
    LlamaConfig c = make(128256, 8192, 28672, 80, 64, 8, 8192, 1e-5, 500000.0);
    c.bos_token_ids = {128000};
    c.eos_token_ids = {128001};
    return c;
  }
  fail("unknown model preset '{}' (known: {})", name, fmt::join(preset_names(), ", "));
}

}  // namespace ftune

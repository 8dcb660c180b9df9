// Merging an adapter into its base, tensor by tensor.
#include "model/merge.h"

#include <vector>

#include "core/error.h"
#include "io/checkpoint.h"
#include "model/hf_export.h"
#include "model/weights.h"
#include "params/param_table.h"

namespace ftune {

// Each element's r-term sum in a fixed order (in double): the merged model is the same bytes
// whatever the thread count, which a BLAS GEMM's blocking would not guarantee.
void merge_lora_into(Tensor& w, const LoraPair& pair, float scaling) {
  FT_ASSERT(pair.active() && w.dim(0) == pair.b.dim(0) && w.dim(1) == pair.a.dim(1) && pair.a.dim(0) == pair.b.dim(1));
  const int64_t out = w.dim(0), in = w.dim(1), r = pair.a.dim(0);
  const float* a = pair.a.ptr();
  const float* b = pair.b.ptr();
  float* wp = w.ptr();
#pragma omp parallel for schedule(static)
  for (int64_t o = 0; o < out; ++o) {
    std::vector<double> acc(static_cast<size_t>(in), 0.0);
    for (int64_t k = 0; k < r; ++k) {
      const double bk = b[o * r + k];
      const float* ak = a + k * in;
      for (int64_t i = 0; i < in; ++i) acc[i] += bk * ak[i];
    }
    float* row = wp + o * in;
    for (int64_t i = 0; i < in; ++i) row[i] = static_cast<float>(row[i] + scaling * acc[i]);
  }
}

void merge_adapter(LlamaWeights& w, const LoraParams& lora) {
  for (size_t l = 0; l < lora.layers.size(); ++l)
    for (int p = 0; p < kNumProj; ++p)
      if (lora.layers[l][p].active()) merge_lora_into(w.layers[l].proj[p], lora.layers[l][p], lora.spec.scaling());
}

void save_merged_model(const std::string& dir, const std::string& base_dir, const LoraParams& lora) {
  const LlamaConfig cfg = load_llama_config(base_dir);
  const CheckpointReader ckpt(base_dir);
  check_llama_checkpoint(cfg, ckpt);
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l)
    for (int p = 0; p < kNumProj; ++p)
      if (stored_quantized(ckpt, l, static_cast<Proj>(p)))
        fail("{}: the base is stored in 4 bits; merge the adapter into the base in its original precision (bf16, fp16 "
             "or fp32), since merging into 4-bit weights loses what the adapter learned",
             base_dir);
  if (static_cast<int64_t>(lora.layers.size()) != cfg.num_hidden_layers)
    fail("{}: the adapter has {} layers, the model {}", base_dir, lora.layers.size(), cfg.num_hidden_layers);
  const auto source = checkpoint_source(cfg, ckpt);
  const float scaling = lora.spec.scaling();
  const ParamTable table = ParamTable::full(cfg);
  save_hf_model(
      dir, base_dir, table,
      [&](const ParamSpec& s) {
        switch (s.role) {
          case ParamRole::Embed: return source->embed();
          case ParamRole::FinalNorm: return source->final_norm();
          case ParamRole::LmHead: return source->lm_head();
          case ParamRole::InputNorm: return source->norm(s.layer, false);
          case ParamRole::PostNorm: return source->norm(s.layer, true);
          case ParamRole::Proj: break;
        }
        Tensor w = source->proj(s.layer, static_cast<Proj>(s.proj));
        const LoraPair& pair = lora.layers[s.layer][s.proj];
        if (pair.active()) merge_lora_into(w, pair, scaling);
        return w;
      },
      ckpt.info("model.embed_tokens.weight").dtype);
}

}  // namespace ftune

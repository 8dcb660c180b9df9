// The frozen base weights of a Llama model in fp32 (CPU reference), loaded from a HF checkpoint.
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/tensor.h"
#include "model/llama_config.h"

namespace ftune {

class CheckpointReader;
struct Nf4Tensor;

// The seven linear projections of a decoder layer, in peft's usual target order.
enum class Proj : int { Q = 0, K, V, O, Gate, Up, Down };
inline constexpr int kNumProj = 7;
const char* proj_name(Proj p);    // "q_proj", ...
const char* proj_module(Proj p);  // "self_attn.q_proj", "mlp.gate_proj", ...
// {out_features, in_features} of a projection.
std::array<int64_t, 2> proj_shape(const LlamaConfig& cfg, Proj p);

struct LayerWeights {
  Tensor input_norm;                  // [H]
  Tensor post_norm;                   // [H]
  std::array<Tensor, kNumProj> proj;  // q [heads*d, H], k/v [kv*d, H], o [H, heads*d], gate/up [I, H], down [H, I]
};

struct LlamaWeights {
  Tensor embed;                      // [V, H]
  std::vector<LayerWeights> layers;  // [L]
  Tensor final_norm;                 // [H]
  Tensor lm_head;                    // [V, H]; empty when tied to embed
  const Tensor& head() const { return lm_head.empty() ? embed : lm_head; }
};

// Loads every tensor, checking each shape against `cfg` (projections that bitsandbytes saved in
// NF4 are read through their quant state and dequantized); errors name the directory, tensor,
// expected and found shape. A tensor missing from the checkpoint is an error too.
LlamaWeights load_llama_weights(const LlamaConfig& cfg, const CheckpointReader& ckpt);
// One base tensor at a time, by role, so that a backend can upload (or quantize) tensor by tensor
// and the host never holds the whole model. Every tensor comes back in fp32, shape-checked.
class WeightSource {
 public:
  virtual ~WeightSource() = default;
  virtual Tensor embed() const = 0;                          // [V, H]
  virtual Tensor final_norm() const = 0;                     // [H]
  virtual Tensor lm_head() const = 0;                        // [V, H]; only when not tied
  virtual Tensor norm(int64_t layer, bool post) const = 0;   // [H]: input (false) or post-attention
  virtual Tensor proj(int64_t layer, Proj p) const = 0;      // [out, in] (dequantized when stored in NF4)
  // A projection stored in NF4 by bitsandbytes, as stored (no dequantization); false when the
  // source holds it in floating point.
  virtual bool proj_nf4(int64_t layer, Proj p, Nf4Tensor& out) const { return false; }
};
// Copies out of weights already in memory (tests, the CPU model's).
std::unique_ptr<WeightSource> memory_source(const LlamaWeights& w);
// Reads each tensor from the checkpoint when asked (the reader must outlive the source).
std::unique_ptr<WeightSource> checkpoint_source(const LlamaConfig& cfg, const CheckpointReader& ckpt);

// True when bitsandbytes saved this projection in 4-bit form (its quant-state key is there).
bool stored_quantized(const CheckpointReader& ckpt, int64_t layer, Proj p);

// Checks that every tensor the model needs is in the checkpoint with the shape config.json implies,
// without reading any data (the same one-line errors as load_llama_weights).
void check_llama_checkpoint(const LlamaConfig& cfg, const CheckpointReader& ckpt);

// Random weights for tests and the quickstart: N(0, 0.02) matrices, norms 1.
LlamaWeights random_llama_weights(const LlamaConfig& cfg, uint64_t seed);
// Writes config.json + model.safetensors (as `dtype`) into an existing directory `dir`.
void save_llama_model(const LlamaConfig& cfg, const LlamaWeights& w, const std::string& dir, DType dtype);

}  // namespace ftune

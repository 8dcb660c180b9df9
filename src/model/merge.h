// A LoRA adapter folded into its base: W' = W + scaling * B A for every adapted projection, as
// peft's merge_and_unload computes it, in fp32 from the base in its original precision (never from
// 4-bit weights, which would lose what the adapter learned: peft issue #1043).
#pragma once
#include <string>

#include "core/tensor.h"
#include "model/lora.h"
#include "model/weights.h"

namespace ftune {

// w [out, in] += scaling * b [out, r] @ a [r, in].
void merge_lora_into(Tensor& w, const LoraPair& pair, float scaling);

// Every adapted projection of `w` (the base, fp32) merged with its pair: base + adapter in memory.
void merge_adapter(LlamaWeights& w, const LoraParams& lora);

// Writes base + adapter as a Hugging Face model directory in `dir` (which must exist), in the
// base's dtype, reading the base tensor by tensor. A base stored in 4 bits is refused.
void save_merged_model(const std::string& dir, const std::string& base_dir, const LoraParams& lora);

}  // namespace ftune

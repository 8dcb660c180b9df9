// PEFT LoRA adapter directories: adapter_config.json + adapter_model.safetensors, written the
// way peft's save_pretrained writes them and read back with full validation.
#pragma once
#include <string>

#include "model/llama_config.h"
#include "model/lora.h"

namespace ftune {

// Reads adapter_config.json alone (r, alpha, dropout, targets, rsLoRA); refuses what ftune
// cannot honour (DoRA, rank/alpha patterns, layers_to_transform, bias, non-LoRA peft types)
// with a one-line error naming the file and key.
LoraSpec load_peft_config(const std::string& dir);
// Reads the adapter and checks every tensor against `cfg`: missing, unexpected, misshapen
// or non-float tensors are errors naming the file and tensor.
LoraParams load_peft_adapter(const std::string& dir, const LlamaConfig& cfg);
// Writes both files into the existing directory `dir` (each through a temporary name).
void save_peft_adapter(const std::string& dir, const LoraParams& lora, const std::string& base_model);
// The adapter_config.json text for `spec`.
std::string peft_config_json(const LoraSpec& spec, const std::string& base_model);

}  // namespace ftune

// Named model shapes (published Llama configurations and a tiny one for quick runs).
#pragma once
#include <string>
#include <vector>

#include "model/llama_config.h"

namespace ftune {

// Throws naming the preset and the known names when `name` is unknown.
LlamaConfig preset_config(const std::string& name);
std::vector<std::string> preset_names();

}  // namespace ftune

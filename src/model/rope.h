// Rotary position embedding frequencies (default, linear and llama3 scaling), computed in
// fp32 as transformers does, and the per-token cos/sin tables.
#pragma once
#include <cstdint>
#include <vector>

#include "model/llama_config.h"

namespace ftune {

// inv_freq[i] for i < head_dim/2, after the config's rope scaling.
std::vector<float> rope_inv_freq(const LlamaConfig& cfg);

// cos/sin [n, head_dim/2] for token positions pos[n] (the table is symmetric in the two halves).
void rope_tables(const std::vector<float>& inv_freq, const int32_t* pos, int64_t n, std::vector<float>& cos,
                 std::vector<float>& sin);

}  // namespace ftune

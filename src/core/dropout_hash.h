// The dropout mask as a pure function of (key, element index), shared by the CPU and GPU code so
// that both backends (and a checkpointed recompute) drop exactly the same elements.
#pragma once
#include <cstdint>

#ifdef __CUDACC__
#define FT_HOST_DEVICE __host__ __device__
#else
#define FT_HOST_DEVICE
#endif

namespace ftune {

FT_HOST_DEVICE inline bool dropout_keep(uint64_t key, uint64_t i, float p) {
  uint64_t z = key + (i + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<float>(z >> 40) * (1.0f / 16777216.0f) >= p;
}

// The key of one projection's mask within a step: independent masks per layer and projection,
// as peft's separate Dropout modules are.
FT_HOST_DEVICE inline uint64_t dropout_key_for(uint64_t step_key, int64_t layer, int proj) {
  return step_key * 0x100000001B3ull + static_cast<uint64_t>(layer * 7 + proj + 1);
}

}  // namespace ftune

// Counter-based random numbers (SplitMix64): one seed drives every random choice, and a
// stream can be derived per purpose (init, dropout, shuffle) so that adding a consumer does
// not shift the numbers another consumer sees.
#pragma once
#include <cmath>
#include <cstdint>

namespace ftune {

class Rng {
 public:
  explicit Rng(uint64_t seed, uint64_t stream = 0) : state_(mix(seed ^ mix(stream + 0x9E3779B97F4A7C15ull))) {}

  uint64_t next_u64() { return mix(state_ += 0x9E3779B97F4A7C15ull); }
  // Uniform in [0, 1) with 24 random bits.
  float uniform() { return static_cast<float>(next_u64() >> 40) * (1.0f / 16777216.0f); }
  float uniform(float lo, float hi) { return lo + (hi - lo) * uniform(); }
  // Standard normal by Box-Muller (one value per call; simple over fast).
  float normal() {
    double u1 = (static_cast<double>(next_u64() >> 11) + 1.0) * (1.0 / 9007199254740993.0);
    double u2 = static_cast<double>(next_u64() >> 11) * (1.0 / 9007199254740992.0);
    return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
  }
  uint64_t below(uint64_t n) { return next_u64() % n; }

 private:
  static uint64_t mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  uint64_t state_;
};

}  // namespace ftune

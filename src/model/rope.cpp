// RoPE frequencies, following transformers' modeling_rope_utils in fp32.
#include "model/rope.h"

#include <cmath>

namespace ftune {

std::vector<float> rope_inv_freq(const LlamaConfig& cfg) {
  const int64_t d = cfg.head_dim;
  std::vector<float> inv(d / 2);
  const float base = static_cast<float>(cfg.rope_theta);
  for (int64_t i = 0; i < d / 2; ++i) {
    const float e = static_cast<float>(2 * i) / static_cast<float>(d);
    inv[i] = 1.0f / std::pow(base, e);
  }
  const RopeScaling& rs = cfg.rope_scaling;
  if (rs.type == "linear") {
    for (float& f : inv) f /= static_cast<float>(rs.factor);
  } else if (rs.type == "llama3") {
    const float factor = static_cast<float>(rs.factor);
    const float lo = static_cast<float>(rs.low_freq_factor), hi = static_cast<float>(rs.high_freq_factor);
    const float old_len = static_cast<float>(rs.original_max_position_embeddings);
    const float lo_wavelen = old_len / lo, hi_wavelen = old_len / hi;
    const float two_pi = static_cast<float>(2.0 * M_PI);
    for (float& f : inv) {
      const float wavelen = two_pi / f;
      if (wavelen > lo_wavelen) {
        f = f / factor;
      } else if (!(wavelen < hi_wavelen)) {
        const float s = (old_len / wavelen - lo) / (hi - lo);
        f = (1.0f - s) * (f / factor) + s * f;
      }
    }
  }
  return inv;
}

void rope_tables(const std::vector<float>& inv_freq, const int32_t* pos, int64_t n, std::vector<float>& cos,
                 std::vector<float>& sin) {
  const int64_t half = static_cast<int64_t>(inv_freq.size());
  cos.resize(n * half);
  sin.resize(n * half);
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t i = 0; i < half; ++i) {
      const float f = static_cast<float>(pos[t]) * inv_freq[i];
      cos[t * half + i] = std::cos(f);
      sin[t * half + i] = std::sin(f);
    }
  }
}

}  // namespace ftune

// The dynamic map as bitsandbytes builds it: for i = 0..6, the midpoints of
// torch.linspace(0.1, 1, k + 1) (k = 2^i signed, 2^(i+1) unsigned) scaled by 10^(i-6), the
// negatives too when signed, then 0 and 1, sorted. torch.linspace in float32 fills the first half
// as start + step * i and the second half as end - step * (steps - 1 - i), each with one rounding
// (its CPU kernel is compiled with fused multiply-add), hence std::fma here.
#include "quant/dynamic_map.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace ftune {

namespace {

std::vector<float> linspace_f32(float start, float end, int64_t steps) {
  std::vector<float> v(steps);
  const float step = (end - start) / static_cast<float>(steps - 1);
  const int64_t half = steps / 2;
  for (int64_t i = 0; i < steps; ++i)
    v[i] = i < half ? std::fma(step, static_cast<float>(i), start)
                    : std::fma(-step, static_cast<float>(steps - 1 - i), end);
  return v;
}

QuantMap build(bool is_signed) {
  std::vector<float> data;
  for (int i = 0; i < 7; ++i) {
    const int64_t items = is_signed ? (int64_t{1} << i) + 1 : (int64_t{1} << (i + 1)) + 1;
    const auto b = linspace_f32(0.1f, 1.0f, items);
    const float scale = static_cast<float>(std::pow(10.0, -6 + i));
    for (int64_t j = 0; j + 1 < items; ++j) {
      const float mean = (b[j] + b[j + 1]) / 2.0f;
      data.push_back(scale * mean);
      if (is_signed) data.push_back(-scale * mean);
    }
  }
  data.push_back(0.0f);
  data.push_back(1.0f);
  while (data.size() < 256) data.push_back(0.0f);
  std::sort(data.begin(), data.end());
  QuantMap m{};
  std::copy_n(data.begin(), 256, m.begin());
  return m;
}

}  // namespace

const QuantMap& dynamic_map(bool is_signed) {
  static const QuantMap kSigned = build(true), kUnsigned = build(false);
  return is_signed ? kSigned : kUnsigned;
}

uint8_t quantize_to_map(const QuantMap& map, float x) {
  // First entry >= x; then the nearer of it and its predecessor (ties go low).
  const auto it = std::lower_bound(map.begin(), map.end(), x);
  if (it == map.begin()) return 0;
  if (it == map.end()) return 255;
  const int64_t hi = it - map.begin(), lo = hi - 1;
  const float mid = (map[lo] + map[hi]) / 2.0f;
  return static_cast<uint8_t>(x > mid ? hi : lo);
}

}  // namespace ftune

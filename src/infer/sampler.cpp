// Greedy and filtered sampling.
#include "infer/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace ftune {

int32_t sample_token(std::span<const float> logits, const SamplingOptions& o, Rng& rng) {
  const int64_t V = static_cast<int64_t>(logits.size());
  if (o.temperature <= 0.0) return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  std::vector<int32_t> ids(static_cast<size_t>(V));
  std::iota(ids.begin(), ids.end(), 0);
  std::stable_sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  int64_t keep = V;
  if (o.top_k > 0 && o.top_k < V) {
    keep = o.top_k;
    while (keep < V && logits[ids[keep]] == logits[ids[keep - 1]]) ++keep;  // ties at the k-th stay
  }
  const double inv_t = 1.0 / o.temperature, top = logits[ids[0]];
  std::vector<double> p(static_cast<size_t>(keep));
  double sum = 0;
  for (int64_t i = 0; i < keep; ++i) sum += (p[i] = std::exp((logits[ids[i]] - top) * inv_t));
  if (o.top_p < 1.0) {
    double cum = 0;
    int64_t n = 0;
    while (n < keep && cum < o.top_p * sum) cum += p[n++];
    keep = std::max<int64_t>(n, 1);
    sum = 0;
    for (int64_t i = 0; i < keep; ++i) sum += p[i];
  }
  double u = static_cast<double>(rng.next_u64() >> 11) * (1.0 / 9007199254740992.0) * sum;
  for (int64_t i = 0; i < keep; ++i) {
    if (u < p[i]) return ids[i];
    u -= p[i];
  }
  return ids[keep - 1];
}

}  // namespace ftune

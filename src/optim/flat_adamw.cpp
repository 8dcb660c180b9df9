// AdamW over flat fp32 ranges.
#include "optim/flat_adamw.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"

namespace ftune {

FlatAdamW::FlatAdamW(int64_t n, const AdamWSettings& s, std::vector<std::pair<int64_t, int64_t>> decay_ranges)
    : s_(s), decay_(std::move(decay_ranges)), m_(static_cast<size_t>(n), 0.0f), v_(static_cast<size_t>(n), 0.0f) {
  int64_t prev = 0;
  for (const auto& [b, e] : decay_) {
    FT_ASSERT(b >= prev && b <= e && e <= n);
    prev = e;
  }
}

void FlatAdamW::update(float* p, const float* g, int64_t begin, int64_t end, float decay, float coef,
                       float step_size, float bc2_sqrt) {
  const float b1 = static_cast<float>(s_.beta1), b2 = static_cast<float>(s_.beta2);
  const float eps = static_cast<float>(s_.eps);
  float* m = m_.data();
  float* v = v_.data();
#pragma omp parallel for schedule(static)
  for (int64_t j = begin; j < end; ++j) {
    const float gj = g[j] * coef;
    p[j] *= decay;
    m[j] = b1 * m[j] + (1.0f - b1) * gj;
    v[j] = b2 * v[j] + (1.0f - b2) * gj * gj;
    p[j] -= step_size * m[j] / (std::sqrt(v[j]) / bc2_sqrt + eps);
  }
}

void FlatAdamW::step(float* p, const float* g, double lr, float grad_coef) {
  ++t_;
  const double bc1 = 1.0 - std::pow(s_.beta1, static_cast<double>(t_));
  const double bc2 = 1.0 - std::pow(s_.beta2, static_cast<double>(t_));
  const float step_size = static_cast<float>(lr / bc1);
  const float bc2_sqrt = static_cast<float>(std::sqrt(bc2));
  const float decay = static_cast<float>(1.0 - lr * s_.weight_decay);
  const int64_t n = static_cast<int64_t>(m_.size());
  int64_t at = 0;  // alternate the undecayed gaps and the decayed ranges
  for (const auto& [b, e] : decay_) {
    update(p, g, at, b, 1.0f, grad_coef, step_size, bc2_sqrt);
    update(p, g, b, e, decay, grad_coef, step_size, bc2_sqrt);
    at = e;
  }
  update(p, g, at, n, 1.0f, grad_coef, step_size, bc2_sqrt);
}

void FlatAdamW::restore(std::vector<float> m, std::vector<float> v, int64_t steps) {
  FT_ASSERT(m.size() == m_.size() && v.size() == v_.size() && steps >= 0);
  m_ = std::move(m), v_ = std::move(v), t_ = steps;
}

double flat_grad_norm(const float* g, int64_t n) {
  // Fixed chunks summed in order: the same result whatever the thread count or run.
  constexpr int64_t kChunk = 1 << 16;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> part(static_cast<size_t>(chunks), 0.0);
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    double ss = 0.0;
    for (int64_t i = c * kChunk; i < std::min(n, (c + 1) * kChunk); ++i) ss += static_cast<double>(g[i]) * g[i];
    part[static_cast<size_t>(c)] = ss;
  }
  double ss = 0.0;
  for (double x : part) ss += x;
  return std::sqrt(ss);
}

}  // namespace ftune

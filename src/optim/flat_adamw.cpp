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

AdamWConstants adamw_constants(const AdamWSettings& s, int64_t t, double lr, float grad_coef, bool decayed) {
  const double bc1 = 1.0 - std::pow(s.beta1, static_cast<double>(t));
  const double bc2 = 1.0 - std::pow(s.beta2, static_cast<double>(t));
  return {static_cast<float>(s.beta1),
          static_cast<float>(s.beta2),
          static_cast<float>(s.eps),
          static_cast<float>(lr / bc1),
          static_cast<float>(std::sqrt(bc2)),
          decayed ? static_cast<float>(1.0 - lr * s.weight_decay) : 1.0f,
          grad_coef};
}

void adamw_apply(const AdamWConstants& c, float* p, const float* g, float* m, float* v, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t j = 0; j < n; ++j) {
    const float gj = g[j] * c.coef;
    p[j] *= c.decay;
    m[j] = c.b1 * m[j] + (1.0f - c.b1) * gj;
    v[j] = c.b2 * v[j] + (1.0f - c.b2) * gj * gj;
    p[j] -= c.step_size * m[j] / (std::sqrt(v[j]) / c.bc2_sqrt + c.eps);
  }
}

void FlatAdamW::step(float* p, const float* g, double lr, float grad_coef) {
  ++t_;
  const AdamWConstants plain = adamw_constants(s_, t_, lr, grad_coef, false);
  const AdamWConstants decayed = adamw_constants(s_, t_, lr, grad_coef, true);
  const int64_t n = static_cast<int64_t>(m_.size());
  auto update = [&](const AdamWConstants& c, int64_t b, int64_t e) {
    if (e > b) adamw_apply(c, p + b, g + b, m_.data() + b, v_.data() + b, e - b);
  };
  int64_t at = 0;  // alternate the undecayed gaps and the decayed ranges
  for (const auto& [b, e] : decay_) {
    update(plain, at, b);
    update(decayed, b, e);
    at = e;
  }
  update(plain, at, n);
}

void FlatAdamW::restore(std::vector<float> m, std::vector<float> v, int64_t steps) {
  FT_ASSERT(m.size() == m_.size() && v.size() == v_.size() && steps >= 0);
  m_ = std::move(m), v_ = std::move(v), t_ = steps;
}

void grad_norm_partials(const float* g, int64_t n, int64_t c0, int64_t c1, double* part) {
  const float* base = g - c0 * kGradNormChunk;  // element 0 of the whole vector
#pragma omp parallel for schedule(static)
  for (int64_t c = c0; c < c1; ++c) {
    double ss = 0.0;
    for (int64_t i = c * kGradNormChunk; i < std::min(n, (c + 1) * kGradNormChunk); ++i)
      ss += static_cast<double>(base[i]) * base[i];
    part[c] = ss;
  }
}

double flat_sum_of_squares(const float* g, int64_t n) {
  const int64_t chunks = (n + kGradNormChunk - 1) / kGradNormChunk;
  std::vector<double> part(static_cast<size_t>(chunks), 0.0);
  grad_norm_partials(g, n, 0, chunks, part.data());
  double ss = 0.0;
  for (double x : part) ss += x;
  return ss;
}

double flat_grad_norm(const float* g, int64_t n) { return std::sqrt(flat_sum_of_squares(g, n)); }

}  // namespace ftune

// 8-bit blockwise AdamW on the CPU: state quantization error, bnb's sign fix, non-finite
// gradients, decay order, the min_8bit_size fallback and a 200-step trajectory against fp32 Adam.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/rng.h"
#include "optim/adamw8bit.h"
#include "quant/dynamic_map.h"
#include "test_util.h"

namespace ftune {
namespace {

std::vector<float> normal(int64_t n, uint64_t seed, float std = 1.0f) {
  Rng r(seed);
  std::vector<float> v(n);
  for (float& x : v) x = std * r.normal();
  return v;
}

// The most nearest-rounding can move y: half the gap between the two map entries around it, or
// the distance to the end of the map outside its range (the signed map stops at -0.99296875, so
// y = -1, the block's most negative value, is off by 0.7% of absmax).
double half_spacing(const QuantMap& map, float y) {
  const auto it = std::lower_bound(map.begin(), map.end(), y);
  if (it == map.begin()) return static_cast<double>(map.front()) - y;
  if (it == map.end()) return y - static_cast<double>(map.back());
  return 0.5 * (static_cast<double>(*it) - static_cast<double>(*(it - 1)));
}

void check_round_trip(const QuantMap& map, const std::vector<float>& x) {
  const int64_t n = static_cast<int64_t>(x.size());
  std::vector<uint8_t> codes(n);
  std::vector<float> absmax(adam8bit_blocks(n)), back(n);
  quantize_blockwise(map, x.data(), n, codes.data(), absmax.data());
  dequantize_blockwise(map, codes.data(), absmax.data(), n, back.data());
  for (int64_t b = 0; b < adam8bit_blocks(n); ++b) {
    float a = 0;
    for (int64_t i = b * 256; i < std::min(n, (b + 1) * 256); ++i) a = std::max(a, std::fabs(x[i]));
    ASSERT_EQ(absmax[b], a) << "block " << b;
  }
  for (int64_t i = 0; i < n; ++i) {
    const double a = absmax[i / 256];
    // Nearest code: the error is at most half the local spacing (times absmax), plus fp32 rounding
    // of the division and the product.
    const double bound = half_spacing(map, static_cast<float>(x[i] / a)) * a + 1e-6 * std::fabs(x[i]);
    ASSERT_LE(std::fabs(static_cast<double>(back[i]) - x[i]), bound) << "element " << i << " x=" << x[i];
  }
}

TEST(Adam8bitQuant, SignedRoundTripWithinLocalSpacing) {
  const auto x = normal(10000 + 37, 1);  // a partial last block
  check_round_trip(dynamic_map(true), x);
  // What that means in relative terms: in [0.1, 1] x absmax the signed map has 64 codes 0.9/64
  // apart, so |x| >= 0.1 absmax is off by at most 0.9/128 absmax, i.e. 7.1% of |x|.
  std::vector<uint8_t> codes(x.size());
  std::vector<float> absmax(adam8bit_blocks(x.size())), back(x.size());
  quantize_blockwise(dynamic_map(true), x.data(), x.size(), codes.data(), absmax.data());
  dequantize_blockwise(dynamic_map(true), codes.data(), absmax.data(), x.size(), back.data());
  double worst = 0;
  for (size_t i = 0; i < x.size(); ++i)
    if (std::fabs(x[i]) >= 0.1 * absmax[i / 256])
      worst = std::max(worst, double(std::fabs(back[i] - x[i])) / std::fabs(x[i]));
  EXPECT_LT(worst, 0.9 / 128 / 0.1 + 1e-6);
  EXPECT_LT(testing::rel_err(back, x), 0.02);  // whole-vector relative L2 error on N(0,1)
}

TEST(Adam8bitQuant, UnsignedRoundTripWithinLocalSpacing) {
  auto x = normal(5000, 2);
  for (float& e : x) e = e * e;  // second moments are non-negative
  check_round_trip(dynamic_map(false), x);
}

TEST(Adam8bitQuant, ZeroBlockGetsZeroCodes) {
  std::vector<float> x(300, 0.0f);
  x[299] = 2.0f;  // block 1 is not zero
  std::vector<uint8_t> codes(300);
  std::vector<float> absmax(2);
  quantize_blockwise(dynamic_map(true), x.data(), 300, codes.data(), absmax.data());
  EXPECT_EQ(absmax[0], 0.0f);
  EXPECT_EQ(absmax[1], 2.0f);
  EXPECT_EQ(codes[0], 127);  // dynamic_map(true)[127] == 0
  EXPECT_EQ(dynamic_map(true)[127], 0.0f);
  EXPECT_EQ(codes[299], 255);
}

TEST(Adam8bitQuant, SignFixKeepsSmallNegativesNegative) {
  const QuantMap& map = dynamic_map(true);
  std::vector<float> x = {1.0f, -1e-9f, 1e-9f, -0.5f, 0.0f};
  ASSERT_EQ(quantize_to_map(map, -1e-9f), 127);  // plain nearest rounding gives the zero code...
  std::vector<uint8_t> codes(x.size());
  float absmax = 0;
  quantize_blockwise(map, x.data(), x.size(), codes.data(), &absmax);
  EXPECT_EQ(codes[1], 126);  // ...the sign fix moves it to the smallest negative code
  EXPECT_LT(map[codes[1]], 0.0f);
  EXPECT_EQ(codes[2], 127);  // a small positive may become 0: same sign bit, no fix
  EXPECT_EQ(codes[4], 127);
  EXPECT_LT(map[codes[3]], 0.0f);
  // The unsigned map never applies the fix.
  std::vector<float> u = {1.0f, 1e-12f, 0.0f};
  quantize_blockwise(dynamic_map(false), u.data(), u.size(), codes.data(), &absmax);
  EXPECT_EQ(codes[2], 0);
}

TEST(AdamW8bit, SignOfFirstMomentSurvivesRequantization) {
  const int64_t n = 4096;
  Adam8bitState st(n);
  ASSERT_TRUE(st.is_8bit());
  std::vector<float> p = normal(n, 3), g(n);
  Rng r(4);
  for (int64_t i = 0; i < n; ++i) g[i] = -1e-6f * (1.0f + r.uniform());  // tiny negative gradients...
  for (int64_t b = 0; b < n / 256; ++b) g[b * 256] = 1000.0f;  // ...next to one huge one per block
  AdamW8bitStep s;
  st.step(s, p.data(), g.data());
  const auto m = st.first_moment();
  for (int64_t i = 0; i < n; ++i) {
    if (i % 256 == 0) continue;
    // m = 0.1 * g ~ -1e-7 against absmax 100: 1e-9 of the block, below the smallest code.
    ASSERT_EQ(st.m_q[i], 126) << i;
    ASSERT_LT(m[i], 0.0f) << i;
  }
}

TEST(AdamW8bit, NonFiniteGradientZeroesStateAndKeepsParameter) {
  const int64_t n = 5000;  // partial last block: 5000 = 19 * 256 + 136
  Adam8bitState st(n);
  std::vector<float> p = normal(n, 5);
  AdamW8bitStep s;
  s.lr = 1e-2f, s.weight_decay = 0.1f;
  for (int t = 1; t <= 3; ++t) {
    s.t = t;
    const auto g = normal(n, 10 + t);
    st.step(s, p.data(), g.data());
  }
  auto g = normal(n, 20);
  const std::vector<int64_t> bad = {10, 300, 4999};
  g[10] = std::numeric_limits<float>::quiet_NaN();
  g[300] = std::numeric_limits<float>::infinity();
  g[4999] = -std::numeric_limits<float>::infinity();
  const auto p_before = p;
  s.t = 4;
  st.step(s, p.data(), g.data());
  const auto m = st.first_moment(), v = st.second_moment();
  for (int64_t i : bad) {
    EXPECT_EQ(p[i], p_before[i]) << i;  // neither the step nor the decay touched it
    EXPECT_EQ(m[i], 0.0f) << i;
    EXPECT_EQ(v[i], 0.0f) << i;
  }
  int moved = 0;
  for (int64_t i = 0; i < n; ++i) moved += p[i] != p_before[i];
  EXPECT_EQ(moved, n - 3);
  for (int64_t i = 0; i < n; ++i) ASSERT_TRUE(std::isfinite(p[i]));
}

TEST(AdamW8bit, FirstStepAppliesDecayAfterTheUpdate) {
  const int64_t n = 4096 + 100;
  Adam8bitState st(n);
  std::vector<float> p = normal(n, 6);
  const auto g = normal(n, 7), p0 = p;
  AdamW8bitStep s;
  s.lr = 0.1f, s.weight_decay = 0.5f, s.t = 1;
  st.step(s, p.data(), g.data());
  // From a zero state: m = (1-b1) g, v = (1-b2) g^2, c1 = 1-b1, c2 = sqrt(1-b2).
  const double b1 = s.beta1, b2 = s.beta2, c1 = 1 - b1, c2 = std::sqrt(1 - b2);
  const double decay = 1.0 - 0.1 * 0.5;
  int discriminated = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double m = (1 - b1) * g[i], v = (1 - b2) * double(g[i]) * g[i];
    const double u = -0.1 * c2 / c1 * m / (std::sqrt(v) + c2 * 1e-8);
    const double after = (p0[i] + u) * decay, before = p0[i] * decay + u;  // bnb vs torch order
    ASSERT_NEAR(p[i], after, 1e-6 * (1 + std::fabs(after))) << i;
    discriminated += std::fabs(after - before) > 1e-3;
  }
  EXPECT_GT(discriminated, n * 9 / 10);  // the two orders differ by lr*wd*|u| = 0.005 here
  // The stored moments are the exact ones up to quantization.
  const auto m = st.first_moment();
  std::vector<float> m_exact(n);
  for (int64_t i = 0; i < n; ++i) m_exact[i] = (1.0f - s.beta1) * g[i];
  EXPECT_LT(testing::rel_err(m, m_exact), 0.02);
}

TEST(AdamW8bit, GradCoefIsAGradientScale) {
  const int64_t n = 4096 * 2 + 5;
  Adam8bitState a(n), b(n);
  std::vector<float> pa = normal(n, 8), pb = pa;
  for (int t = 1; t <= 3; ++t) {
    auto g = normal(n, 30 + t), g_half = g;
    for (float& x : g_half) x *= 0.5f;
    AdamW8bitStep s;
    s.t = t;
    a.step(s, pa.data(), g_half.data());
    s.grad_coef = 0.5f;
    b.step(s, pb.data(), g.data());
  }
  EXPECT_EQ(pa, pb);
  EXPECT_EQ(a.m_q, b.m_q);
  EXPECT_EQ(a.absmax_v, b.absmax_v);
}

TEST(AdamW8bit, SmallVectorsKeepFp32States) {
  EXPECT_FALSE(Adam8bitState(4095).is_8bit());
  EXPECT_TRUE(Adam8bitState(4096).is_8bit());
  EXPECT_FALSE(Adam8bitState(100000, std::numeric_limits<int64_t>::max()).is_8bit());
  Adam8bitState st(1000);
  EXPECT_EQ(st.state_bytes(), 1000u * 8);
  EXPECT_EQ(Adam8bitState(5000).state_bytes(), 5000u * 2 + 20 * 2 * 4);
  std::vector<float> p = normal(1000, 9);
  const auto g = normal(1000, 10), p0 = p;
  AdamW8bitStep s;
  s.lr = 0.01f;
  st.step(s, p.data(), g.data());
  for (int i = 0; i < 1000; ++i) {
    // bnb's 32-bit kernel on step 1: update -lr * sign(g) (eps aside), then the decay.
    const double expect = (p0[i] - 0.01 * (g[i] > 0 ? 1 : -1)) * (1 - 0.01 * 0.01);
    ASSERT_NEAR(p[i], expect, 1e-6) << i;
  }
  EXPECT_EQ(st.first_moment()[3], (1.0f - s.beta1) * g[3]);
}

// ---- trajectory: a noisy coupled quadratic, 10k parameters, 200 steps ----

struct Quadratic {
  std::vector<float> h, target;  // [n] curvature in [0.1, 10] (log-uniform), minimizer ~ N(0,1)
  double lambda = 0.5;           // nearest-neighbour coupling
  explicit Quadratic(int64_t n) : h(n), target(normal(n, 40)) {
    Rng r(41);
    for (float& x : h) x = static_cast<float>(std::exp(r.uniform(std::log(0.1f), std::log(10.0f))));
  }
  double loss(const std::vector<float>& x) const {
    double l = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      l += 0.5 * h[i] * (double(x[i]) - target[i]) * (double(x[i]) - target[i]);
      if (i + 1 < x.size()) l += 0.5 * lambda * (double(x[i + 1]) - x[i]) * (double(x[i + 1]) - x[i]);
    }
    return l;
  }
  // The exact minimizer: (diag(h) + lambda * path Laplacian) x = h * target, by the Thomas algorithm.
  std::vector<float> minimizer() const {
    const int64_t n = h.size();
    std::vector<double> c(n), d(n), x(n);  // forward sweep: c' and d'
    for (int64_t i = 0; i < n; ++i) {
      const double diag = h[i] + lambda * ((i > 0) + (i + 1 < n)), off = -lambda;
      const double den = diag - (i > 0 ? off * c[i - 1] : 0.0);
      c[i] = off / den;
      d[i] = (double(h[i]) * target[i] - (i > 0 ? off * d[i - 1] : 0.0)) / den;
    }
    for (int64_t i = n - 1; i >= 0; --i) x[i] = d[i] - (i + 1 < n ? c[i] * x[i + 1] : 0.0);
    return std::vector<float>(x.begin(), x.end());
  }
  // The gradient plus N(0, 0.2^2) noise drawn per step (the same for every optimizer).
  std::vector<float> grad(const std::vector<float>& x, int step) const {
    auto g = normal(x.size(), 1000 + step, 0.2f);
    const int64_t n = x.size();
    for (int64_t i = 0; i < n; ++i) {
      double d = h[i] * (double(x[i]) - target[i]);
      if (i > 0) d += lambda * (double(x[i]) - x[i - 1]);
      if (i + 1 < n) d += lambda * (double(x[i]) - x[i + 1]);
      g[i] += static_cast<float>(d);
    }
    return g;
  }
};

float lr_at(int t, int steps) { return 0.05f * 0.5f * (1.0f + std::cos(3.14159265f * (t - 1) / steps)); }

TEST(AdamW8bit, TrajectoryTracksFp32Adam) {
  const int64_t n = 10000;
  const int steps = 200;
  const Quadratic q(n);
  Adam8bitState s8(n), s32(n, std::numeric_limits<int64_t>::max());
  ASSERT_TRUE(s8.is_8bit());
  ASSERT_FALSE(s32.is_8bit());
  std::vector<float> x8(n, 0.0f), x32(n, 0.0f);
  std::vector<double> x64(n, 0.0), m64(n, 0.0), v64(n, 0.0);  // the same Adam in double
  const double loss0 = q.loss(x8);
  for (int t = 1; t <= steps; ++t) {
    AdamW8bitStep s;
    s.lr = lr_at(t, steps), s.weight_decay = 0.01f, s.t = t;
    const auto g8 = q.grad(x8, t), g32 = q.grad(x32, t);
    s8.step(s, x8.data(), g8.data());
    s32.step(s, x32.data(), g32.data());
    std::vector<float> x64f(x64.begin(), x64.end());
    const auto g64 = q.grad(x64f, t);
    const double c1 = 1 - std::pow(0.9, t), c2 = std::sqrt(1 - std::pow(0.999, t));
    for (int64_t i = 0; i < n; ++i) {
      m64[i] = 0.9 * m64[i] + 0.1 * g64[i];
      v64[i] = 0.999 * v64[i] + 0.001 * double(g64[i]) * g64[i];
      x64[i] -= s.lr * (m64[i] / c1) / (std::sqrt(v64[i]) / c2 + 1e-8);
      x64[i] *= 1.0 - double(s.lr) * 0.01;
    }
  }
  std::vector<float> x64f(x64.begin(), x64.end());
  const double l8 = q.loss(x8), l32 = q.loss(x32), l64 = q.loss(x64f), lmin = q.loss(q.minimizer());
  std::printf("loss: start %.1f  min %.3f  fp32 %.3f  8-bit %.3f (%+.2f%%; excess over min %+.1f%%)  double %.3f; "
              "|x8-x32|/|x32| = %.4f\n", loss0, lmin, l32, l8, 100 * (l8 / l32 - 1),
              100 * ((l8 - lmin) / (l32 - lmin) - 1), l64, testing::rel_err(x8, x32));
  EXPECT_LT(l32 - lmin, 0.05 * (loss0 - lmin));   // the problem is actually optimized
  EXPECT_LT(std::fabs(l32 / l64 - 1), 1e-3);      // fp32 mode is the same algorithm as the double one
  EXPECT_LT(std::fabs(l8 / l32 - 1), 0.03);       // 8-bit: final loss within 3% of fp32 (measured 0.02%)
  EXPECT_LT((l8 - lmin) / (l32 - lmin), 1.3);     // its excess over the minimum within 30% (measured 14%)
  EXPECT_LT(testing::rel_err(x8, x32), 0.02);     // and the parameters within 2% in L2 (measured 0.9%)
}

}  // namespace
}  // namespace ftune

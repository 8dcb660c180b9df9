// Reference attention: materializes the [T, T] probabilities per head (the CPU backend serves
// tiny models and checks; the GPU kernels never do this).
#include "ops/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace ftune::cpu {

void attention_forward(const AttnShape& s, const float* q, const float* k, const float* v, const int32_t* doc,
                       float* probs, float* out) {
  const int64_t T = s.seq, H = s.heads, KV = s.kv_heads, d = s.head_dim, group = H / KV;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      const int64_t kh = h / group;
      std::vector<float> row(T);
      for (int64_t i = 0; i < T; ++i) {
        const int64_t ti = b * T + i;
        const float* qi = q + (ti * H + h) * d;
        float* p = probs + ((b * H + h) * T + i) * T;
        float mx = -std::numeric_limits<float>::infinity();
        for (int64_t j = 0; j <= i; ++j) {
          const int64_t tj = b * T + j;
          if (doc && doc[tj] != doc[ti]) {
            row[j] = -std::numeric_limits<float>::infinity();
            continue;
          }
          const float* kj = k + (tj * KV + kh) * d;
          float dot = 0.0f;
          for (int64_t c = 0; c < d; ++c) dot += qi[c] * kj[c];
          row[j] = dot * s.scale;
          mx = std::max(mx, row[j]);
        }
        double sum = 0.0;
        for (int64_t j = 0; j <= i; ++j) {
          const float e = std::isinf(row[j]) ? 0.0f : std::exp(row[j] - mx);
          p[j] = e;
          sum += e;
        }
        const float inv = static_cast<float>(1.0 / sum);
        for (int64_t j = 0; j <= i; ++j) p[j] *= inv;
        std::fill(p + i + 1, p + T, 0.0f);
        float* o = out + (ti * H + h) * d;
        std::fill(o, o + d, 0.0f);
        for (int64_t j = 0; j <= i; ++j) {
          if (p[j] == 0.0f) continue;
          const float* vj = v + ((b * T + j) * KV + kh) * d;
          for (int64_t c = 0; c < d; ++c) o[c] += p[j] * vj[c];
        }
      }
    }
  }
}

void attention_backward(const AttnShape& s, const float* q, const float* k, const float* v, const float* probs,
                        const float* dout, float* dq, float* dk, float* dv) {
  const int64_t T = s.seq, H = s.heads, KV = s.kv_heads, d = s.head_dim, group = H / KV;
  std::memset(dk, 0, sizeof(float) * s.batch * T * KV * d);
  std::memset(dv, 0, sizeof(float) * s.batch * T * KV * d);
  // One task per (batch, kv head) owns its dk/dv rows, so no two threads write the same memory.
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t kh = 0; kh < KV; ++kh) {
      std::vector<float> ds(T);
      for (int64_t h = kh * group; h < (kh + 1) * group; ++h) {
        for (int64_t i = 0; i < T; ++i) {
          const int64_t ti = b * T + i;
          const float* p = probs + ((b * H + h) * T + i) * T;
          const float* doi = dout + (ti * H + h) * d;
          const float* qi = q + (ti * H + h) * d;
          // dP_ij = dO_i . v_j ;  dS_ij = P_ij (dP_ij - sum_j P_ij dP_ij)
          double rowdot = 0.0;
          for (int64_t j = 0; j <= i; ++j) {
            if (p[j] == 0.0f) {
              ds[j] = 0.0f;
              continue;
            }
            const float* vj = v + ((b * T + j) * KV + kh) * d;
            float dp = 0.0f;
            for (int64_t c = 0; c < d; ++c) dp += doi[c] * vj[c];
            ds[j] = dp;
            rowdot += static_cast<double>(p[j]) * dp;
          }
          float* dqi = dq + (ti * H + h) * d;
          std::fill(dqi, dqi + d, 0.0f);
          for (int64_t j = 0; j <= i; ++j) {
            if (p[j] == 0.0f) continue;
            const int64_t tj = b * T + j;
            const float g = p[j] * (ds[j] - static_cast<float>(rowdot)) * s.scale;
            const float* kj = k + (tj * KV + kh) * d;
            float* dkj = dk + (tj * KV + kh) * d;
            float* dvj = dv + (tj * KV + kh) * d;
            for (int64_t c = 0; c < d; ++c) {
              dqi[c] += g * kj[c];
              dkj[c] += g * qi[c];
              dvj[c] += p[j] * doi[c];
            }
          }
        }
      }
    }
  }
}

}  // namespace ftune::cpu

// AdamW update and gradient clipping over LoRA parameters.
#include "optim/adamw.h"

#include <cmath>
#include <vector>

namespace ftune {

namespace {
// Flat lists of matching tensors in the fixed for_each order.
std::vector<Tensor*> tensors_of(LoraParams& p) {
  std::vector<Tensor*> out;
  p.for_each([&](const std::string&, Tensor& t) { out.push_back(&t); });
  return out;
}
}  // namespace

void AdamW::step(LoraParams& params, const LoraParams& grads, double lr) {
  ++t_;
  const double bc1 = 1.0 - std::pow(s_.beta1, static_cast<double>(t_));
  const double bc2 = 1.0 - std::pow(s_.beta2, static_cast<double>(t_));
  const float step_size = static_cast<float>(lr / bc1);
  const float bc2_sqrt = static_cast<float>(std::sqrt(bc2));
  const float b1 = static_cast<float>(s_.beta1), b2 = static_cast<float>(s_.beta2);
  const float eps = static_cast<float>(s_.eps);
  const float decay = static_cast<float>(1.0 - lr * s_.weight_decay);
  auto ps = tensors_of(params);
  auto gs = tensors_of(const_cast<LoraParams&>(grads));
  auto ms = tensors_of(m_);
  auto vs = tensors_of(v_);
  for (size_t i = 0; i < ps.size(); ++i) {
    float* p = ps[i]->ptr();
    const float* g = gs[i]->ptr();
    float* m = ms[i]->ptr();
    float* v = vs[i]->ptr();
    const int64_t n = ps[i]->numel();
#pragma omp parallel for schedule(static)
    for (int64_t j = 0; j < n; ++j) {
      p[j] *= decay;
      m[j] = b1 * m[j] + (1.0f - b1) * g[j];
      v[j] = b2 * v[j] + (1.0f - b2) * g[j] * g[j];
      p[j] -= step_size * m[j] / (std::sqrt(v[j]) / bc2_sqrt + eps);
    }
  }
}

double grad_norm(const LoraParams& grads) {
  double ss = 0.0;
  grads.for_each([&](const std::string&, const Tensor& t) {
    for (float x : t.data) ss += static_cast<double>(x) * x;
  });
  return std::sqrt(ss);
}

double clip_coefficient(double norm, double max_norm) {
  const double coef = max_norm / (norm + 1e-6);
  return max_norm > 0 && coef < 1.0 ? coef : 1.0;
}

double clip_grad_norm(LoraParams& grads, double max_norm) {
  const double norm = grad_norm(grads);
  const double coef = clip_coefficient(norm, max_norm);
  if (coef < 1.0) {
    const float c = static_cast<float>(coef);
    grads.for_each([&](const std::string&, Tensor& t) {
      for (float& x : t.data) x *= c;
    });
  }
  return norm;
}

}  // namespace ftune

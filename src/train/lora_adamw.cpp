// LoraAdamW and clipping over LoRA tensors.
#include "train/lora_adamw.h"

#include <cmath>
#include <vector>

#include "optim/flat_adamw.h"

namespace ftune {

namespace {
// Flat lists of matching tensors in the fixed for_each order.
std::vector<Tensor*> tensors_of(LoraParams& p) {
  std::vector<Tensor*> out;
  p.for_each([&](const std::string&, Tensor& t) { out.push_back(&t); });
  return out;
}
}  // namespace

void LoraAdamW::step(LoraParams& params, const LoraParams& grads, double lr) {
  ++t_;
  const AdamWConstants c = adamw_constants(s_, t_, lr, 1.0f, true);
  auto ps = tensors_of(params);
  auto gs = tensors_of(const_cast<LoraParams&>(grads));
  auto ms = tensors_of(m_);
  auto vs = tensors_of(v_);
  for (size_t i = 0; i < ps.size(); ++i) adamw_apply(c, ps[i]->ptr(), gs[i]->ptr(), ms[i]->ptr(), vs[i]->ptr(), ps[i]->numel());
}

double grad_norm(const LoraParams& grads) {
  double ss = 0.0;
  grads.for_each([&](const std::string&, const Tensor& t) {
    for (float x : t.data) ss += static_cast<double>(x) * x;
  });
  return std::sqrt(ss);
}

double clip_grad_norm(LoraParams& grads, double max_norm, dist::Communicator* sum_over) {
  const double norm = dist::norm_over_ranks(grad_norm(grads), sum_over);
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

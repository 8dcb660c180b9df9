// The training step.
#include "train/engine.h"

#include <fmt/format.h>

#include <cmath>

#include "core/error.h"
#include "core/rng.h"

namespace ftune {

namespace {

// The dropout masks of micro-batch `micro` of step `step`: a pure function of the seed, so a
// resumed run or another backend draws the same masks.
uint64_t dropout_key(uint64_t seed, int64_t step, int64_t micro) {
  Rng r(seed, 0xD20F0000ull + static_cast<uint64_t>(step) * 4096 + static_cast<uint64_t>(micro));
  return r.next_u64() | 1;  // never 0, which means "no dropout"
}

}  // namespace

std::string shown_number(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "infinity" : "-infinity";
  return fmt::format("{:.6g}", v);
}

StepOutcome Engine::step(MicroBatcher& batches, int64_t step, double lr, const AbortCheck& abort) {
  StepOutcome out;
  micro_.resize(static_cast<size_t>(plan_.grad_accum));
  for (Batch& b : micro_) {
    b = batches.next();
    out.targets += b.count_targets();
    out.tokens += b.tokens;
  }
  const float scale = out.targets > 0 ? 1.0f / static_cast<float>(out.targets) : 0.0f;
  double loss_sum = 0.0;
  const int64_t total = static_cast<int64_t>(micro_.size());
  for (int64_t m = 0; m < total; ++m) {
    if (m > 0 && abort && abort(m, total)) {
      out.aborted = true;
      return out;
    }
    loss_sum += backend_.forward_backward(micro_[m], scale, dropout_key(seed_, step, m)).loss_sum;
  }
  out.loss = out.targets > 0 ? loss_sum / static_cast<double>(out.targets) : 0.0;
  const StepResult r = backend_.step(lr, plan_.max_grad_norm);
  out.grad_norm = r.grad_norm;
  out.skipped = r.skipped;
  if (!r.skipped && (!std::isfinite(out.loss) || !std::isfinite(out.grad_norm)))
    fail("step {}: training diverged: loss {}, gradient norm {} at lr {:.3g}; lower train.lr or train.max_grad_norm",
         step + 1, shown_number(out.loss), shown_number(out.grad_norm), lr);
  return out;
}

double Engine::validation_loss(const std::vector<Example>& val, int32_t pad, int64_t pad_multiple) {
  const size_t micro = static_cast<size_t>(plan_.micro_batch);
  double sum = 0;
  int64_t count = 0;
  for (size_t i = 0; i < val.size(); i += micro) {
    std::vector<const std::vector<int32_t>*> ids, labels;
    for (size_t j = i; j < std::min(val.size(), i + micro); ++j) ids.push_back(&val[j].ids), labels.push_back(&val[j].labels);
    const auto r = backend_.loss(make_batch(ids, labels, pad, pad_multiple));
    sum += r.loss_sum;
    count += r.count;
  }
  return count ? sum / static_cast<double>(count) : 0.0;
}

}  // namespace ftune

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

Engine::Engine(TrainBackend& backend, const RunPlan& plan, uint64_t seed, dist::Communicator* comm)
    : backend_(backend), plan_(plan), seed_(seed) {
  if (!comm) single_ = dist::make_single_communicator();
  comm_ = comm ? comm : single_.get();
}

bool Engine::any_rank(bool mine) {
  if (comm_->world() == 1) return mine;
  double v = mine ? 1.0 : 0.0;
  comm_->all_reduce_sum(&v, 1);
  return v > 0;
}

StepOutcome Engine::step(MicroBatcher& batches, int64_t step, double lr, const AbortCheck& abort) {
  StepOutcome out;
  const int64_t W = comm_->world(), me = comm_->rank();
  // Every rank draws the step's W x grad_accum micro-batches and keeps its own.
  micro_.resize(static_cast<size_t>(plan_.grad_accum));
  std::vector<int64_t> index(micro_.size());
  for (int64_t i = 0; i < plan_.grad_accum * W; ++i) {
    Batch b = batches.next();
    out.targets += b.count_targets();
    out.tokens += b.tokens;
    if (i % W == me) index[static_cast<size_t>(i / W)] = i, micro_[static_cast<size_t>(i / W)] = std::move(b);
  }
  const float scale = out.targets > 0 ? 1.0f / static_cast<float>(out.targets) : 0.0f;
  double loss_sum = 0.0;
  const int64_t total = static_cast<int64_t>(micro_.size());
  for (int64_t m = 0; m < total; ++m) {
    if (m > 0 && abort && any_rank(abort(m, total))) {
      out.aborted = true;
      return out;
    }
    loss_sum += backend_.forward_backward(micro_[m], scale, dropout_key(seed_, step, index[m])).loss_sum;
  }
  if (W > 1) {
    backend_.all_reduce_gradients(*comm_);
    comm_->all_reduce_sum(&loss_sum, 1);
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
  const size_t W = static_cast<size_t>(comm_->world()), r = static_cast<size_t>(comm_->rank());
  for (size_t i = micro * r; i < val.size(); i += micro * W) {
    std::vector<const std::vector<int32_t>*> ids, labels;
    for (size_t j = i; j < std::min(val.size(), i + micro); ++j) ids.push_back(&val[j].ids), labels.push_back(&val[j].labels);
    const auto res = backend_.loss(make_batch(ids, labels, pad, pad_multiple));
    sum += res.loss_sum;
    count += res.count;
  }
  // A collective forward (ZeRO-3) needs every rank in every forward: a rank whose rows ran out while
  // rank 0 (which has the most) goes on takes part in the collectives alone, without a batch to
  // compute (a dummy row would cost a whole forward for a result thrown away).
  if (W > 1 && backend_.collective_forward()) {
    const size_t most = (val.size() + micro * W - 1) / (micro * W);
    const size_t mine = val.size() > micro * r ? (val.size() - micro * r + micro * W - 1) / (micro * W) : 0;
    for (size_t k = mine; k < most; ++k) backend_.forward_without_rows();
  }
  if (W > 1) {
    double v[2] = {sum, static_cast<double>(count)};
    comm_->all_reduce_sum(v, 2);
    sum = v[0], count = static_cast<int64_t>(v[1]);
  }
  return count ? sum / static_cast<double>(count) : 0.0;
}

}  // namespace ftune

// The training step.
#include "train/engine.h"

#include <fmt/format.h>

#include <algorithm>
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

Engine::Engine(TrainBackend& backend, const RunPlan& plan, uint64_t seed, dist::Communicator* comm,
               const PipelineComms* pipeline)
    : backend_(backend), plan_(plan), seed_(seed) {
  if (!comm) single_ = dist::make_single_communicator();
  comm_ = comm ? comm : single_.get();
  if (pipeline && pipeline->place.stages > 1) {
    FT_ASSERT(pipeline->pipe != nullptr);
    piped_ = true;
    pipe_ = *pipeline;
  }
}

bool Engine::any_rank(bool mine) {
  if (comm_->world() == 1) return mine;
  double v = mine ? 1.0 : 0.0;
  comm_->all_reduce_sum(&v, 1);
  return v > 0;
}

StepOutcome Engine::step(MicroBatcher& batches, int64_t step, double lr, const AbortCheck& abort) {
  StepOutcome out;
  // Data parallelism is over the ranks, or over the pipelines (every stage of one draws the same).
  const int64_t W = piped_ ? pipe_.place.replicas : comm_->world(), me = piped_ ? pipe_.place.replica : comm_->rank();
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
  if (piped_) {  // a pipelined step runs to its end (its micro-batches are interleaved over the stages)
    loss_sum = run_pipeline(step, index, scale);
    if (pipe_.data && pipe_.data->world() > 1) backend_.all_reduce_gradients(*pipe_.data);
    comm_->all_reduce_sum(&loss_sum, 1);  // the last stages' losses, to every rank
  } else {
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

double Engine::run_pipeline(int64_t step, const std::vector<int64_t>& index, float scale) {
  const int P = pipe_.place.stages, s = pipe_.place.stage;
  const bool first = s == 0, last = s == P - 1;
  const int64_t M = static_cast<int64_t>(micro_.size()), slots = dist::pipeline_slots(P, s, M);
  const std::vector<dist::PipeOp> ops = dist::one_f_one_b(P, s, M);
  dist::Communicator& c = *pipe_.pipe;
  // What an op's transfers carry: the hidden state (forward) or its gradient (backward).
  auto bytes = [&](const dist::PipeOp& o) {
    const Batch& b = micro_[static_cast<size_t>(o.micro)];
    return o.forward ? backend_.stage_bytes(b) : backend_.stage_grad_bytes(b);
  };
  size_t most = 0;
  for (const dist::PipeOp& o : ops) most = std::max(most, bytes(o));
  for (auto* b : {&act_in_, &act_out_, &grad_in_, &grad_out_}) b->resize(most);
  // A forward's input comes from the stage before and its output goes to the one after; a
  // backward's gradients the other way (-1: none, at the ends).
  auto from = [&](const dist::PipeOp& o) { return o.forward ? (first ? -1 : s - 1) : (last ? -1 : s + 1); };
  auto to = [&](const dist::PipeOp& o) { return o.forward ? (last ? -1 : s + 1) : (first ? -1 : s - 1); };
  auto in_of = [&](const dist::PipeOp& o) { return o.forward ? act_in_.data() : grad_in_.data(); };
  auto out_of = [&](const dist::PipeOp& o) { return o.forward ? act_out_.data() : grad_out_.data(); };
  double loss = 0.0;
  bool have_input = false;  // the op's input came with the previous op's send
  for (size_t k = 0; k < ops.size(); ++k) {
    const dist::PipeOp& o = ops[k];
    const Batch& b = micro_[static_cast<size_t>(o.micro)];
    if (!have_input && from(o) >= 0) c.recv(in_of(o), bytes(o), from(o));
    have_input = false;
    const int64_t slot = o.micro % slots;  // the micro-batches in flight are consecutive: distinct slots
    if (o.forward)
      loss += backend_
                  .stage_forward(slot, b, first ? nullptr : act_in_.data(), last ? nullptr : act_out_.data(), true, scale,
                                 dropout_key(seed_, step, index[static_cast<size_t>(o.micro)]))
                  .loss_sum;
    else
      backend_.stage_backward(slot, b, last ? nullptr : grad_in_.data(), first ? nullptr : grad_out_.data());
    const int peer = to(o);
    if (peer < 0) continue;
    // Sent together with the next op's receive when that comes from the same neighbour (one
    // forward, one backward): the two stages then exchange instead of both waiting to send.
    if (k + 1 < ops.size() && from(ops[k + 1]) == peer) {
      c.send_recv(out_of(o), bytes(o), in_of(ops[k + 1]), bytes(ops[k + 1]), peer);
      have_input = true;
    } else {
      c.send(out_of(o), bytes(o), peer);
    }
  }
  return loss;
}

cpu::CrossEntropyResult Engine::pipeline_loss(const Batch& b) {
  const int P = pipe_.place.stages, s = pipe_.place.stage;
  const bool first = s == 0, last = s == P - 1;
  const size_t n = backend_.stage_bytes(b);
  act_in_.resize(std::max(act_in_.size(), n));
  act_out_.resize(std::max(act_out_.size(), n));
  if (!first) pipe_.pipe->recv(act_in_.data(), n, s - 1);
  const auto res = backend_.stage_forward(0, b, first ? nullptr : act_in_.data(), last ? nullptr : act_out_.data(),
                                          false, 0.0f, 0);
  if (!last) pipe_.pipe->send(act_out_.data(), n, s + 1);
  return res;
}

double Engine::validation_loss(const std::vector<Example>& val, int32_t pad, int64_t pad_multiple) {
  const size_t micro = static_cast<size_t>(plan_.micro_batch);
  double sum = 0;
  int64_t count = 0;
  // Split over the ranks, or over the pipelines (whose last stages compute the losses).
  const size_t W = static_cast<size_t>(piped_ ? pipe_.place.replicas : comm_->world());
  const size_t r = static_cast<size_t>(piped_ ? pipe_.place.replica : comm_->rank());
  for (size_t i = micro * r; i < val.size(); i += micro * W) {
    std::vector<const std::vector<int32_t>*> ids, labels;
    for (size_t j = i; j < std::min(val.size(), i + micro); ++j) ids.push_back(&val[j].ids), labels.push_back(&val[j].labels);
    const Batch b = make_batch(ids, labels, pad, pad_multiple);
    const auto res = piped_ ? pipeline_loss(b) : backend_.loss(b);
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
  if (comm_->world() > 1) {
    double v[2] = {sum, static_cast<double>(count)};
    comm_->all_reduce_sum(v, 2);
    sum = v[0], count = static_cast<int64_t>(v[1]);
  }
  return count ? sum / static_cast<double>(count) : 0.0;
}

}  // namespace ftune

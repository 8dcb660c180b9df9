// ZeRO-3 on the CPU, the part the model sees: this rank's pieces of every unit (fp32 masters, which
// on the CPU are also the compute copy, and the gradient accumulator, both in dist::Zero3Layout's
// local range), and the unit gate that all-gathers a unit into the model's weight tensors before it
// runs and reduce-scatters its gradient into the accumulator as soon as its backward is done.
// Between units the weight and gradient tensors of every unit are empty; the RMSNorm weights and
// their gradients stay whole in them.
#pragma once
#include <cstdint>
#include <vector>

#include "dist/communicator.h"
#include "dist/zero3.h"
#include "model/unit_gate.h"
#include "model/weights.h"
#include "params/param_table.h"

namespace ftune {

class Zero3Units final : public UnitGate {
 public:
  // Reads this rank's pieces and the norms from `src`, one tensor at a time. `weights` and `grads`
  // (the model's) get the norms, whole, and every unit tensor empty. All references must outlive this.
  Zero3Units(const LlamaConfig& cfg, const ParamTable& table, const dist::Zero3Layout& layout, dist::Communicator& comm,
             const WeightSource& src, LlamaWeights& weights, LlamaWeights& grads);

  void gather(int64_t unit) override;
  void release(int64_t unit) override;
  void begin_grads(int64_t unit) override;
  void end_grads(int64_t unit) override;
  // The collectives of one forward without computing anything (a rank with no rows to evaluate
  // while the others go on): every unit gathered and released in the forward's order.
  void forward_without_rows();

  std::vector<float>& master() { return master_; }  // [local_numel]
  const std::vector<float>& master() const { return master_; }
  std::vector<float>& grad() { return grad_; }      // [local_numel]: summed over the ranks (pieces) or not yet (norms)
  // The norm gradients the micro-batches accumulated in the model's tensors, summed over the ranks
  // into the accumulator's norm tail (collective); the tensors are zeroed.
  void reduce_norm_grads();
  // The masters' norms into the model's norm tensors (after a step or a load).
  void write_norms();

  // A vector of the local range in the parameter table's layout [trainable_numel], assembled from
  // every rank's pieces (collective: every rank calls it and gets the whole).
  std::vector<float> to_table(const std::vector<float>& local) const;
  // This rank's part of a vector in the table's layout (padding zero).
  std::vector<float> from_table(const std::vector<float>& table) const;
  // Every weight, whole (collective).
  void whole_weights(LlamaWeights& out) const;

 private:
  // A unit's whole matrices [piece * W] (the last piece's padding included) from every rank's piece of `local`.
  std::vector<float> gathered(const std::vector<float>& local, int64_t unit) const;
  const std::vector<int>& members(int64_t unit) const { return members_[static_cast<size_t>(unit)]; }
  // Every rank's count in the unit's collectives: its piece, the same on all.
  std::vector<size_t> pieces(int64_t unit) const {
    return std::vector<size_t>(static_cast<size_t>(layout_.world()), static_cast<size_t>(layout_.unit(unit).piece));
  }

  const LlamaConfig& cfg_;
  const ParamTable& table_;
  const dist::Zero3Layout& layout_;
  dist::Communicator& comm_;
  LlamaWeights& weights_;
  LlamaWeights& grads_;
  std::vector<std::vector<int>> members_;  // [units]: the table specs of each unit, in table order
  std::vector<float> master_, grad_;       // [local_numel]
};

}  // namespace ftune

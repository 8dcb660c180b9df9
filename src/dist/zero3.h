// ZeRO stage 3's layout: the parameters themselves are sharded, in the manner of PyTorch FSDP's
// flat parameters (Zhao et al., "PyTorch FSDP", 2023). The matrices of each unit (the embedding,
// each decoder layer's seven projections, the lm_head) are one contiguous range of the parameter
// table; the range is padded to a multiple of the world size and cut into W equal pieces, and rank
// r keeps piece r of every unit: its compute copy, master weights, moments and gradients. A unit is
// all-gathered before it runs and dropped after, and its gradient is reduce-scattered as soon as its
// backward is done, so a rank holds whole weights of one or two units at a time. Equal pieces are
// what NCCL's all-gather and reduce-scatter take as they are.
// The RMSNorm weights (2L + 1 vectors of H) are not worth sharding: every rank keeps them whole,
// and their gradients are all-reduced before the step.
// A rank's local range, which its optimizer steps over: every unit's piece (padding included, where
// the value and the gradient stay zero), then every norm.
#pragma once
#include <cstdint>
#include <utility>
#include <vector>

#include "dist/communicator.h"
#include "model/llama_config.h"
#include "params/param_table.h"

namespace ftune::dist {

struct Zero3Unit {
  int64_t begin = 0, numel = 0;  // the unit's matrices: table elements [begin, begin + numel)
  int64_t piece = 0;             // elements per rank: ceil(numel / W)
  int64_t local = 0;             // where this rank's piece starts in the local range
  bool alias = false;            // the tied lm_head: unit 0's matrices again (no piece of its own)
};

// A run of real (not padding) elements of the local range: local [local, local + n) holds table
// elements [table, table + n), all of one tensor.
struct Zero3Run {
  int64_t local = 0, table = 0, n = 0;
  int spec = 0;  // index in the table's specs
};

class Zero3Layout {
 public:
  Zero3Layout(const ParamTable& table, const LlamaConfig& cfg, int rank, int world);

  int rank() const { return rank_; }
  int world() const { return world_; }
  // Units: 0 the embedding, 1 + l decoder layer l, L + 1 the lm_head. With tied embeddings the
  // lm_head is the embedding: unit L + 1 is unit 0 again (the same piece, gathered twice per step).
  int64_t units() const { return static_cast<int64_t>(unit_.size()); }
  const Zero3Unit& unit(int64_t u) const { return unit_[static_cast<size_t>(u)]; }
  static int64_t layer_unit(int64_t l) { return 1 + l; }
  int64_t head_unit() const { return units() - 1; }
  // The local range: pieces (sharded_numel, padding included), then the norms (norm_numel).
  int64_t sharded_numel() const { return sharded_; }
  int64_t norm_numel() const { return norms_; }
  int64_t local_numel() const { return sharded_ + norms_; }
  // The real elements of the local range, in local order (the norms last, each one run).
  const std::vector<Zero3Run>& runs() const { return runs_; }
  // The table specs of the norms, in table order (their local order).
  const std::vector<int>& norm_specs() const { return norm_specs_; }
  // Local element of table element e (-1 when another rank holds it).
  int64_t local_of(int64_t e) const;

 private:
  int rank_, world_;
  std::vector<Zero3Unit> unit_;
  std::vector<Zero3Run> runs_;
  std::vector<int> norm_specs_;
  int64_t sharded_ = 0, norms_ = 0;
};

// Unit u's whole matrices [piece * W] (padding included) from every rank's piece of `local`
// (collective).
void zero3_gather_unit(const Zero3Layout& z, const float* local, int64_t u, Communicator& comm, std::vector<float>& out);

// A rank's local range [local_numel] in the table's layout [table.trainable_numel()]: collective
// (unit by unit, each all-gathered); `table` is written on ranks that pass it (others pass null).
void zero3_to_table(const Zero3Layout& z, const float* local, Communicator& comm, float* table);
// Whole tensors out of every rank's local range, one at a time, in the order asked for (collective:
// every rank asks for the same tensors in the same order; the unit of the tensor is all-gathered when
// it is not the one held). Host memory holds one unit, never the model: what writing a ZeRO-3 model
// needs.
class Zero3TensorGather {
 public:
  // `local` [z.local_numel()] must outlive the gatherer.
  Zero3TensorGather(const Zero3Layout& z, const float* local, Communicator& comm) : z_(z), local_(local), comm_(comm) {}
  std::vector<float> values(const ParamSpec& s);  // [s.numel()]

 private:
  const Zero3Layout& z_;
  const float* local_;
  Communicator& comm_;
  int64_t held_ = -1;        // the unit in unit_
  std::vector<float> unit_;  // [piece * W]
};

// This rank's local range out of a whole table-layout vector (padding zero).
void zero3_from_table(const Zero3Layout& z, const float* table, float* local);

}  // namespace ftune::dist

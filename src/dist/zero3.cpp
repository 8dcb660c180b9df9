// ZeRO-3's units, pieces and local range.
#include "dist/zero3.h"

#include <algorithm>

#include "core/error.h"

namespace ftune::dist {

Zero3Layout::Zero3Layout(const ParamTable& table, const LlamaConfig& cfg, int rank, int world)
    : rank_(rank), world_(world) {
  FT_ASSERT(world >= 1 && rank >= 0 && rank < world);
  const int64_t L = cfg.num_hidden_layers;
  // Each unit's matrices, as the table orders them: embed; per layer input norm, 7 projections,
  // post norm; final norm; lm_head.
  std::vector<std::vector<int>> members(static_cast<size_t>(L + 2));
  const auto& specs = table.specs();
  for (int i = 0; i < static_cast<int>(specs.size()); ++i) {
    const ParamSpec& s = specs[i];
    switch (s.role) {
      case ParamRole::Embed: members[0].push_back(i); break;
      case ParamRole::Proj: members[static_cast<size_t>(layer_unit(s.layer))].push_back(i); break;
      case ParamRole::LmHead: members[static_cast<size_t>(L + 1)].push_back(i); break;
      case ParamRole::InputNorm:
      case ParamRole::PostNorm:
      case ParamRole::FinalNorm: norm_specs_.push_back(i); break;
    }
  }
  const bool tied = cfg.tie_word_embeddings;
  FT_ASSERT(members[0].size() == 1 && (tied ? members[L + 1].empty() : members[L + 1].size() == 1));
  unit_.resize(members.size());
  for (size_t u = 0; u < members.size(); ++u) {
    Zero3Unit& z = unit_[u];
    if (u == static_cast<size_t>(L + 1) && tied) {
      z = unit_[0];
      z.alias = true;
      continue;
    }
    const std::vector<int>& m = members[u];
    z.begin = specs[m.front()].offset;
    for (size_t k = 0; k < m.size(); ++k) {
      FT_ASSERT(specs[m[k]].offset == z.begin + z.numel);  // contiguous in the table
      z.numel += specs[m[k]].numel();
    }
    z.piece = (z.numel + world - 1) / world;
    z.local = sharded_;
    sharded_ += z.piece;
    // This rank's real elements: [rank * piece, min(numel, (rank + 1) * piece)) of the unit, cut at tensors.
    const int64_t lo = std::min(z.numel, rank * z.piece), hi = std::min(z.numel, (rank + 1) * z.piece);
    for (int i : m) {
      const int64_t b = specs[i].offset - z.begin, e = b + specs[i].numel();
      const int64_t rb = std::max(b, lo), re = std::min(e, hi);
      if (rb < re) runs_.push_back({z.local + (rb - lo), z.begin + rb, re - rb, i});
    }
  }
  for (int i : norm_specs_) {
    runs_.push_back({sharded_ + norms_, specs[i].offset, specs[i].numel(), i});
    norms_ += specs[i].numel();
  }
}

int64_t Zero3Layout::local_of(int64_t e) const {
  for (const Zero3Run& r : runs_)
    if (e >= r.table && e < r.table + r.n) return r.local + (e - r.table);
  return -1;
}

void zero3_gather_unit(const Zero3Layout& z, const float* local, int64_t u, Communicator& comm, std::vector<float>& out) {
  const Zero3Unit& un = z.unit(u);
  out.resize(static_cast<size_t>(un.piece * z.world()));
  comm.all_gather(local + un.local, out.data(), std::vector<size_t>(static_cast<size_t>(z.world()), static_cast<size_t>(un.piece)));
}

void zero3_to_table(const Zero3Layout& z, const float* local, Communicator& comm, float* table) {
  std::vector<float> unit;
  for (int64_t u = 0; u < z.units(); ++u) {
    const Zero3Unit& un = z.unit(u);
    if (un.alias) continue;
    zero3_gather_unit(z, local, u, comm, unit);
    if (table) std::copy_n(unit.begin(), un.numel, table + un.begin);
  }
  if (!table) return;
  for (const Zero3Run& r : z.runs())
    if (r.local >= z.sharded_numel()) std::copy_n(local + r.local, r.n, table + r.table);  // the norms
}

std::vector<float> Zero3TensorGather::values(const ParamSpec& s) {
  for (const Zero3Run& r : z_.runs())  // a norm: whole in the local range
    if (r.local >= z_.sharded_numel() && r.table == s.offset)
      return std::vector<float>(local_ + r.local, local_ + r.local + r.n);
  for (int64_t u = 0; u < z_.units(); ++u) {
    const Zero3Unit& un = z_.unit(u);
    if (un.alias || s.offset < un.begin || s.offset >= un.begin + un.numel) continue;
    if (held_ != u) zero3_gather_unit(z_, local_, u, comm_, unit_), held_ = u;
    const int64_t at = s.offset - un.begin;
    return std::vector<float>(unit_.begin() + at, unit_.begin() + at + s.numel());
  }
  fail("internal error: {} is in no ZeRO-3 unit", s.key);
}

void zero3_from_table(const Zero3Layout& z, const float* table, float* local) {
  std::fill_n(local, z.local_numel(), 0.0f);
  for (const Zero3Run& r : z.runs()) std::copy_n(table + r.table, r.n, local + r.local);
}

}  // namespace ftune::dist

// ZeRO's partition of a flat parameter range over the ranks (Rajbhandari et al., "ZeRO: Memory
// Optimizations Toward Training Trillion Parameter Models", 2020): rank r owns [begin, end) and
// keeps the optimizer state of that part only (stage 1), receives only that part of the summed
// gradients (stage 2). The parts are whole chunks of kNormChunk elements, the chunks the gradient
// norm is summed in, so a norm assembled from the ranks' parts has the bits of the unsharded one.
#pragma once
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "dist/communicator.h"
#include "optim/flat_adamw.h"

namespace ftune::dist {

inline constexpr int64_t kNormChunk = kGradNormChunk;  // the chunk flat_grad_norm sums in

struct Shard {
  int64_t begin = 0, end = 0;  // this rank's elements
  std::vector<size_t> counts;  // every rank's element count, in rank order
  int64_t size() const { return end - begin; }
};

// The partition of n elements over `world` ranks, seen from `rank`.
Shard make_shard(int64_t n, int rank, int world);

// `ranges` ([begin, end) in the whole range, sorted) cut to the shard and shifted to its start.
std::vector<std::pair<int64_t, int64_t>> ranges_within(const std::vector<std::pair<int64_t, int64_t>>& ranges,
                                                       const Shard& s);

// The L2 norm of a gradient of n elements of which this rank holds the shard's part (g + s.begin
// onwards, already summed over the ranks): per-chunk sums of squares in double, assembled over the
// ranks and added in chunk order, as flat_grad_norm adds them.
double sharded_grad_norm(const float* g_shard, const Shard& s, int64_t n, Communicator& comm);

}  // namespace ftune::dist

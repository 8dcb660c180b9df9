// ZeRO partition, decay ranges within a shard, and the sharded gradient norm.
#include "dist/zero.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace ftune::dist {

Shard make_shard(int64_t n, int rank, int world) {
  FT_ASSERT(world >= 1 && rank >= 0 && rank < world && n >= 0);
  const int64_t chunks = (n + kNormChunk - 1) / kNormChunk;
  Shard s;
  for (int r = 0; r < world; ++r) {
    const int64_t b = std::min(n, chunks * r / world * kNormChunk);
    const int64_t e = std::min(n, chunks * (r + 1) / world * kNormChunk);
    s.counts.push_back(static_cast<size_t>(e - b));
    if (r == rank) s.begin = b, s.end = e;
  }
  return s;
}

std::vector<std::pair<int64_t, int64_t>> ranges_within(const std::vector<std::pair<int64_t, int64_t>>& ranges,
                                                       const Shard& s) {
  std::vector<std::pair<int64_t, int64_t>> out;
  for (const auto& [b, e] : ranges) {
    const int64_t lo = std::max(b, s.begin), hi = std::min(e, s.end);
    if (lo < hi) out.emplace_back(lo - s.begin, hi - s.begin);
  }
  return out;
}

double sharded_grad_norm(const float* g_shard, const Shard& s, int64_t n, Communicator& comm) {
  const int64_t chunks = (n + kNormChunk - 1) / kNormChunk;
  std::vector<double> part(static_cast<size_t>(chunks), 0.0);  // this rank's chunks, zeros elsewhere
  const int64_t c0 = s.begin / kNormChunk, c1 = s.size() ? (s.end + kNormChunk - 1) / kNormChunk : c0;
  grad_norm_partials(g_shard, n, c0, c1, part.data());
  comm.all_reduce_sum(part.data(), part.size());  // x + 0 + ... + 0 = x: each chunk's own bits
  double ss = 0.0;
  for (double x : part) ss += x;
  return std::sqrt(ss);
}

}  // namespace ftune::dist

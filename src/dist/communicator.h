// Collectives over the ranks of a run, on host memory: Gloo (dist/gloo_communicator.cpp) across
// processes and nodes, or a single rank. GPU tensors go through NCCL, or through pinned host memory
// and this interface when ranks share a GPU (host-staged). Every call is collective: all ranks make
// the same calls in the same order; each fails after the run's timeout naming the ranks that did not
// arrive, so a rank that dies makes the others stop with an error instead of hanging.
#pragma once
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dist/store.h"

namespace ftune::dist {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world() const = 0;
  // data[n] = the sum over ranks of data[n], in place. The sum is in a fixed order (rank 0 + 1 + ...)
  // so every rank gets the same bits.
  virtual void all_reduce_sum(float* data, size_t n) = 0;
  virtual void all_reduce_sum(double* data, size_t n) = 0;
  // in[sum(counts)] summed over ranks; this rank receives its part, out[counts[rank]] (the parts
  // are consecutive: rank r's starts at counts[0] + ... + counts[r-1]).
  virtual void reduce_scatter_sum(const float* in, float* out, const std::vector<size_t>& counts) = 0;
  // out[sum(counts)] = every rank's in[counts[r]], in rank order.
  virtual void all_gather(const float* in, float* out, const std::vector<size_t>& counts) = 0;
  // The same over raw bytes (ZeRO-3 gathers bf16 and fp16 compute copies): out[sum(bytes)].
  virtual void all_gather_bytes(const void* in, void* out, const std::vector<size_t>& bytes) = 0;
  // root's data[bytes] to every rank.
  virtual void broadcast(void* data, size_t bytes, int root) = 0;
  // Point to point (pipeline stages): blocking, matched by order between the two ranks.
  virtual void send(const void* data, size_t bytes, int peer) = 0;
  virtual void recv(void* data, size_t bytes, int peer) = 0;
  // out[out_bytes] to peer and in[in_bytes] from it at once (both posted before either is waited
  // for), so that two neighbouring pipeline stages exchanging never wait for each other.
  virtual void send_recv(const void* out, size_t out_bytes, void* in, size_t in_bytes, int peer) = 0;
  virtual void barrier() = 0;
};

// The L2 norm of a vector whose parts (of local norm `norm`) the ranks of `group` hold: the sum of
// their squares over the group (the norm itself when the group is null or one rank).
inline double norm_over_ranks(double norm, Communicator* group) {
  if (!group || group->world() == 1) return norm;
  double sq = norm * norm;
  group->all_reduce_sum(&sq, 1);
  return std::sqrt(sq);
}

// One rank: every collective is the identity.
std::unique_ptr<Communicator> make_single_communicator();

// Gloo over TCP: the ranks meet through `store` (which must outlive the communicator), each
// collective bounded by `timeout`. `interface_host`: the address this rank listens on ("" = the
// hostname's).
std::unique_ptr<Communicator> make_gloo_communicator(Store& store, int rank, int world,
                                                     std::chrono::milliseconds timeout,
                                                     const std::string& interface_host = "");

}  // namespace ftune::dist

// Collectives on GPU memory over NCCL, for data parallelism when every rank has a GPU of its own.
// The ranks exchange NCCL's unique id through the run's store (rank 0 makes it). Every collective
// is enqueued on the model's compute stream and then waited for with the run's timeout: NCCL's
// asynchronous errors and ranks that never arrive abort the communicator and end the run with an
// error naming the operation, instead of a hang.
#pragma once
#include <chrono>
#include <cstddef>
#include <memory>

#include "dist/store.h"
#include "ops/cuda/context.h"

typedef struct ncclComm* ncclComm_t;

namespace ftune {

class NcclCommunicator {
 public:
  NcclCommunicator(dist::Store& store, int rank, int world, const cuda::Context& ctx, std::chrono::milliseconds timeout);
  // A sub-group (ncclCommSplit, collective over this communicator): the ranks that pass the same
  // color, ordered by key (pipeline stages, data-parallel replicas). A negative color takes no part
  // and gets null.
  std::unique_ptr<NcclCommunicator> split(int color, int key);
  ~NcclCommunicator();
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;
  // data[n] (device) summed over the ranks, in place; returns when it is complete.
  void all_reduce_sum(float* data, size_t n);
  // out[world * bytes] = every rank's in[bytes], in rank order (device).
  void all_gather_bytes(const void* in, void* out, size_t bytes);
  // out[n] = this rank's part of in[world * n] summed over the ranks (device, fp32).
  void reduce_scatter_sum(const float* in, float* out, size_t n);
  int rank() const { return rank_; }
  int world() const { return world_; }

 private:
  NcclCommunicator(const cuda::Context& ctx, ncclComm_t comm, std::chrono::milliseconds timeout);
  void wait(const char* what);
  const cuda::Context& ctx_;
  int rank_, world_;
  std::chrono::milliseconds timeout_;
  ncclComm_t comm_ = nullptr;
};

}  // namespace ftune

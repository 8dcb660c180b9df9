// The collectives ZeRO-3 runs inside the model's forward and backward, on device memory: a unit's
// pieces all-gathered, its gradient reduce-scattered into this rank's accumulator, and the scalar
// sums of the gradient norm. Three ways: NCCL when every rank has a GPU of its own; through pinned
// host memory and the ranks' host communicator (Gloo) when ranks share a GPU (host-staged); and a
// single rank, where a gather is a device copy. Each call returns once its result is usable by
// the compute stream.
#pragma once
#include <cstddef>
#include <memory>

#include "dist/communicator.h"
#include "ops/cuda/context.h"
#include "ops/cuda/device_buffer.h"

namespace ftune {

class NcclCommunicator;

class Zero3Comm {
 public:
  virtual ~Zero3Comm() = default;
  virtual int world() const = 0;
  // out[world * bytes] = every rank's in[bytes], in rank order.
  virtual void all_gather(const void* in, void* out, size_t bytes) = 0;
  // acc[n] += this rank's part of in[world * n] (fp32) summed over the ranks.
  virtual void reduce_scatter_add(const float* in, float* acc, size_t n) = 0;
  // v summed over the ranks (host).
  virtual double sum(double v) = 0;
  // How the units travel: "nccl", "cuda-ipc", "host-staged" or "single".
  virtual const char* transport() const = 0;
};

// Pinned host bytes the host-staged comm holds for units of at most `max_unit_bytes` (the fp32
// gradient of the largest unit) and pieces of at most `max_piece` elements; 0 for one rank.
size_t zero3_host_staging_bytes(size_t max_unit_bytes, size_t max_piece, int world);
// Device scratch bytes the comm needs for pieces of at most `max_piece` fp32 elements.
size_t zero3_device_scratch_bytes(size_t max_piece);

// host: the ranks' host collectives (also for sum()); nccl null: host-staged, or a device copy on one rank.
std::unique_ptr<Zero3Comm> make_zero3_comm(const cuda::Context& ctx, dist::Communicator& host, NcclCommunicator* nccl,
                                           size_t max_unit_bytes, size_t max_piece);

// The frozen base's gathers under dist.zero 3 with an adapter (gpu/llama_sharded_base.cpp): NCCL
// when every rank has a GPU; ranks sharing a GPU read each other's pieces straight from device
// memory through CUDA IPC (a rank's pieces are one allocation, written once before training and
// never again, so a gather is W device copies with no handshake), or, with `ipc` false or where
// IPC fails on any rank, through pinned host memory and Gloo; one rank: a device copy. `pieces`
// [pieces_bytes]: this rank's, already filled on every rank (creating the comm is collective).
// reduce_scatter_add is not for frozen weights: it fails.
std::unique_ptr<Zero3Comm> make_frozen_gather_comm(const cuda::Context& ctx, dist::Communicator& host,
                                                   NcclCommunicator* nccl, const void* pieces, size_t pieces_bytes,
                                                   size_t max_unit_bytes, bool ipc);

}  // namespace ftune

// NcclCommunicator: the id through the store, blocking init, collectives waited on with a timeout.
#include "gpu/nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstring>
#include <thread>

#include "core/error.h"

namespace ftune {

namespace {
void check(ncclResult_t r, const char* what) {
  if (r != ncclSuccess && r != ncclInProgress) fail("NCCL {}: {}", what, ncclGetErrorString(r));
}
}  // namespace

NcclCommunicator::NcclCommunicator(dist::Store& store, int rank, int world, const cuda::Context& ctx,
                                   std::chrono::milliseconds timeout)
    : ctx_(ctx), rank_(rank), world_(world), timeout_(timeout) {
  ncclUniqueId id{};
  const std::string key = "ftune/nccl_id";
  if (rank == 0) {
    check(ncclGetUniqueId(&id), "ncclGetUniqueId");
    store.set(key, dist::Bytes(reinterpret_cast<const uint8_t*>(&id), reinterpret_cast<const uint8_t*>(&id) + sizeof(id)));
  } else {
    const dist::Bytes b = store.get(key);
    if (b.size() != sizeof(id)) fail("NCCL: the unique id in the store has {} bytes, expected {}", b.size(), sizeof(id));
    std::memcpy(&id, b.data(), sizeof(id));
  }
  FT_ASSERT(cudaSetDevice(ctx.device()) == cudaSuccess);
  check(ncclCommInitRank(&comm_, world, id, rank), "ncclCommInitRank");
}

NcclCommunicator::NcclCommunicator(const cuda::Context& ctx, ncclComm_t comm, std::chrono::milliseconds timeout)
    : ctx_(ctx), rank_(0), world_(1), timeout_(timeout), comm_(comm) {
  check(ncclCommUserRank(comm_, &rank_), "ncclCommUserRank");
  check(ncclCommCount(comm_, &world_), "ncclCommCount");
}

std::unique_ptr<NcclCommunicator> NcclCommunicator::split(int color, int key) {
  if (!comm_) fail("split (NCCL): the communicator was aborted by an earlier error");
  ncclComm_t sub = nullptr;
  check(ncclCommSplit(comm_, color < 0 ? NCCL_SPLIT_NOCOLOR : color, key, &sub, nullptr), "ncclCommSplit");
  if (!sub) return nullptr;
  return std::unique_ptr<NcclCommunicator>(new NcclCommunicator(ctx_, sub, timeout_));
}

NcclCommunicator::~NcclCommunicator() {
  if (comm_) ncclCommDestroy(comm_);
}

void NcclCommunicator::wait(const char* what) {
  const auto t0 = std::chrono::steady_clock::now();
  for (;;) {
    const cudaError_t q = cudaStreamQuery(ctx_.stream());
    if (q == cudaSuccess) return;
    if (q != cudaErrorNotReady) fail("{} (NCCL): {}", what, cudaGetErrorString(q));
    ncclResult_t async = ncclSuccess;
    ncclCommGetAsyncError(comm_, &async);
    if (async != ncclSuccess && async != ncclInProgress) {
      ncclCommAbort(comm_);
      comm_ = nullptr;
      fail("{} (NCCL): {}", what, ncclGetErrorString(async));
    }
    if (std::chrono::steady_clock::now() - t0 > timeout_) {
      ncclCommAbort(comm_);
      comm_ = nullptr;
      fail("{} (NCCL): not every one of the {} ranks arrived within {} s (dist.timeout_s)", what, world_,
           timeout_.count() / 1000);
    }
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

void NcclCommunicator::all_reduce_sum(float* data, size_t n) {
  if (!comm_) fail("all_reduce (NCCL): the communicator was aborted by an earlier error");
  check(ncclAllReduce(data, data, n, ncclFloat32, ncclSum, comm_, ctx_.stream()), "ncclAllReduce");
  wait("all_reduce");
}

void NcclCommunicator::all_gather_bytes(const void* in, void* out, size_t bytes) {
  if (!comm_) fail("all_gather (NCCL): the communicator was aborted by an earlier error");
  check(ncclAllGather(in, out, bytes, ncclUint8, comm_, ctx_.stream()), "ncclAllGather");
  wait("all_gather");
}

void NcclCommunicator::reduce_scatter_sum(const float* in, float* out, size_t n) {
  if (!comm_) fail("reduce_scatter (NCCL): the communicator was aborted by an earlier error");
  check(ncclReduceScatter(in, out, n, ncclFloat32, ncclSum, comm_, ctx_.stream()), "ncclReduceScatter");
  wait("reduce_scatter");
}

}  // namespace ftune

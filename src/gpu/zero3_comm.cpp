// ZeRO-3's device collectives over NCCL, host-staged Gloo, CUDA IPC (the frozen base's gathers) or one rank.
#include "gpu/zero3_comm.h"

#include <cuda_runtime.h>

#include <vector>

#include "core/error.h"
#include "gpu/nccl_communicator.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/elementwise.h"

namespace ftune {

namespace {

class Zero3CommBase : public Zero3Comm {
 public:
  Zero3CommBase(const cuda::Context& ctx, dist::Communicator& host, size_t max_piece)
      : ctx_(ctx), host_(host), piece_(max_piece * 4) {}
  int world() const override { return host_.world(); }
  double sum(double v) override {
    if (host_.world() > 1) host_.all_reduce_sum(&v, 1);
    return v;
  }

 protected:
  const cuda::Context& ctx_;
  dist::Communicator& host_;
  cuda::DeviceBuffer piece_;  // [max piece] fp32: a reduce-scattered part before it is added
};

// One rank: the gather is the piece itself, the reduce-scatter the gradient itself.
class SingleZero3Comm final : public Zero3CommBase {
 public:
  using Zero3CommBase::Zero3CommBase;
  const char* transport() const override { return "single"; }
  void all_gather(const void* in, void* out, size_t bytes) override {
    if (in != out) ctx_.copy(out, in, bytes);
  }
  void reduce_scatter_add(const float* in, float* acc, size_t n) override {
    cuda::add_into(ctx_, in, acc, static_cast<int64_t>(n));
  }
};

class NcclZero3Comm final : public Zero3CommBase {
 public:
  NcclZero3Comm(const cuda::Context& ctx, dist::Communicator& host, NcclCommunicator& nccl, size_t max_piece)
      : Zero3CommBase(ctx, host, max_piece), nccl_(nccl) {}
  const char* transport() const override { return "nccl"; }
  void all_gather(const void* in, void* out, size_t bytes) override { nccl_.all_gather_bytes(in, out, bytes); }
  void reduce_scatter_add(const float* in, float* acc, size_t n) override {
    FT_ASSERT(n * 4 <= piece_.bytes());
    nccl_.reduce_scatter_sum(in, piece_.as<float>(), n);
    cuda::add_into(ctx_, piece_.as<float>(), acc, static_cast<int64_t>(n));
  }

 private:
  NcclCommunicator& nccl_;
};

// Ranks sharing a GPU: device -> pinned host -> Gloo -> pinned host -> device. The staging holds a
// whole unit (the gathered weights, or the fp32 gradient before its reduce-scatter) and one piece.
class HostStagedZero3Comm final : public Zero3CommBase {
 public:
  HostStagedZero3Comm(const cuda::Context& ctx, dist::Communicator& host, size_t max_unit_bytes, size_t max_piece)
      : Zero3CommBase(ctx, host, max_piece), unit_(max_unit_bytes), part_(max_piece * 4) {}
  const char* transport() const override { return "host-staged"; }
  void all_gather(const void* in, void* out, size_t bytes) override {
    const size_t W = static_cast<size_t>(world());
    FT_ASSERT(bytes * W <= unit_.bytes());
    uint8_t* own = unit_.as<uint8_t>() + bytes * static_cast<size_t>(host_.rank());
    FT_CUDA(cudaMemcpyAsync(own, in, bytes, cudaMemcpyDeviceToHost, ctx_.stream()));
    ctx_.synchronize();
    host_.all_gather_bytes(own, unit_.as<uint8_t>(), std::vector<size_t>(W, bytes));
    FT_CUDA(cudaMemcpyAsync(out, unit_.as<uint8_t>(), bytes * W, cudaMemcpyHostToDevice, ctx_.stream()));
    ctx_.synchronize();  // the staging is reused by the next call
  }
  void reduce_scatter_add(const float* in, float* acc, size_t n) override {
    const size_t W = static_cast<size_t>(world());
    FT_ASSERT(n * W * 4 <= unit_.bytes() && n * 4 <= part_.bytes());
    FT_CUDA(cudaMemcpyAsync(unit_.as<float>(), in, n * W * 4, cudaMemcpyDeviceToHost, ctx_.stream()));
    ctx_.synchronize();
    host_.reduce_scatter_sum(unit_.as<float>(), part_.as<float>(), std::vector<size_t>(W, n));
    FT_CUDA(cudaMemcpyAsync(piece_.data(), part_.as<float>(), n * 4, cudaMemcpyHostToDevice, ctx_.stream()));
    cuda::add_into(ctx_, piece_.as<float>(), acc, static_cast<int64_t>(n));
    ctx_.synchronize();
  }

 private:
  cuda::PinnedBuffer unit_, part_;
};

// Ranks sharing a GPU, frozen pieces: every rank maps every other rank's piece allocation once
// (cudaIpcOpenMemHandle) and a gather copies the W pieces of a unit on its own stream. The
// owners never write their pieces again and free them only when the run ends, after the last
// collective every rank has passed with its reads synchronized (a loss or gradient sum).
class IpcFrozenGather final : public Zero3CommBase {
 public:
  IpcFrozenGather(const cuda::Context& ctx, dist::Communicator& host, const void* own, std::vector<const char*> peers)
      : Zero3CommBase(ctx, host, 0), own_(static_cast<const char*>(own)), peers_(std::move(peers)) {}
  const char* transport() const override { return "cuda-ipc"; }
  ~IpcFrozenGather() override {
    cudaStreamSynchronize(ctx_.stream());
    for (size_t r = 0; r < peers_.size(); ++r)
      if (static_cast<int>(r) != host_.rank() && peers_[r]) cudaIpcCloseMemHandle(const_cast<char*>(peers_[r]));
  }
  void all_gather(const void* in, void* out, size_t bytes) override {
    const ptrdiff_t off = static_cast<const char*>(in) - own_;
    for (size_t r = 0; r < peers_.size(); ++r)
      FT_CUDA(cudaMemcpyAsync(static_cast<char*>(out) + r * bytes, peers_[r] + off, bytes, cudaMemcpyDeviceToDevice,
                              ctx_.stream()));
  }
  void reduce_scatter_add(const float*, float*, size_t) override {
    fail("internal error: a reduce-scatter through the frozen base's gathers");
  }

 private:
  const char* own_;
  std::vector<const char*> peers_;  // [world] every rank's pieces in this process (own_ at this rank)
};

// Every rank's handle, opened; empty when any rank does not want IPC or could not take part (all
// ranks then agree on the fallback).
std::vector<const char*> open_peer_pieces(dist::Communicator& host, const void* own, bool want) {
  const int W = host.world(), me = host.rank();
  struct Offer {
    cudaIpcMemHandle_t handle;
    int ok;
  } mine{};
  mine.ok = want && cudaIpcGetMemHandle(&mine.handle, const_cast<void*>(own)) == cudaSuccess;
  cudaGetLastError();  // (a failure here is answered by the fallback, not left for the next check)
  std::vector<Offer> all(static_cast<size_t>(W));
  host.all_gather_bytes(&mine, all.data(), std::vector<size_t>(static_cast<size_t>(W), sizeof(Offer)));
  for (const Offer& o : all)
    if (!o.ok) return {};
  std::vector<const char*> peers(static_cast<size_t>(W), nullptr);
  peers[static_cast<size_t>(me)] = static_cast<const char*>(own);
  double opened = 1;
  for (int r = 0; r < W && opened; ++r) {
    void* p = nullptr;
    if (r == me) continue;
    if (cudaIpcOpenMemHandle(&p, all[static_cast<size_t>(r)].handle, cudaIpcMemLazyEnablePeerAccess) != cudaSuccess) {
      cudaGetLastError();
      opened = 0;
    }
    peers[static_cast<size_t>(r)] = static_cast<const char*>(p);
  }
  host.all_reduce_sum(&opened, 1);
  if (opened == W) return peers;
  for (int r = 0; r < W; ++r)
    if (r != me && peers[static_cast<size_t>(r)]) cudaIpcCloseMemHandle(const_cast<char*>(peers[static_cast<size_t>(r)]));
  return {};
}

}  // namespace

size_t zero3_host_staging_bytes(size_t max_unit_bytes, size_t max_piece, int world) {
  return world > 1 ? max_unit_bytes + max_piece * 4 : 0;
}

size_t zero3_device_scratch_bytes(size_t max_piece) { return max_piece * 4; }

std::unique_ptr<Zero3Comm> make_zero3_comm(const cuda::Context& ctx, dist::Communicator& host, NcclCommunicator* nccl,
                                           size_t max_unit_bytes, size_t max_piece) {
  if (nccl) return std::make_unique<NcclZero3Comm>(ctx, host, *nccl, max_piece);
  if (host.world() == 1) return std::make_unique<SingleZero3Comm>(ctx, host, max_piece);
  return std::make_unique<HostStagedZero3Comm>(ctx, host, max_unit_bytes, max_piece);
}

std::unique_ptr<Zero3Comm> make_frozen_gather_comm(const cuda::Context& ctx, dist::Communicator& host,
                                                   NcclCommunicator* nccl, const void* pieces, size_t pieces_bytes,
                                                   size_t max_unit_bytes, bool ipc) {
  FT_ASSERT(pieces && pieces_bytes > 0);
  ctx.synchronize();  // this rank's pieces are written
  if (nccl) return std::make_unique<NcclZero3Comm>(ctx, host, *nccl, 0);
  if (host.world() == 1) return std::make_unique<SingleZero3Comm>(ctx, host, 0);
  std::vector<const char*> peers = open_peer_pieces(host, pieces, ipc);
  if (!peers.empty()) return std::make_unique<IpcFrozenGather>(ctx, host, pieces, std::move(peers));
  return std::make_unique<HostStagedZero3Comm>(ctx, host, max_unit_bytes, 0);
}


}  // namespace ftune

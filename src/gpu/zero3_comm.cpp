// ZeRO-3's device collectives over NCCL, host-staged Gloo, or one rank.
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

}  // namespace ftune

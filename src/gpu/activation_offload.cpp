// ActivationOffload: copies on the side stream, ordered against the compute stream by events.
#include "gpu/activation_offload.h"

#include "ops/cuda/cuda_check.h"

namespace ftune {

ActivationOffload::ActivationOffload(const cuda::Context& ctx, int64_t count, size_t bytes)
    : ctx_(ctx), stride_(bytes), host_(static_cast<size_t>(count) * bytes) {
  for (auto& e : done_) FT_CUDA(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  FT_CUDA(cudaEventCreateWithFlags(&mark_, cudaEventDisableTiming));
}

ActivationOffload::~ActivationOffload() {
  for (auto e : done_)
    if (e) cudaEventDestroy(e);
  if (mark_) cudaEventDestroy(mark_);
}

void ActivationOffload::before_write(int64_t i) { FT_CUDA(cudaStreamWaitEvent(ctx_.stream(), done_[i % kSlots], 0)); }

void ActivationOffload::after_write(int64_t i, const void* slot, size_t bytes) {
  FT_ASSERT(bytes <= stride_);
  FT_CUDA(cudaEventRecord(mark_, ctx_.stream()));
  FT_CUDA(cudaStreamWaitEvent(ctx_.side_stream(), mark_, 0));
  FT_CUDA(cudaMemcpyAsync(host_.as<char>() + static_cast<size_t>(i) * stride_, slot, bytes, cudaMemcpyDeviceToHost,
                          ctx_.side_stream()));
  FT_CUDA(cudaEventRecord(done_[i % kSlots], ctx_.side_stream()));
}

void ActivationOffload::prefetch(int64_t i, void* slot, size_t bytes) {
  FT_ASSERT(bytes <= stride_);
  FT_CUDA(cudaEventRecord(mark_, ctx_.stream()));
  FT_CUDA(cudaStreamWaitEvent(ctx_.side_stream(), mark_, 0));
  FT_CUDA(cudaMemcpyAsync(slot, host_.as<char>() + static_cast<size_t>(i) * stride_, bytes, cudaMemcpyHostToDevice,
                          ctx_.side_stream()));
  FT_CUDA(cudaEventRecord(done_[i % kSlots], ctx_.side_stream()));
}

void ActivationOffload::wait(int64_t i) { FT_CUDA(cudaStreamWaitEvent(ctx_.stream(), done_[i % kSlots], 0)); }

}  // namespace ftune

// Layer inputs kept in pinned host memory during a checkpointed step, so that the device holds
// three of them instead of one per layer: the slots rotate (input i lives in slot i % 3), each
// input is copied to the host on the side stream as soon as it is written, and in the backward the
// input of the layer below is brought back while the current layer computes. Events order the two
// streams; nothing here synchronizes the host.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>

#include "ops/cuda/context.h"
#include "ops/cuda/device_buffer.h"

typedef struct CUevent_st* cudaEvent_t;

namespace ftune {

class ActivationOffload {
 public:
  static constexpr int kSlots = 3;
  // count inputs of at most `bytes` each (host: count * bytes pinned).
  ActivationOffload(const cuda::Context& ctx, int64_t count, size_t bytes);
  ~ActivationOffload();
  ActivationOffload(const ActivationOffload&) = delete;
  ActivationOffload& operator=(const ActivationOffload&) = delete;

  // Before the compute stream writes input i into its slot: the slot's last copy is done.
  void before_write(int64_t i);
  // After the compute stream's work so far (which wrote input i into `slot`): copy it to the host.
  void after_write(int64_t i, const void* slot, size_t bytes);
  // After the compute stream's work so far: bring input i back from the host into `slot`.
  void prefetch(int64_t i, void* slot, size_t bytes);
  // The compute stream waits until input i's prefetch has landed.
  void wait(int64_t i);
  size_t host_bytes() const { return host_.bytes(); }

 private:
  const cuda::Context& ctx_;
  size_t stride_;
  cuda::PinnedBuffer host_;                       // [count, bytes]
  std::array<cudaEvent_t, kSlots> done_{};  // per slot: its last copy (either way) finished
  cudaEvent_t mark_ = nullptr;              // a point of the compute stream
};

}  // namespace ftune

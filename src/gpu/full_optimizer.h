// The optimizer of full fine-tuning on the GPU. It owns the fp32 master weights and the AdamW
// moments of the parameter table's flat range; each step reads the model's fp32 gradients (on the
// device, in the same flat layout) and writes the new values into the model's compute copy (one
// slot per trainable tensor: bf16/fp16/fp32 matrices, fp32 norms). Three kinds:
//   DeviceAdamW     masters and fp32 moments on the device, torch.optim.AdamW's update (one launch
//                   per decay range)
//   DeviceAdamW8bit masters on the device, bitsandbytes' 8-bit blockwise moments per tensor (as
//                   bnb.optim.AdamW8bit keeps one state per parameter; tensors under 4096 elements
//                   keep fp32 moments), weight decay on the decayed tensors only
//   OffloadAdamW    masters and moments in host memory, updated by the CPU threads (ZeRO-Offload's
//                   idea, Ren et al. 2021): gradients stream to the host in chunks through pinned
//                   staging on the side stream while the previous chunk updates, and the updated
//                   compute values stream back on the compute stream. The device holds no
//                   optimizer state at all. The host arrays are ordinary (pageable) memory: only
//                   the staging is pinned, so a 7B run does not lock 81 GB of the host.
// State names match the CPU backend's (master, adam.m, adam.v, adam.t) where the layout is the same.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/state_dict.h"
#include "ops/cuda/adamw.h"
#include "ops/cuda/context.h"
#include "ops/cuda/storage.h"

namespace ftune {

// One trainable tensor: its range in the flat layout and its compute copy on the device.
struct ComputeSlot {
  int64_t offset = 0, n = 0;
  void* data = nullptr;                      // [n] device, in `storage`
  cuda::Storage storage = cuda::Storage::F32;
  bool decay = false;                        // gets weight decay (matrices; not norms)
};

enum class FullOptimizerKind { DeviceAdamW, DeviceAdamW8bit, OffloadAdamW };

class FullOptimizer {
 public:
  virtual ~FullOptimizer() = default;
  virtual std::string describe() const = 0;
  // The start: one tensor's fp32 values from the host, or every master from the compute copy
  // (random benchmark weights).
  virtual void set_master(int64_t offset, const float* host, int64_t n) = 0;
  virtual void masters_from_compute() = 0;
  virtual void master_to_host(int64_t offset, float* host, int64_t n) const = 0;
  // The compute copy from the masters.
  virtual void refresh_compute() = 0;
  // One update from grads [P] (device fp32, read multiplied by s.grad_coef), then the compute copy
  // refreshed. s.weight_decay applies to the decayed slots only.
  virtual void step(const cuda::AdamWStep& s, const float* grads) = 0;
  virtual void save(StateDict& out) const = 0;
  virtual void load(const StateDict& in) = 0;
  virtual size_t host_bytes() const = 0;
};

// Device bytes a kind will hold for P masters over these slots (for the memory plan).
size_t full_optimizer_device_bytes(FullOptimizerKind kind, int64_t P, const std::vector<ComputeSlot>& slots);

// Host bytes a kind will hold: {pinned staging, ordinary memory}.
std::pair<size_t, size_t> full_optimizer_host_bytes(FullOptimizerKind kind, int64_t P,
                                                    const std::vector<ComputeSlot>& slots);

// ctx must outlive the optimizer; slots cover [0, P) in order.
std::unique_ptr<FullOptimizer> make_full_optimizer(FullOptimizerKind kind, const cuda::Context& ctx, int64_t P,
                                                   std::vector<ComputeSlot> slots);

}  // namespace ftune

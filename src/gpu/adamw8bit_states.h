// 8-bit AdamW states for the GPU model's flat fp32 adapter vector, two ways: device-resident
// (DeviceAdamW8bit) or paged (PagedAdamW8bit: states in pinned host memory, streamed through
// double-buffered device staging in chunks on the side stream while the compute stream updates the
// previous chunk). Both give the CPU Adam8bitState's results bit for bit. CUDA builds only.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>

#include "ops/cuda/context.h"
#include "ops/cuda/device_buffer.h"
#include "optim/adamw8bit.h"

typedef struct CUevent_st* cudaEvent_t;

namespace ftune {

// What one flat state holds, per mode (8-bit when n >= min_8bit_size, else fp32 m and v).
struct Adam8bitLayout {
  int64_t n = 0;
  bool is_8bit = true;
  size_t elem_bytes() const { return is_8bit ? 1 : 4; }  // of m and of v
  int64_t blocks() const { return is_8bit ? adam8bit_blocks(n) : 0; }  // absmax entries of m and of v
  size_t bytes() const { return 2 * elem_bytes() * static_cast<size_t>(n) + 2 * sizeof(float) * blocks(); }
};

// States in device memory. ctx must outlive the optimizer; updates run on ctx.stream().
class DeviceAdamW8bit {
 public:
  DeviceAdamW8bit(const cuda::Context& ctx, int64_t n, int64_t min_8bit_size = kMin8bitSize);
  // The device bytes such an optimizer will hold (states and maps), for planning before it exists.
  static size_t device_bytes_for(int64_t n, int64_t min_8bit_size = kMin8bitSize);
  // One update of p_dev [n] from g_dev [n] (device pointers), stream-ordered on ctx.stream().
  void step(const AdamW8bitStep& s, float* p_dev, const float* g_dev);
  int64_t size() const { return layout_.n; }
  bool is_8bit() const { return layout_.is_8bit; }
  size_t device_bytes() const { return layout_.bytes() + maps_.bytes(); }
  size_t host_bytes() const { return 0; }
  // A host copy of the states (synchronizes ctx.stream()), and the reverse (checkpoint resume).
  Adam8bitState to_host() const;
  void load(const Adam8bitState& st);

 private:
  const cuda::Context& ctx_;
  Adam8bitLayout layout_;
  cuda::DeviceBuffer maps_;                  // [2, 256] fp32: dynamic_map(true), dynamic_map(false)
  cuda::DeviceBuffer m_, v_;                 // [n] uint8 codes, or [n] fp32 in fp32 mode
  cuda::DeviceBuffer absmax_m_, absmax_v_;   // [ceil(n/256)] fp32 (empty in fp32 mode)
};

// States in pinned host memory, streamed per chunk of chunk_bytes of state (rounded down to whole
// 256-element blocks, at least one): chunk k+1 uploads on ctx.side_stream() while chunk k updates
// on ctx.stream(), and each chunk's states go back to the host right after its kernel. Never
// managed memory. After step() returns, ctx.stream() is ordered after the last copy back, so
// ctx.synchronize() means the host states are current.
class PagedAdamW8bit {
 public:
  static constexpr size_t kDefaultChunkBytes = size_t{64} << 20;
  PagedAdamW8bit(const cuda::Context& ctx, int64_t n, size_t chunk_bytes = kDefaultChunkBytes,
                 int64_t min_8bit_size = kMin8bitSize);
  ~PagedAdamW8bit();
  // The device bytes such an optimizer will hold (staging slots and maps), for planning.
  static size_t device_bytes_for(int64_t n, size_t chunk_bytes = kDefaultChunkBytes,
                                 int64_t min_8bit_size = kMin8bitSize);
  PagedAdamW8bit(const PagedAdamW8bit&) = delete;
  PagedAdamW8bit& operator=(const PagedAdamW8bit&) = delete;

  void step(const AdamW8bitStep& s, float* p_dev, const float* g_dev);  // p_dev, g_dev: [n] device
  int64_t size() const { return layout_.n; }
  bool is_8bit() const { return layout_.is_8bit; }
  int64_t chunk_elems() const { return chunk_elems_; }
  int64_t chunks() const { return (layout_.n + chunk_elems_ - 1) / chunk_elems_; }
  size_t device_bytes() const;  // staging slots and maps
  size_t host_bytes() const;    // the pinned states
  Adam8bitState to_host() const;  // synchronizes ctx.stream()
  void load(const Adam8bitState& st);

 private:
  struct Slot {
    cuda::DeviceBuffer m, v;                // [chunk_elems] uint8, or fp32 in fp32 mode
    cuda::DeviceBuffer absmax_m, absmax_v;  // [chunk_elems / 256] fp32 (8-bit mode)
  };
  void upload(int64_t chunk);  // host -> slot chunk % 2, on the side stream
  void download(int64_t chunk);

  const cuda::Context& ctx_;
  Adam8bitLayout layout_;
  int64_t chunk_elems_ = 0;                  // a multiple of 256
  cuda::DeviceBuffer maps_;                  // [2, 256] fp32
  cuda::PinnedBuffer m_, v_;                       // [n] uint8 codes, or [n] fp32
  cuda::PinnedBuffer absmax_m_, absmax_v_;         // [ceil(n/256)] fp32 (8-bit mode)
  std::array<Slot, 2> slots_;
  std::array<cudaEvent_t, 2> uploaded_{};    // per slot: its upload finished (side stream)
  std::array<cudaEvent_t, 2> computed_{};    // per slot: its kernel finished (compute stream)
  cudaEvent_t downloaded_ = nullptr;         // the step's last copy back finished (side stream)
};

}  // namespace ftune

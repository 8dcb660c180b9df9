// Peak device memory in use while a benchmark runs, sampled. A background thread reads
// ftune::cuda::memory_in_use() (cudaMemGetInfo: total - free) every millisecond and keeps the
// largest reading; stop() or the destructor ends and joins it. bench/peer_lora.py measures the
// peer the same way (torch.cuda.mem_get_info() read by a background thread every ~1 ms, less the
// reading taken before the model is built), so both sides report the device memory actually in
// use at its highest, whatever allocated it, rather than one allocator's own statistics.
// The reading covers the whole device, so nothing else may run on the GPU meanwhile. The thread
// reads the current device of a new host thread, device 0, which is the one the benchmarks use.
#pragma once
#include <atomic>
#include <chrono>
#include <cstddef>
#include <exception>
#include <thread>

#include "ops/cuda/context.h"

namespace ftune::bench {

class MemoryPeakSampler {
 public:
  // Takes a first reading at once, then one every `period` until stop().
  explicit MemoryPeakSampler(std::chrono::microseconds period = std::chrono::milliseconds(1))
      : peak_(cuda::memory_in_use()) {
    thread_ = std::thread([this, period] {
      try {
        while (!stop_.load(std::memory_order_relaxed)) {
          std::this_thread::sleep_for(period);
          sample();
        }
      } catch (...) {
        error_ = std::current_exception();  // read by stop() after the join
      }
    });
  }
  ~MemoryPeakSampler() { join(); }
  MemoryPeakSampler(const MemoryPeakSampler&) = delete;
  MemoryPeakSampler& operator=(const MemoryPeakSampler&) = delete;

  // Ends the sampling with one last reading and returns the peak in bytes (a second call returns
  // the same); rethrows the CUDA error the thread met, if any.
  size_t stop() {
    const bool was_running = join();
    if (error_) std::rethrow_exception(error_);
    if (was_running) sample();
    return peak_.load();
  }
  // The largest reading so far, in bytes.
  size_t peak() const { return peak_.load(); }

 private:
  bool join() noexcept {
    stop_.store(true);
    if (!thread_.joinable()) return false;
    thread_.join();
    return true;
  }
  void sample() {
    const size_t now = cuda::memory_in_use();
    size_t seen = peak_.load(std::memory_order_relaxed);
    while (now > seen && !peak_.compare_exchange_weak(seen, now)) {
    }
  }

  std::atomic<size_t> peak_;
  std::atomic<bool> stop_{false};
  std::exception_ptr error_;
  std::thread thread_;  // started in the constructor's body, after every member it uses
};

}  // namespace ftune::bench

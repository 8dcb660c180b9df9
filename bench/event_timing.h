// CUDA-event timing the GPU benchmarks share.
#pragma once
#include <cuda_runtime.h>

#include <functional>

#include "ops/cuda/context.h"

namespace ftune::bench {

// Milliseconds per call of fn on ctx's stream (`warmup` calls, then the mean of `reps`).
inline double time_ms(const cuda::Context& ctx, const std::function<void()>& fn, int reps = 10, int warmup = 3) {
  for (int i = 0; i < warmup; ++i) fn();
  cudaEvent_t a, b;
  cudaEventCreate(&a), cudaEventCreate(&b);
  cudaEventRecord(a, ctx.stream());
  for (int i = 0; i < reps; ++i) fn();
  cudaEventRecord(b, ctx.stream());
  cudaEventSynchronize(b);
  float ms = 0;
  cudaEventElapsedTime(&ms, a, b);
  cudaEventDestroy(a), cudaEventDestroy(b);
  return static_cast<double>(ms) / reps;
}

}  // namespace ftune::bench

// Small elementwise helpers on the GPU: storage conversion, LoRA dropout with the mask shared
// with the CPU model (core/dropout_hash.h), random fills, row gathers, sums of squares and a count of non-finite values.
#pragma once
#include <cstdint>

#include "ops/cuda/context.h"
#include "ops/cuda/storage.h"

namespace ftune::cuda {

// y[n] (storage ys) = x[n] (storage xs), rounded to nearest when narrowing.
void convert(const Context& ctx, Storage xs, const void* x, Storage ys, void* y, int64_t n);

// out[n] = x * mask / (1 - p), x and out in storage s; x[0] is element `first` of the masked
// tensor (a chunk of its rows).
void dropout_forward(const Context& ctx, Storage s, uint64_t key, float p, const void* x, void* out, int64_t n,
                     int64_t first = 0);
// dx[n] (storage dxs) += dxd[n] (fp32) * mask / (1 - p).
void dropout_backward_add(const Context& ctx, uint64_t key, float p, const float* dxd, Storage dxs, void* dx,
                          int64_t n, int64_t first = 0);

// p[n] (storage s) = mean + std * N(0, 1), a counter-based draw from (seed, index): the same
// values on every run and device (random weights for benchmarks). `first`: the index of p[0] in
// the whole draw, so a piece of a tensor (a ZeRO-3 shard) gets the values the whole tensor would.
void fill_normal(const Context& ctx, Storage s, void* p, int64_t n, uint64_t seed, float mean, float std,
                 int64_t first = 0);

// acc[n] += x[n], fp32 (ZeRO-3: a reduce-scattered gradient piece into the step's accumulator).
void add_into(const Context& ctx, const float* x, float* acc, int64_t n);

// out[i, :] = table[idx[i], :] for i < n; rows of `width` fp32.
void gather_rows(const Context& ctx, const float* table, const int32_t* idx, int64_t n, int64_t width, float* out);

// *acc (one double on the device) += sum of x[i]^2 over n fp32 elements.
void sum_squares(const Context& ctx, const float* x, int64_t n, double* acc);

// *count (one int on the device) += the elements of x[n] (storage s) that are infinite or NaN
// (fp16's overflow past 65504 in the forward, where loss scaling cannot help).
void count_nonfinite(const Context& ctx, Storage s, const void* x, int64_t n, int* count);

}  // namespace ftune::cuda

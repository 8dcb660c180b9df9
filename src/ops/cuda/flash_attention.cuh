// What the flash attention translation units share: the kernel parameters, the tile shapes of the
// two code paths (sm_80+: cp.async double buffering, m16n8k16; sm_75: synchronous loads, m16n8k8,
// tiles that fit a T4's 64 KB of shared memory) and the launchers flash_attention.cu dispatches to.
#pragma once
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

#include "ops/cuda/context.h"
#include "ops/cuda/mma_tiles.cuh"

namespace ftune::cuda::flash {

using mma_tiles::bf16;
using mma_tiles::fp16;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// E: the storage element, bf16 or fp16.
template <typename E>
struct Args {
  const E *q, *k, *v, *out, *dout;
  const int32_t* doc;
  E *o, *dq, *dk, *dv;
  float *lse, *delta, *dq_acc;
  int* sem;  // deterministic backward: [B, H, nqb] counters of the key blocks done with each query block
  int T, H, KV, nqb;
  float scale, c;  // c = scale * log2(e): scores in log2 units
};

// Forward: CTA = (head, batch, query block of kBr); warp w owns kMT m-tiles (16 rows each). The
// Turing tiles keep one K/V stage (synchronous loads gain nothing from a second) and half the
// query rows, so that d = 128 fits in 64 KB.
template <int D, bool kTuring>
struct Fwd {
  static constexpr int kWarps = 4, kMT = kTuring ? 1 : 2, kRows = 16 * kMT, kBr = kWarps * kRows, kBc = 64;
  static constexpr int kStages = kTuring ? 1 : 2, kThreads = 32 * kWarps, kMinBlocks = 2;
  static constexpr size_t kSmem = (size_t(kBr) * D + 2 * kStages * size_t(kBc) * D) * 2 + kStages * kBc * 4 + 16;
};

// Backward: CTA = (kv head, batch, key block of kBc); warp w owns keys 16w..16w+15 of the block. dQ
// of a query block is split over the warps as kQT m-tiles times kDS slices of D / kDS dims.
template <int D, bool kTuring>
struct Bwd {
  static constexpr int kWarps = kTuring ? 4 : 8, kBc = 16 * kWarps, kBr = kTuring ? 32 : 64;
  static constexpr int kStages = kTuring ? 1 : 2, kThreads = 32 * kWarps;
  static constexpr int kQT = kBr / 16, kDS = kWarps / kQT, kDq = D / kDS;
  static_assert(kWarps % kQT == 0 && (kQT & (kQT - 1)) == 0 && kDq % 16 == 0);
  static constexpr size_t kSmem =
      (2 * size_t(kBc) * D + 2 * kStages * size_t(kBr) * D + size_t(kBc) * kBr) * 2 + 3 * kStages * kBr * 4 + 16;
};

// Documents of a tile: [min, max] of ids[0..n), n >= 0, reduced over the warp (lanes stride 32).
struct DocRange {
  int lo = INT_MAX, hi = INT_MIN;
  __device__ void reduce() { lo = mma_tiles::warp_min(lo), hi = mma_tiles::warp_max(hi); }
  __device__ bool disjoint(const DocRange& o) const { return hi < o.lo || lo > o.hi; }
  __device__ bool one_same(const DocRange& o) const { return lo == hi && o.lo == o.hi && lo == o.lo; }
};

// Launchers (flash_attention_fwd.cu, flash_attention_bwd.cu), instantiated for <bf16, false>,
// <fp16, false> and <fp16, true>; d is 64 or 128, batch and p.T non-zero.
template <typename E, bool kTuring>
void launch_forward(const Context& ctx, const Args<E>& p, int64_t batch, int64_t d, bool doc);
template <typename E, bool kTuring>
void launch_backward(const Context& ctx, const Args<E>& p, int64_t batch, int64_t d, bool doc);
// The attributes of the backward kernel of head_dim d: which code the device's image of it was built
// from (the forward is built alongside it from the same source and arch list).
template <typename E, bool kTuring>
cudaError_t kernel_attributes(cudaFuncAttributes* attr, int64_t d);

}  // namespace ftune::cuda::flash

// Embedding gather: one block per token, threads over the row. Embedding backward: one block per
// (unique id, column tile), each thread owning one column (or four) and adding the id's tokens'
// gradient rows in position order, so no two threads ever write the same element.
#include <algorithm>
#include <cstdint>

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/embedding.h"
#include "ops/cuda/storage.cuh"

namespace ftune::cuda {

namespace {
template <typename T>
__global__ void embedding_kernel(const T* table, const int32_t* ids, int64_t dim, int64_t vocab, T* out) {
  int64_t id = ids[blockIdx.x];
  id = id < 0 ? 0 : (id >= vocab ? vocab - 1 : id);
  const T* src = table + id * dim;
  T* dst = out + blockIdx.x * dim;
  for (int64_t c = threadIdx.x; c < dim; c += blockDim.x) dst[c] = src[c];
}

__device__ __forceinline__ void add4(float4& a, const float4 b) { a.x += b.x, a.y += b.y, a.z += b.z, a.w += b.w; }
__device__ __forceinline__ void add4(float& a, const float b) { a += b; }

// V = float4 (dim % 4 == 0, 16-byte aligned rows) or float; cols = dim / (elements of V).
template <typename V>
__global__ void embedding_backward_kernel(const int32_t* __restrict__ unique_ids, const int32_t* __restrict__ offsets,
                                          const int32_t* __restrict__ tokens, const V* __restrict__ dx, int64_t cols,
                                          V* __restrict__ dtable) {
  const int64_t c = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  const int64_t u = blockIdx.x;
  const int32_t b = offsets[u], e = offsets[u + 1];
  V* dst = dtable + static_cast<int64_t>(unique_ids[u]) * cols + c;
  V acc = *dst;  // start from the row's value and add in token order: the CPU twin's exact sums
#pragma unroll 4
  for (int32_t k = b; k < e; ++k) add4(acc, dx[static_cast<int64_t>(tokens[k]) * cols + c]);
  *dst = acc;
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }
}  // namespace

void embedding_forward(const Context& ctx, Storage s, const void* table, const int32_t* ids, int64_t n, int64_t dim,
                       int64_t vocab, void* out) {
  FT_ASSERT(n >= 0 && dim > 0 && vocab > 0);
  if (n == 0) return;
  dispatch(s, [&](auto* t) {
    using T = std::remove_pointer_t<decltype(t)>;
    embedding_kernel<<<static_cast<unsigned>(n), 256, 0, ctx.stream()>>>(static_cast<const T*>(table), ids, dim, vocab,
                                                                          static_cast<T*>(out));
  });
  FT_CUDA_LAUNCH();
}

EmbeddingGradIndex embedding_grad_index(const int32_t* ids, int64_t n) {
  FT_ASSERT(n >= 0 && n <= INT32_MAX);
  // Sort (id, position) keys: ids ascending, and within an id the positions ascending.
  std::vector<uint64_t> keys(static_cast<size_t>(n));
  for (int64_t t = 0; t < n; ++t) {
    if (ids[t] < 0) fail("embedding backward: token id {} at position {} is negative", ids[t], t);
    keys[t] = static_cast<uint64_t>(ids[t]) << 32 | static_cast<uint64_t>(t);
  }
  std::sort(keys.begin(), keys.end());
  EmbeddingGradIndex ix;
  ix.tokens.resize(static_cast<size_t>(n));
  ix.offsets.push_back(0);
  for (int64_t k = 0; k < n; ++k) {
    const auto id = static_cast<int32_t>(keys[k] >> 32);
    if (k == 0 || id != ix.unique_ids.back()) {  // a new id starts here
      if (k > 0) ix.offsets.push_back(static_cast<int32_t>(k));
      ix.unique_ids.push_back(id);
    }
    ix.tokens[k] = static_cast<int32_t>(keys[k] & 0xFFFFFFFFu);
  }
  if (n > 0) ix.offsets.push_back(static_cast<int32_t>(n));
  return ix;
}

void embedding_backward(const Context& ctx, const int32_t* unique_ids, const int32_t* offsets, const int32_t* tokens,
                        int64_t n_unique, const float* dx, int64_t dim, float* dtable) {
  FT_ASSERT(n_unique >= 0 && n_unique <= INT32_MAX && dim > 0);
  if (n_unique == 0) return;
  const bool vec = dim % 4 == 0 && aligned16(dx) && aligned16(dtable);
  const int64_t cols = vec ? dim / 4 : dim;
  // Threads cover the columns (a warp at least, 256 at most); more column tiles on grid.y.
  const int64_t threads = std::min<int64_t>(256, (cols + 31) / 32 * 32);
  const int64_t tiles = (cols + threads - 1) / threads;
  FT_ASSERT(tiles <= 65535);
  const dim3 grid(static_cast<unsigned>(n_unique), static_cast<unsigned>(tiles));
  if (vec)
    embedding_backward_kernel<<<grid, static_cast<unsigned>(threads), 0, ctx.stream()>>>(
        unique_ids, offsets, tokens, reinterpret_cast<const float4*>(dx), cols, reinterpret_cast<float4*>(dtable));
  else
    embedding_backward_kernel<<<grid, static_cast<unsigned>(threads), 0, ctx.stream()>>>(unique_ids, offsets, tokens,
                                                                                          dx, cols, dtable);
  FT_CUDA_LAUNCH();
}

}  // namespace ftune::cuda

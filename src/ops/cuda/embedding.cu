// Embedding gather: one block per token, threads over the row.
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

}  // namespace ftune::cuda

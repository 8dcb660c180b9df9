// Softmax cross-entropy per row (one block a row, online max/sum in fp32), and the chunked
// lm_head driver around it.
#include <cfloat>

#include "ops/cuda/cross_entropy.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/gemm.h"
#include "ops/cuda/storage.cuh"

namespace ftune::cuda {

namespace {

constexpr int kThreads = 512;

// Merges (max, sum of exp(x - max)) pairs.
__device__ __forceinline__ void combine(float& m, float& s, float om, float os) {
  const float nm = fmaxf(m, om);
  s = (m == -FLT_MAX ? 0.0f : s * __expf(m - nm)) + (om == -FLT_MAX ? 0.0f : os * __expf(om - nm));
  m = nm;
}

template <typename T>
__global__ void cross_entropy_kernel(T* logits, const int32_t* target, int64_t vocab, float scale, float* loss) {
  T* row = logits + blockIdx.x * vocab;
  const int32_t t = target[blockIdx.x];
  if (t < 0) {
    for (int64_t v = threadIdx.x; v < vocab; v += kThreads) st(row, v, 0.0f);
    if (threadIdx.x == 0) loss[blockIdx.x] = 0.0f;
    return;
  }
  float m = -FLT_MAX, s = 0.0f;
  for (int64_t v = threadIdx.x; v < vocab; v += kThreads) combine(m, s, ld(row, v), 1.0f);
  for (int o = 16; o > 0; o >>= 1) combine(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
  __shared__ float sm[kThreads / 32], ss[kThreads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) sm[warp] = m, ss[warp] = s;
  __syncthreads();
  if (warp == 0) {
    m = lane < kThreads / 32 ? sm[lane] : -FLT_MAX;
    s = lane < kThreads / 32 ? ss[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1)
      combine(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
    if (lane == 0) sm[0] = m, ss[0] = s;
  }
  __syncthreads();
  const float lse = sm[0] + logf(ss[0]);
  const float target_logit = ld(row, t);
  __syncthreads();  // everyone has read the target logit before it is overwritten
  if (threadIdx.x == 0) loss[blockIdx.x] = lse - target_logit;
  for (int64_t v = threadIdx.x; v < vocab; v += kThreads) {
    const float p = __expf(ld(row, v) - lse);
    st(row, v, (p - (v == t ? 1.0f : 0.0f)) * scale);
  }
}

}  // namespace

void cross_entropy_rows(const Context& ctx, Storage s, void* logits, const int32_t* target, int64_t rows,
                        int64_t vocab, float grad_scale, float* loss) {
  FT_ASSERT(rows >= 0 && vocab > 0);
  if (rows == 0) return;
  dispatch(s, [&](auto* t) {
    using T = std::remove_pointer_t<decltype(t)>;
    cross_entropy_kernel<<<static_cast<unsigned>(rows), kThreads, 0, ctx.stream()>>>(static_cast<T*>(logits), target,
                                                                                      vocab, grad_scale, loss);
  });
  FT_CUDA_LAUNCH();
}

void lm_head_cross_entropy(const Context& ctx, Storage s, const void* h, const void* w, const int32_t* target,
                           int64_t rows, int64_t dim, int64_t vocab, float grad_scale, float* loss, void* dh,
                           void* scratch, int64_t chunk, float* dw) {
  FT_ASSERT(chunk > 0);
  const size_t esz = static_cast<size_t>(storage_bytes(s));
  for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
    const int64_t n = rows - r0 < chunk ? rows - r0 : chunk;
    const void* hc = static_cast<const char*>(h) + r0 * dim * esz;
    // logits[n, vocab] = h_chunk @ w^T
    gemm(ctx, n, vocab, dim, 1.0f, {hc, s, false}, {w, s, true}, 0.0f, scratch, s);
    cross_entropy_rows(ctx, s, scratch, target + r0, n, vocab, grad_scale, loss + r0);
    // dw[vocab, dim] += dlogits^T @ h_chunk
    if (dw) gemm(ctx, vocab, dim, n, 1.0f, {scratch, s, true}, {hc, s, false}, 1.0f, dw, Storage::F32);
    // dh[n, dim] = dlogits @ w
    if (dh)
      gemm(ctx, n, dim, vocab, 1.0f, {scratch, s, false}, {w, s, false}, 0.0f, static_cast<char*>(dh) + r0 * dim * esz,
           s);
  }
}

}  // namespace ftune::cuda

// Decode attention: one block per (row, head, key chunk) of 4 warps; each warp takes every fourth
// key of the chunk, its lanes holding d/32 consecutive elements of the query, and keeps an online
// softmax (running max, sum and weighted values). The block's warps merge in shared memory and
// write the chunk's (max, sum, values); a second kernel merges the chunks of each (row, head).
#include <cfloat>
#include <cstdint>
#include <type_traits>

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/decode_attention.h"
#include "ops/cuda/storage.cuh"

namespace ftune::cuda {

namespace {

constexpr int kWarps = 4;
constexpr int kMaxPer = 8;  // head_dim / 32 at most
constexpr int kKeys = 4;    // keys a warp loads at once

template <typename T>
__global__ void kv_write_kernel(DecodeRows r, int64_t layer, int64_t kv_dim, const T* k, const T* v) {
  const int64_t row = blockIdx.x;
  const int64_t at = (layer * r.cap[row] + r.pos[row]) * kv_dim;
  T* ck = static_cast<T*>(r.k[row]) + at;
  T* cv = static_cast<T*>(r.v[row]) + at;
  const T* kr = k + row * kv_dim;
  const T* vr = v + row * kv_dim;
  const int64_t bytes = kv_dim * static_cast<int64_t>(sizeof(T));
  const bool aligned = bytes % 16 == 0 && (reinterpret_cast<uintptr_t>(ck) | reinterpret_cast<uintptr_t>(cv) |
                                           reinterpret_cast<uintptr_t>(kr) | reinterpret_cast<uintptr_t>(vr)) % 16 == 0;
  if (aligned) {  // 16 bytes a thread
    for (int64_t i = threadIdx.x; i < bytes / 16; i += blockDim.x) {
      reinterpret_cast<uint4*>(ck)[i] = reinterpret_cast<const uint4*>(kr)[i];
      reinterpret_cast<uint4*>(cv)[i] = reinterpret_cast<const uint4*>(vr)[i];
    }
    return;
  }
  for (int64_t i = threadIdx.x; i < kv_dim; i += blockDim.x) ck[i] = kr[i], cv[i] = vr[i];
}

// scratch layout per (row, head, chunk): [d] weighted values, then max, then sum. Lane j holds
// elements [j * PER, j * PER + PER) of the head (those below d).
template <typename T, int PER>
__global__ void __launch_bounds__(kWarps * 32) decode_chunk_kernel(DecodeRows r, int64_t layer, int heads, int kv_heads,
                                                                   int d, float scale, const T* q, float* scratch,
                                                                   int chunks) {
  const int row = blockIdx.z, h = blockIdx.y, c = blockIdx.x;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int pos = r.pos[row];
  float* part = scratch + ((static_cast<int64_t>(row) * heads + h) * chunks + c) * (d + 2);
  const int first = c * static_cast<int>(kDecodeChunk);
  if (first > pos) {  // a chunk past this row's context: empty
    if (threadIdx.x == 0) part[d] = -FLT_MAX, part[d + 1] = 0.0f;
    return;
  }
  const int last = min(pos, first + static_cast<int>(kDecodeChunk) - 1);
  const int g = h / (heads / kv_heads);
  const int64_t kv_dim = static_cast<int64_t>(kv_heads) * d;
  const int e0 = lane * PER;
  const int own = max(0, min(PER, d - e0));  // elements this lane holds
  float qv[PER];
  const T* qh = q + (static_cast<int64_t>(row) * heads + h) * d + e0;
#pragma unroll
  for (int i = 0; i < PER; ++i) qv[i] = i < own ? ld(qh, i) * scale : 0.0f;
  const T* kl = static_cast<const T*>(r.k[row]) + layer * r.cap[row] * kv_dim + g * d + e0;
  const T* vl = static_cast<const T*>(r.v[row]) + layer * r.cap[row] * kv_dim + g * d + e0;
  float m = -FLT_MAX, l = 0.0f, acc[PER];
#pragma unroll
  for (int i = 0; i < PER; ++i) acc[i] = 0.0f;
  // Keys in groups of kKeys per warp, their loads issued together (independent, so in flight at
  // once), then their dot products reduced and folded into the running softmax one by one.
  for (int t0 = first + warp; t0 <= last; t0 += kWarps * kKeys) {
    float kf[kKeys][PER], vf[kKeys][PER];
#pragma unroll
    for (int u = 0; u < kKeys; ++u) {
      const int t = t0 + u * kWarps;
      const T* kt = kl + static_cast<int64_t>(t <= last ? t : last) * kv_dim;
      const T* vt = vl + static_cast<int64_t>(t <= last ? t : last) * kv_dim;
#pragma unroll
      for (int i = 0; i < PER; ++i) kf[u][i] = i < own ? ld(kt, i) : 0.0f, vf[u][i] = i < own ? ld(vt, i) : 0.0f;
    }
    float sc[kKeys];
#pragma unroll
    for (int u = 0; u < kKeys; ++u) {
      float s = 0.0f;
#pragma unroll
      for (int i = 0; i < PER; ++i) s += qv[i] * kf[u][i];
      sc[u] = s;
    }
#pragma unroll
    for (int o = 16; o > 0; o /= 2)
#pragma unroll
      for (int u = 0; u < kKeys; ++u) sc[u] += __shfl_xor_sync(0xffffffffu, sc[u], o);
#pragma unroll
    for (int u = 0; u < kKeys; ++u) {
      if (t0 + u * kWarps > last) break;
      const float mn = fmaxf(m, sc[u]);
      const float corr = expf(m - mn), p = expf(sc[u] - mn);
      l = l * corr + p;
#pragma unroll
      for (int i = 0; i < PER; ++i) acc[i] = acc[i] * corr + p * vf[u][i];
      m = mn;
    }
  }
  __shared__ float sm[kWarps], sl[kWarps], sacc[kWarps][PER * 32];
  if (lane == 0) sm[warp] = m, sl[warp] = l;
#pragma unroll
  for (int i = 0; i < PER; ++i) sacc[warp][e0 + i] = acc[i];
  __syncthreads();
  float M = -FLT_MAX;
  for (int w = 0; w < kWarps; ++w)
    if (sl[w] > 0.0f) M = fmaxf(M, sm[w]);
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    float v = 0.0f;
    for (int w = 0; w < kWarps; ++w)
      if (sl[w] > 0.0f) v += sacc[w][i] * expf(sm[w] - M);
    part[i] = v;
  }
  if (threadIdx.x == 0) {
    float L = 0.0f;
    for (int w = 0; w < kWarps; ++w)
      if (sl[w] > 0.0f) L += sl[w] * expf(sm[w] - M);
    part[d] = M, part[d + 1] = L;
  }
}

template <typename T>
__global__ void decode_merge_kernel(int heads, int d, int chunks, const float* scratch, T* out) {
  const int row = blockIdx.y, h = blockIdx.x;
  const float* base = scratch + (static_cast<int64_t>(row) * heads + h) * chunks * (d + 2);
  float M = -FLT_MAX;
  for (int c = 0; c < chunks; ++c)
    if (base[c * (d + 2) + d + 1] > 0.0f) M = fmaxf(M, base[c * (d + 2) + d]);
  float L = 0.0f;
  for (int c = 0; c < chunks; ++c) {
    const float* p = base + c * (d + 2);
    if (p[d + 1] > 0.0f) L += p[d + 1] * expf(p[d] - M);
  }
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    float v = 0.0f;
    for (int c = 0; c < chunks; ++c) {
      const float* p = base + c * (d + 2);
      if (p[d + 1] > 0.0f) v += p[i] * expf(p[d] - M);
    }
    st(out, (static_cast<int64_t>(row) * heads + h) * d + i, v / L);
  }
}

__global__ void gather_bytes_kernel(const uint32_t* in, const int32_t* idx, int64_t words, uint32_t* out) {
  const int64_t i = blockIdx.x;
  for (int64_t j = threadIdx.x; j < words; j += blockDim.x) out[i * words + j] = in[idx[i] * words + j];
}

}  // namespace

void kv_cache_write(const Context& ctx, Storage s, const DecodeRows& r, int64_t layer, int64_t kv_dim, const void* k,
                    const void* v) {
  if (r.rows == 0) return;
  dispatch(s, [&](auto* t) {
    using T = std::remove_pointer_t<decltype(t)>;
    kv_write_kernel<<<static_cast<unsigned>(r.rows), 256, 0, ctx.stream()>>>(
        r, layer, kv_dim, static_cast<const T*>(k), static_cast<const T*>(v));
  });
  FT_CUDA_LAUNCH();
}

int64_t decode_attention_scratch_floats(int64_t rows, int64_t heads, int64_t head_dim, int32_t max_pos) {
  const int64_t chunks = (max_pos + kDecodeChunk) / kDecodeChunk;
  return rows * heads * chunks * (head_dim + 2);
}

void decode_attention(const Context& ctx, Storage s, const DecodeRows& r, int64_t layer, int64_t heads,
                      int64_t kv_heads, int64_t head_dim, float scale, const void* q, void* out, float* scratch) {
  FT_ASSERT(head_dim > 0 && head_dim <= 32 * kMaxPer && heads % kv_heads == 0);
  FT_ASSERT(r.rows < 65536);
  if (r.rows == 0) return;
  const int chunks = static_cast<int>((r.max_pos + kDecodeChunk) / kDecodeChunk);
  const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(heads), static_cast<unsigned>(r.rows));
  dispatch(s, [&](auto* t) {
    using T = std::remove_pointer_t<decltype(t)>;
    const T* qq = static_cast<const T*>(q);
    const int H = static_cast<int>(heads), KH = static_cast<int>(kv_heads);
    const int D = static_cast<int>(head_dim);
    switch ((head_dim + 31) / 32) {
#define FT_DECODE_CASE(P)                                                                                   \
  case P:                                                                                                   \
    decode_chunk_kernel<T, P><<<grid, kWarps * 32, 0, ctx.stream()>>>(r, layer, H, KH, D, scale, qq, \
                                                                       scratch, chunks);                  \
    break;
      FT_DECODE_CASE(1)
      FT_DECODE_CASE(2)
      FT_DECODE_CASE(3)
      FT_DECODE_CASE(4)
      FT_DECODE_CASE(5)
      FT_DECODE_CASE(6)
      FT_DECODE_CASE(7)
      FT_DECODE_CASE(8)
#undef FT_DECODE_CASE
    }
    FT_CUDA_LAUNCH();
    decode_merge_kernel<<<dim3(static_cast<unsigned>(heads), static_cast<unsigned>(r.rows)),
                          static_cast<unsigned>(std::min<int64_t>(head_dim, 256)), 0, ctx.stream()>>>(
        H, static_cast<int>(head_dim), chunks, scratch, static_cast<T*>(out));
  });
  FT_CUDA_LAUNCH();
}

void gather_row_bytes(const Context& ctx, const void* in, const int32_t* idx, int64_t n, int64_t row_bytes, void* out) {
  FT_ASSERT(row_bytes % 4 == 0);
  if (n == 0) return;
  gather_bytes_kernel<<<static_cast<unsigned>(n), 256, 0, ctx.stream()>>>(
      static_cast<const uint32_t*>(in), idx, row_bytes / 4, static_cast<uint32_t*>(out));
  FT_CUDA_LAUNCH();
}

}  // namespace ftune::cuda

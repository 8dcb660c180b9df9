// Attention kernels, one warp per query row (forward, dq) or per key row (dk, dv); each lane
// holds head_dim / 32 elements, dot products reduce across the warp.
#include <cfloat>

#include "ops/cuda/attention.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/storage.cuh"

namespace ftune::cuda {

namespace {

constexpr int kWarps = 4;  // rows per block
constexpr int kMaxPer = 8;  // head_dim <= 32 * 8

__device__ __forceinline__ float warp_sum(float x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// Lane `lane` holds elements lane, lane + 32, ... of a row of d; lanes past d hold zeros.
template <typename T>
__device__ __forceinline__ void load_row(const T* p, int per, int lane, int64_t d, float* r) {
  for (int c = 0; c < per; ++c) r[c] = c * 32 + lane < d ? ld(p, c * 32 + lane) : 0.0f;
}

template <typename T>
__device__ __forceinline__ float dot_row(const T* p, int per, int lane, int64_t d, const float* r) {
  float s = 0.0f;
  for (int c = 0; c < per; ++c)
    if (c * 32 + lane < d) s += r[c] * ld(p, c * 32 + lane);
  return warp_sum(s);
}

template <typename T>
__device__ __forceinline__ float elem(const T* p, int c, int lane, int64_t d) {
  return c * 32 + lane < d ? ld(p, c * 32 + lane) : 0.0f;
}

template <typename T>
__device__ __forceinline__ void store_row(T* p, int per, int lane, int64_t d, const float* r, float mul = 1.0f) {
  for (int c = 0; c < per; ++c)
    if (c * 32 + lane < d) st(p, c * 32 + lane, r[c] * mul);
}

// Row pointers: token t of batch b, head h.
struct Rows {
  int64_t T, H, KV, d;
  __device__ int64_t q(int64_t b, int64_t t, int64_t h) const { return ((b * T + t) * H + h) * d; }
  __device__ int64_t kv(int64_t b, int64_t t, int64_t h) const { return ((b * T + t) * KV + h) * d; }
};

template <typename T>
__global__ void forward_kernel(AttnShape a, const T* q, const T* k, const T* v, const int32_t* doc, T* out,
                               float* lse) {
  const int lane = threadIdx.x % 32;
  const int64_t i = blockIdx.x * kWarps + threadIdx.x / 32;
  const int64_t h = blockIdx.y, b = blockIdx.z, kh = h / (a.heads / a.kv_heads);
  if (i >= a.seq) return;
  const Rows R{a.seq, a.heads, a.kv_heads, a.head_dim};
  const int per = static_cast<int>((a.head_dim + 31) / 32);
  const int64_t d = a.head_dim;
  float qr[kMaxPer], acc[kMaxPer] = {};
  load_row(q + R.q(b, i, h), per, lane, d, qr);
  const int32_t di = doc ? doc[b * a.seq + i] : 0;
  float m = -FLT_MAX, l = 0.0f;
  for (int64_t j = 0; j <= i; ++j) {
    if (doc && doc[b * a.seq + j] != di) continue;
    const float s = dot_row(k + R.kv(b, j, kh), per, lane, d, qr) * a.scale;
    const float nm = fmaxf(m, s);
    const float corr = __expf(m - nm), p = __expf(s - nm);
    l = l * corr + p;
    const T* vr = v + R.kv(b, j, kh);
    for (int c = 0; c < per; ++c) acc[c] = acc[c] * corr + p * elem(vr, c, lane, d);
    m = nm;
  }
  store_row(out + R.q(b, i, h), per, lane, d, acc, 1.0f / l);
  if (lane == 0) lse[(b * a.heads + h) * a.seq + i] = m + logf(l);
}

// delta_i = dO_i . O_i, the row term of the softmax backward.
template <typename T>
__global__ void delta_kernel(AttnShape a, const T* out, const T* dout, float* delta) {
  const int lane = threadIdx.x % 32;
  const int64_t i = blockIdx.x * kWarps + threadIdx.x / 32;
  const int64_t h = blockIdx.y, b = blockIdx.z;
  if (i >= a.seq) return;
  const Rows R{a.seq, a.heads, a.kv_heads, a.head_dim};
  const int per = static_cast<int>((a.head_dim + 31) / 32);
  const int64_t d = a.head_dim;
  float r[kMaxPer];
  load_row(dout + R.q(b, i, h), per, lane, d, r);
  const float s = dot_row(out + R.q(b, i, h), per, lane, d, r);
  if (lane == 0) delta[(b * a.heads + h) * a.seq + i] = s;
}

template <typename T>
__global__ void dq_kernel(AttnShape a, const T* q, const T* k, const T* v, const int32_t* doc, const float* lse,
                          const float* delta, const T* dout, T* dq) {
  const int lane = threadIdx.x % 32;
  const int64_t i = blockIdx.x * kWarps + threadIdx.x / 32;
  const int64_t h = blockIdx.y, b = blockIdx.z, kh = h / (a.heads / a.kv_heads);
  if (i >= a.seq) return;
  const Rows R{a.seq, a.heads, a.kv_heads, a.head_dim};
  const int per = static_cast<int>((a.head_dim + 31) / 32);
  const int64_t d = a.head_dim;
  float qr[kMaxPer], dor[kMaxPer], acc[kMaxPer] = {};
  load_row(q + R.q(b, i, h), per, lane, d, qr);
  load_row(dout + R.q(b, i, h), per, lane, d, dor);
  const int64_t row = (b * a.heads + h) * a.seq + i;
  const float L = lse[row], D = delta[row];
  const int32_t di = doc ? doc[b * a.seq + i] : 0;
  for (int64_t j = 0; j <= i; ++j) {
    if (doc && doc[b * a.seq + j] != di) continue;
    const T* kr = k + R.kv(b, j, kh);
    const float p = __expf(dot_row(kr, per, lane, d, qr) * a.scale - L);
    const float ds = p * (dot_row(v + R.kv(b, j, kh), per, lane, d, dor) - D) * a.scale;
    for (int c = 0; c < per; ++c) acc[c] += ds * elem(kr, c, lane, d);
  }
  store_row(dq + R.q(b, i, h), per, lane, d, acc);
}

// One warp per key row j of kv head kh: sums over the query heads of its group and rows i >= j.
template <typename T>
__global__ void dkv_kernel(AttnShape a, const T* q, const T* k, const T* v, const int32_t* doc, const float* lse,
                           const float* delta, const T* dout, T* dk, T* dv) {
  const int lane = threadIdx.x % 32;
  const int64_t j = blockIdx.x * kWarps + threadIdx.x / 32;
  const int64_t kh = blockIdx.y, b = blockIdx.z, group = a.heads / a.kv_heads;
  if (j >= a.seq) return;
  const Rows R{a.seq, a.heads, a.kv_heads, a.head_dim};
  const int per = static_cast<int>((a.head_dim + 31) / 32);
  const int64_t d = a.head_dim;
  float kr[kMaxPer], vr[kMaxPer], dka[kMaxPer] = {}, dva[kMaxPer] = {};
  load_row(k + R.kv(b, j, kh), per, lane, d, kr);
  load_row(v + R.kv(b, j, kh), per, lane, d, vr);
  const int32_t dj = doc ? doc[b * a.seq + j] : 0;
  for (int64_t h = kh * group; h < (kh + 1) * group; ++h) {
    for (int64_t i = j; i < a.seq; ++i) {
      if (doc && doc[b * a.seq + i] != dj) continue;
      const int64_t row = (b * a.heads + h) * a.seq + i;
      const T* qr = q + R.q(b, i, h);
      const T* dor = dout + R.q(b, i, h);
      const float p = __expf(dot_row(qr, per, lane, d, kr) * a.scale - lse[row]);
      const float ds = p * (dot_row(dor, per, lane, d, vr) - delta[row]) * a.scale;
      for (int c = 0; c < per; ++c) {
        dva[c] += p * elem(dor, c, lane, d);
        dka[c] += ds * elem(qr, c, lane, d);
      }
    }
  }
  store_row(dk + R.kv(b, j, kh), per, lane, d, dka);
  store_row(dv + R.kv(b, j, kh), per, lane, d, dva);
}

void check(const AttnShape& a) {
  FT_ASSERT(a.batch >= 0 && a.seq >= 0 && a.heads > 0 && a.kv_heads > 0 && a.heads % a.kv_heads == 0);
  if (a.head_dim <= 0 || a.head_dim > 32 * kMaxPer)
    fail("attention: head_dim {} is not supported by the GPU kernel (at most {})", a.head_dim, 32 * kMaxPer);
}

dim3 grid(const AttnShape& a, int64_t heads) {
  return dim3(static_cast<unsigned>((a.seq + kWarps - 1) / kWarps), static_cast<unsigned>(heads),
              static_cast<unsigned>(a.batch));
}

template <typename T>
void forward_t(const Context& ctx, const AttnShape& a, const void* q, const void* k, const void* v, const int32_t* doc,
               void* out, float* lse) {
  forward_kernel<T><<<grid(a, a.heads), 32 * kWarps, 0, ctx.stream()>>>(
      a, static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), doc, static_cast<T*>(out), lse);
  FT_CUDA_LAUNCH();
}

template <typename T>
void backward_t(const Context& ctx, const AttnShape& a, const void* q, const void* k, const void* v, const int32_t* doc,
                const void* out, const float* lse, const void* dout, void* dq, void* dk, void* dv, float* delta) {
  const T *Q = static_cast<const T*>(q), *K = static_cast<const T*>(k), *V = static_cast<const T*>(v),
          *DO = static_cast<const T*>(dout);
  delta_kernel<T><<<grid(a, a.heads), 32 * kWarps, 0, ctx.stream()>>>(a, static_cast<const T*>(out), DO, delta);
  FT_CUDA_LAUNCH();
  dq_kernel<T><<<grid(a, a.heads), 32 * kWarps, 0, ctx.stream()>>>(a, Q, K, V, doc, lse, delta, DO, static_cast<T*>(dq));
  FT_CUDA_LAUNCH();
  dkv_kernel<T><<<grid(a, a.kv_heads), 32 * kWarps, 0, ctx.stream()>>>(a, Q, K, V, doc, lse, delta, DO,
                                                                      static_cast<T*>(dk), static_cast<T*>(dv));
  FT_CUDA_LAUNCH();
}

}  // namespace

void attention_forward(const Context& ctx, Storage s, const AttnShape& a, const void* q, const void* k, const void* v,
                       const int32_t* doc, void* out, float* lse) {
  check(a);
  if (a.batch == 0 || a.seq == 0) return;
  dispatch(s, [&](auto* t) { forward_t<std::remove_pointer_t<decltype(t)>>(ctx, a, q, k, v, doc, out, lse); });
}

void attention_backward(const Context& ctx, Storage s, const AttnShape& a, const void* q, const void* k,
                        const void* v, const int32_t* doc, const void* out, const float* lse, const void* dout,
                        void* dq, void* dk, void* dv, float* delta) {
  check(a);
  if (a.batch == 0 || a.seq == 0) return;
  dispatch(s, [&](auto* t) {
    backward_t<std::remove_pointer_t<decltype(t)>>(ctx, a, q, k, v, doc, out, lse, dout, dq, dk, dv, delta);
  });
}

}  // namespace ftune::cuda

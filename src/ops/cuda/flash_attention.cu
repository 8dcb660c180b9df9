// FlashAttention-2 forward and backward on mma.sync m16n8k16 bf16 tensor cores: tiles move
// global -> shared with cp.async (double buffered, XOR-swizzled 16-byte chunks so ldmatrix is
// conflict free), scores and softmax stay in fp32 registers, P and dS are rounded to bf16 only
// as mma inputs. Causal and document masks skip whole blocks and mask elements only where a
// block straddles a boundary.
#include <cuda_bf16.h>

#include <climits>
#include <cstdint>

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/flash_attention.h"
#include "ops/cuda/mma_sm80.cuh"
#include "ops/cuda/storage.cuh"

namespace ftune::cuda {

namespace {

using bf16 = __nv_bfloat16;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

using namespace sm80;  // ops/cuda/mma_sm80.cuh

// Documents of a tile: [min, max] of ids[0..n), n >= 0, reduced over the warp (lanes stride 32).
struct DocRange {
  int lo = INT_MAX, hi = INT_MIN;
  __device__ void reduce() { lo = warp_min(lo), hi = warp_max(hi); }
  __device__ bool disjoint(const DocRange& o) const { return hi < o.lo || lo > o.hi; }
  __device__ bool one_same(const DocRange& o) const { return lo == hi && o.lo == o.hi && lo == o.lo; }
};

struct Args {
  const bf16 *q, *k, *v, *out, *dout;
  const int32_t* doc;
  bf16 *o, *dq, *dk, *dv;
  float *lse, *delta, *dq_acc;
  int T, H, KV;
  float scale, c;  // c = scale * log2(e): scores in log2 units
};

// ---------------------------------------------------------------------------------------------
// Forward: CTA = (head, batch, query block of kBr); warp w owns kMT m-tiles (16 rows each).

template <int D>
struct Fwd {
  static constexpr int kWarps = 4, kMT = 2, kRows = 16 * kMT, kBr = kWarps * kRows, kBc = 64;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr size_t kSmem = (size_t(kBr) * D + 4 * kBc * D) * sizeof(bf16) + 2 * kBc * 4 + 16;
};

template <int D, bool kDoc>
__global__ void __launch_bounds__(Fwd<D>::kThreads, 2) fwd_kernel(Args p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using F = Fwd<D>;
  constexpr int kBr = F::kBr, kBc = F::kBc, kMT = F::kMT, kThreads = F::kThreads;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* sQ = reinterpret_cast<bf16*>(smem);  // [kBr, D]
  bf16* sK = sQ + kBr * D;                   // [2][kBc, D]
  bf16* sV = sK + 2 * kBc * D;               // [2][kBc, D]
  int* sKdoc = reinterpret_cast<int*>(sV + 2 * kBc * D);  // [2][kBc]
  int* sMisc = sKdoc + 2 * kBc;                           // [2]

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, tg = lane & 3;
  const int h = blockIdx.x, b = blockIdx.y, qb = gridDim.z - 1 - blockIdx.z;  // longest rows first
  const int kh = h / (p.H / p.KV), T = p.T;
  const int q0 = qb * kBr, q_end = min(T, q0 + kBr);
  const int64_t tok0 = int64_t(b) * T, ldq = int64_t(p.H) * D, ldk = int64_t(p.KV) * D;
  const bf16* gk = p.k + (tok0 * p.KV + kh) * D;  // key row 0 of this batch row, stride ldk
  const bf16* gv = p.v + (tok0 * p.KV + kh) * D;
  const int32_t* doc = kDoc ? p.doc + tok0 : nullptr;  // kDoc: p.doc != nullptr

  // Key blocks [nb_first, nb_last]: causal end; with documents, keys before the first one whose
  // id reaches the smallest query id of the block cannot match any query.
  int nb_first = 0;
  const int nb_last = (q_end - 1) / kBc;
  if (doc) {
    if (tid == 0) sMisc[0] = INT_MAX, sMisc[1] = INT_MAX;
    __syncthreads();
    for (int r = q0 + tid; r < q_end; r += kThreads) atomicMin(&sMisc[0], doc[r]);
    __syncthreads();
    const int qmin = sMisc[0];
    for (int j = tid; j < q_end; j += kThreads)
      if (doc[j] >= qmin) {
        atomicMin(&sMisc[1], j);
        break;
      }
    __syncthreads();
    nb_first = sMisc[1] / kBc;
  }

  auto load_kv = [&](int nb, int stage) {
    const int k0 = nb * kBc;
    load_tile<kBc, D, kThreads>(sK + stage * kBc * D, gk + k0 * ldk, ldk, T - k0, tid);
    load_tile<kBc, D, kThreads>(sV + stage * kBc * D, gv + k0 * ldk, ldk, T - k0, tid);
    if (doc)
      for (int j = tid; j < kBc; j += kThreads) cp_async4(sKdoc + stage * kBc + j, doc + min(k0 + j, T - 1), k0 + j < T);
  };
  load_tile<kBr, D, kThreads>(sQ, p.q + ((tok0 + q0) * p.H + h) * D, ldq, q_end - q0, tid);
  load_kv(nb_first, 0);
  cp_commit();

  // This thread's rows: wr0 + mt * 16 + g + 8 * hf.
  const int wr0 = q0 + warp * F::kRows;
  const bool active = wr0 < T;
  int rdoc[kMT][2] = {};
  DocRange wq;
  if (doc) {
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) rdoc[mt][hf] = doc[min(wr0 + mt * 16 + g + 8 * hf, T - 1)];
    if (wr0 + lane < T && lane < F::kRows) wq.lo = wq.hi = doc[wr0 + lane];
    wq.reduce();
  }

  float o[kMT][D / 8][4] = {};  // [rows, D] accumulators
  float m[kMT][2], l[kMT][2];   // running max (log2 units) and this thread's partial row sum
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) m[mt][0] = m[mt][1] = -INFINITY, l[mt][0] = l[mt][1] = 0.0f;

  const int nblocks = nb_last - nb_first + 1;
  for (int it = 0; it < nblocks; ++it) {
    const int stage = it & 1, k0 = (nb_first + it) * kBc;
    if (it + 1 < nblocks) {
      load_kv(nb_first + it + 1, stage ^ 1);
      cp_commit();
      cp_wait<1>();
    } else {
      cp_wait<0>();
    }
    __syncthreads();
    const bf16* sKs = sK + stage * kBc * D;
    const bf16* sVs = sV + stage * kBc * D;
    const int* kd = sKdoc + stage * kBc;
    bool skip = !active || k0 > wr0 + F::kRows - 1;
    bool masked = k0 + kBc - 1 > wr0;
    if (doc && !skip) {
      DocRange kr;
      for (int j = lane; j < kBc; j += 32)
        if (k0 + j < T) kr.lo = min(kr.lo, kd[j]), kr.hi = max(kr.hi, kd[j]);
      kr.reduce();
      skip = kr.disjoint(wq);
      masked = masked || !kr.one_same(wq);
    }
    if (!skip) {
      // S = Q K^T: [rows, kBc]
      float s[kMT][kBc / 8][4] = {};
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t a[kMT][4];
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) ldsm(a[mt], sQ + swz<D>(warp * F::kRows + mt * 16 + (lane & 15), kk * 16 + (lane >> 4) * 8));
#pragma unroll
        for (int np = 0; np < kBc / 16; ++np) {
          uint32_t bb[4];
          ldsm(bb, sKs + swz<D>(np * 16 + (lane & 7) + (lane >> 4) * 8, kk * 16 + ((lane >> 3) & 1) * 8));
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
            mma(s[mt][2 * np], a[mt], bb[0], bb[1]);
            mma(s[mt][2 * np + 1], a[mt], bb[2], bb[3]);
          }
        }
      }
      if (masked) {
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
          for (int nt = 0; nt < kBc / 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const int row = wr0 + mt * 16 + g + (e >> 1) * 8, jj = nt * 8 + 2 * tg + (e & 1);
              const bool ok = k0 + jj <= row && (!doc || kd[jj] == rdoc[mt][e >> 1]);
              if (!ok) s[mt][nt][e] = -INFINITY;
            }
      }
      // Online softmax per row; a row with nothing unmasked yet keeps m = -inf and p = 0.
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          float mx = -INFINITY;
#pragma unroll
          for (int nt = 0; nt < kBc / 8; ++nt) mx = fmaxf(mx, fmaxf(s[mt][nt][2 * hf], s[mt][nt][2 * hf + 1]));
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
          const float mnew = fmaxf(m[mt][hf], mx * p.c);
          const float base = mnew == -INFINITY ? 0.0f : mnew;
          const float corr = ex2(m[mt][hf] - base);
          m[mt][hf] = mnew;
          float sum = 0.0f;
#pragma unroll
          for (int nt = 0; nt < kBc / 8; ++nt)
#pragma unroll
            for (int e = 2 * hf; e < 2 * hf + 2; ++e) {
              s[mt][nt][e] = ex2(fmaf(s[mt][nt][e], p.c, -base));
              sum += s[mt][nt][e];
            }
          l[mt][hf] = l[mt][hf] * corr + sum;
#pragma unroll
          for (int dn = 0; dn < D / 8; ++dn) o[mt][dn][2 * hf] *= corr, o[mt][dn][2 * hf + 1] *= corr;
        }
      // O += P V: [rows, D]
#pragma unroll
      for (int kk = 0; kk < kBc / 16; ++kk) {
        uint32_t a[kMT][4];
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) c_to_a(a[mt], s[mt][2 * kk], s[mt][2 * kk + 1]);
#pragma unroll
        for (int dp = 0; dp < D / 16; ++dp) {
          uint32_t bb[4];
          ldsm_t(bb, sVs + swz<D>(kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, dp * 16 + (lane >> 4) * 8));
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
            mma(o[mt][2 * dp], a[mt], bb[0], bb[1]);
            mma(o[mt][2 * dp + 1], a[mt], bb[2], bb[3]);
          }
        }
      }
    }
    __syncthreads();  // this stage is refilled by the next iteration's prefetch
  }

#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      float sum = l[mt][hf];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      const int row = wr0 + mt * 16 + g + 8 * hf;
      if (row >= T) continue;
      const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
      bf16* orow = p.o + ((tok0 + row) * p.H + h) * D;
#pragma unroll
      for (int dn = 0; dn < D / 8; ++dn)
        *reinterpret_cast<__nv_bfloat162*>(orow + dn * 8 + 2 * tg) =
            __floats2bfloat162_rn(o[mt][dn][2 * hf] * inv, o[mt][dn][2 * hf + 1] * inv);
      if (tg == 0) p.lse[(int64_t(b) * p.H + h) * T + row] = (m[mt][hf] + __log2f(sum)) * kLn2;
    }
#endif
}

// ---------------------------------------------------------------------------------------------
// Backward. delta_i = dO_i . O_i, one warp per (token, head).

template <int D>
__global__ void delta_kernel(Args p, int64_t rows) {
  const int64_t r = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;  // (b * T + t) * H + h
  const int lane = threadIdx.x & 31;
  if (r >= rows) return;
  const __nv_bfloat162* o = reinterpret_cast<const __nv_bfloat162*>(p.out + r * D);
  const __nv_bfloat162* d = reinterpret_cast<const __nv_bfloat162*>(p.dout + r * D);
  float s = 0.0f;
#pragma unroll
  for (int c = lane; c < D / 2; c += 32) {
    const float2 a = __bfloat1622float2(o[c]), bb = __bfloat1622float2(d[c]);
    s += a.x * bb.x + a.y * bb.y;
  }
  for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
  const int64_t bt = r / p.H, h = r % p.H, b = bt / p.T, t = bt % p.T;
  if (lane == 0) p.delta[(b * p.H + h) * p.T + t] = s;
}

// dq = scale * dq_acc, rounded to bf16; n is a multiple of 4 (head_dim is).
__global__ void dq_convert_kernel(Args p, int64_t n) {
  for (int64_t i = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * 4; i < n; i += int64_t(gridDim.x) * blockDim.x * 4) {
    const float4 a = *reinterpret_cast<const float4*>(p.dq_acc + i);
    __nv_bfloat162* d = reinterpret_cast<__nv_bfloat162*>(p.dq + i);
    d[0] = __floats2bfloat162_rn(a.x * p.scale, a.y * p.scale);
    d[1] = __floats2bfloat162_rn(a.z * p.scale, a.w * p.scale);
  }
}

// CTA = (kv head, batch, key block of kBc); warp w owns keys 16w..16w+15 of the block and keeps
// their dK, dV in registers over every query head of the group and every query block of kBr.
template <int D>
struct Bwd {
  static constexpr int kWarps = 8, kBc = 16 * kWarps, kBr = 64, kThreads = 32 * kWarps;
  static constexpr size_t kSmem = (2 * size_t(kBc) * D + 4 * size_t(kBr) * D + size_t(kBc) * kBr) * sizeof(bf16) +
                                  6 * kBr * 4 + 16;
};

template <int D, bool kDoc>
__global__ void __launch_bounds__(Bwd<D>::kThreads, 1) bwd_kernel(Args p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using B = Bwd<D>;
  constexpr int kBr = B::kBr, kBc = B::kBc, kThreads = B::kThreads;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* sK = reinterpret_cast<bf16*>(smem);  // [kBc, D]
  bf16* sV = sK + kBc * D;                   // [kBc, D]
  bf16* sQ = sV + kBc * D;                   // [2][kBr, D]
  bf16* sdO = sQ + 2 * kBr * D;              // [2][kBr, D]
  bf16* sdS = sdO + 2 * kBr * D;             // [kBc, kBr]: dS^T, keys x queries
  float* sL = reinterpret_cast<float*>(sdS + kBc * kBr);  // [2][kBr] lse
  float* sDl = sL + 2 * kBr;                               // [2][kBr] delta
  int* sQdoc = reinterpret_cast<int*>(sDl + 2 * kBr);      // [2][kBr]
  int* sMisc = sQdoc + 2 * kBr;                            // [3]

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, tg = lane & 3;
  const int kh = blockIdx.x, b = blockIdx.y, k0 = blockIdx.z * kBc;  // first blocks have the most rows
  const int group = p.H / p.KV, T = p.T, k_end = min(T, k0 + kBc);
  const int64_t tok0 = int64_t(b) * T, ldq = int64_t(p.H) * D, ldk = int64_t(p.KV) * D;
  const int32_t* doc = kDoc ? p.doc + tok0 : nullptr;  // kDoc: p.doc != nullptr

  // Query blocks: from the one holding key k0 to the last query whose id is at most the largest
  // key id of the block (later queries have larger ids when ids are non-decreasing).
  int q_last = T - 1;
  if (doc) {
    if (tid == 0) sMisc[0] = INT_MIN, sMisc[1] = -1;
    __syncthreads();
    for (int j = k0 + tid; j < k_end; j += kThreads) atomicMax(&sMisc[0], doc[j]);
    __syncthreads();
    const int kmax = sMisc[0];
    for (int i = T - 1 - tid; i >= k0; i -= kThreads)
      if (doc[i] <= kmax) {
        atomicMax(&sMisc[1], i);
        break;
      }
    __syncthreads();
    q_last = sMisc[1];
  }
  const int qb_first = k0 / kBr, nq = q_last / kBr - qb_first + 1, total = group * nq;

  auto load_q = [&](int it, int stage) {
    const int h = kh * group + it / nq, q0 = (qb_first + it % nq) * kBr;
    const int64_t row0 = ((tok0 + q0) * p.H + h) * D;
    load_tile<kBr, D, kThreads>(sQ + stage * kBr * D, p.q + row0, ldq, T - q0, tid);
    load_tile<kBr, D, kThreads>(sdO + stage * kBr * D, p.dout + row0, ldq, T - q0, tid);
    if (tid < kBr) {
      const int64_t r = (int64_t(b) * p.H + h) * T + min(q0 + tid, T - 1);
      const bool ok = q0 + tid < T;  // zero-filled lse, delta, dO and Q make padding rows inert
      cp_async4(sL + stage * kBr + tid, p.lse + r, ok);
      cp_async4(sDl + stage * kBr + tid, p.delta + r, ok);
      if (doc) cp_async4(sQdoc + stage * kBr + tid, doc + min(q0 + tid, T - 1), ok);
    }
  };
  load_tile<kBc, D, kThreads>(sK, p.k + ((tok0 + k0) * p.KV + kh) * D, ldk, T - k0, tid);
  load_tile<kBc, D, kThreads>(sV, p.v + ((tok0 + k0) * p.KV + kh) * D, ldk, T - k0, tid);
  load_q(0, 0);
  cp_commit();

  // This thread's keys: kw0 + g + 8 * hf of the block.
  const int kw0 = warp * 16;
  const bool active = k0 + kw0 < T;
  int kdoc[2] = {};
  DocRange wk;
  if (doc) {
    kdoc[0] = doc[min(k0 + kw0 + g, T - 1)];
    kdoc[1] = doc[min(k0 + kw0 + g + 8, T - 1)];
    if (lane < 16 && k0 + kw0 + lane < T) wk.lo = wk.hi = doc[k0 + kw0 + lane];
    wk.reduce();
  }

  float dk[D / 8][4] = {}, dv[D / 8][4] = {};  // [16 keys, D]
  const int mq = warp & 3, dh = warp >> 2;      // dQ part of this warp: queries 16mq.., dims dh*D/2..
  for (int it = 0; it < total; ++it) {
    const int stage = it & 1, h = kh * group + it / nq, q0 = (qb_first + it % nq) * kBr;
    if (it + 1 < total) {
      load_q(it + 1, stage ^ 1);
      cp_commit();
      cp_wait<1>();
    } else {
      cp_wait<0>();
    }
    __syncthreads();
    const bf16* sQs = sQ + stage * kBr * D;
    const bf16* sdOs = sdO + stage * kBr * D;
    const float* L = sL + stage * kBr;
    const float* Dl = sDl + stage * kBr;
    const int* qd = sQdoc + stage * kBr;
    bool skip = !active || k0 + kw0 > q0 + kBr - 1;
    bool masked = k0 + kw0 + 15 > q0;
    if (doc && !skip) {
      DocRange qr;
      for (int j = lane; j < kBr; j += 32)
        if (q0 + j < T) qr.lo = min(qr.lo, qd[j]), qr.hi = max(qr.hi, qd[j]);
      qr.reduce();
      skip = qr.disjoint(wk);
      masked = masked || !qr.one_same(wk);
    }
    if (!skip) {
      // S^T = K Q^T: [16 keys, kBr queries]
      float s[kBr / 8][4] = {};
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t a[4];
        ldsm(a, sK + swz<D>(kw0 + (lane & 15), kk * 16 + (lane >> 4) * 8));
#pragma unroll
        for (int np = 0; np < kBr / 16; ++np) {
          uint32_t bb[4];
          ldsm(bb, sQs + swz<D>(np * 16 + (lane & 7) + (lane >> 4) * 8, kk * 16 + ((lane >> 3) & 1) * 8));
          mma(s[2 * np], a, bb[0], bb[1]);
          mma(s[2 * np + 1], a, bb[2], bb[3]);
        }
      }
      // P^T = exp(S^T * scale - lse), zero where masked.
#pragma unroll
      for (int nt = 0; nt < kBr / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int qi = nt * 8 + 2 * tg + (e & 1), key = k0 + kw0 + g + (e >> 1) * 8;
          const bool ok = !masked || (key <= q0 + qi && (!doc || qd[qi] == kdoc[e >> 1]));
          s[nt][e] = ok ? ex2(fmaf(s[nt][e], p.c, -L[qi] * kLog2e)) : 0.0f;
        }
      // dV += P^T dO: [16 keys, D]
#pragma unroll
      for (int kk = 0; kk < kBr / 16; ++kk) {
        uint32_t a[4];
        c_to_a(a, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
        for (int dp = 0; dp < D / 16; ++dp) {
          uint32_t bb[4];
          ldsm_t(bb, sdOs + swz<D>(kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, dp * 16 + (lane >> 4) * 8));
          mma(dv[2 * dp], a, bb[0], bb[1]);
          mma(dv[2 * dp + 1], a, bb[2], bb[3]);
        }
      }
      // dP^T = V dO^T: [16 keys, kBr queries]
      float dpt[kBr / 8][4] = {};
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t a[4];
        ldsm(a, sV + swz<D>(kw0 + (lane & 15), kk * 16 + (lane >> 4) * 8));
#pragma unroll
        for (int np = 0; np < kBr / 16; ++np) {
          uint32_t bb[4];
          ldsm(bb, sdOs + swz<D>(np * 16 + (lane & 7) + (lane >> 4) * 8, kk * 16 + ((lane >> 3) & 1) * 8));
          mma(dpt[2 * np], a, bb[0], bb[1]);
          mma(dpt[2 * np + 1], a, bb[2], bb[3]);
        }
      }
      // dS^T = P^T * (dP^T - delta) (unscaled; scale is applied to dK and dQ at the end), also
      // written to shared memory as bf16 for dQ.
#pragma unroll
      for (int nt = 0; nt < kBr / 8; ++nt) {
        const int qi = nt * 8 + 2 * tg;
        const float d0 = Dl[qi], d1 = Dl[qi + 1];
        s[nt][0] *= dpt[nt][0] - d0;
        s[nt][1] *= dpt[nt][1] - d1;
        s[nt][2] *= dpt[nt][2] - d0;
        s[nt][3] *= dpt[nt][3] - d1;
        *reinterpret_cast<uint32_t*>(sdS + swz<kBr>(kw0 + g, qi)) = pack(s[nt][0], s[nt][1]);
        *reinterpret_cast<uint32_t*>(sdS + swz<kBr>(kw0 + g + 8, qi)) = pack(s[nt][2], s[nt][3]);
      }
      // dK += dS^T Q: [16 keys, D]
#pragma unroll
      for (int kk = 0; kk < kBr / 16; ++kk) {
        uint32_t a[4];
        c_to_a(a, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
        for (int dp = 0; dp < D / 16; ++dp) {
          uint32_t bb[4];
          ldsm_t(bb, sQs + swz<D>(kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, dp * 16 + (lane >> 4) * 8));
          mma(dk[2 * dp], a, bb[0], bb[1]);
          mma(dk[2 * dp + 1], a, bb[2], bb[3]);
        }
      }
    } else {
#pragma unroll
      for (int nt = 0; nt < kBr / 8; ++nt) {
        *reinterpret_cast<uint32_t*>(sdS + swz<kBr>(kw0 + g, nt * 8 + 2 * tg)) = 0u;
        *reinterpret_cast<uint32_t*>(sdS + swz<kBr>(kw0 + g + 8, nt * 8 + 2 * tg)) = 0u;
      }
    }
    // dS complete; the stage just read may now be refilled by the next prefetch.
    if (!__syncthreads_or(!skip)) continue;
    // dQ[16 queries of mq, D/2 dims of dh] += dS K over the kBc keys, added into dq_acc.
    float acc[D / 16][4] = {};
#pragma unroll
    for (int kk = 0; kk < kBc / 16; ++kk) {
      uint32_t a[4];
      ldsm_t(a, sdS + swz<kBr>(kk * 16 + (lane & 7) + (lane >> 4) * 8, mq * 16 + ((lane >> 3) & 1) * 8));
#pragma unroll
      for (int dp = 0; dp < D / 32; ++dp) {
        uint32_t bb[4];
        ldsm_t(bb, sK + swz<D>(kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, dh * (D / 2) + dp * 16 + (lane >> 4) * 8));
        mma(acc[2 * dp], a, bb[0], bb[1]);
        mma(acc[2 * dp + 1], a, bb[2], bb[3]);
      }
    }
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int qrow = q0 + mq * 16 + g + 8 * hf;
      if (qrow >= T) continue;
      float* dst = p.dq_acc + ((tok0 + qrow) * p.H + h) * D + dh * (D / 2) + 2 * tg;
#pragma unroll
      for (int nt = 0; nt < D / 16; ++nt) red_add2(dst + nt * 8, acc[nt][2 * hf], acc[nt][2 * hf + 1]);
    }
  }

#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const int key = k0 + kw0 + g + 8 * hf;
    if (key >= T) continue;
    const int64_t off = ((tok0 + key) * p.KV + kh) * D + 2 * tg;
#pragma unroll
    for (int dn = 0; dn < D / 8; ++dn) {
      *reinterpret_cast<__nv_bfloat162*>(p.dk + off + dn * 8) =
          __floats2bfloat162_rn(dk[dn][2 * hf] * p.scale, dk[dn][2 * hf + 1] * p.scale);
      *reinterpret_cast<__nv_bfloat162*>(p.dv + off + dn * 8) = __floats2bfloat162_rn(dv[dn][2 * hf], dv[dn][2 * hf + 1]);
    }
  }
#endif
}

// ---------------------------------------------------------------------------------------------
// Host side.

Args make_args(const AttnShape& a) {
  Args p{};
  p.T = static_cast<int>(a.seq), p.H = static_cast<int>(a.heads), p.KV = static_cast<int>(a.kv_heads);
  p.scale = a.scale, p.c = a.scale * kLog2e;
  return p;
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

void check(const Context& ctx, const AttnShape& a) {
  if (!flash_attention_supported(ctx, a))
    fail("flash attention: shape (head_dim {}, heads {}/{}) not supported on sm_{}", a.head_dim, a.heads,
         a.kv_heads, ctx.sm_version());
  FT_ASSERT(a.batch >= 0 && a.seq >= 0 && a.seq <= INT_MAX / 2);
  FT_ASSERT(a.batch <= 65535 && (a.seq + 63) / 64 <= 65535);
}

template <int D, bool kDoc>
void forward_d(const Context& ctx, Args p, int64_t batch) {
  using F = Fwd<D>;
  FT_CUDA(cudaFuncSetAttribute(fwd_kernel<D, kDoc>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(F::kSmem)));
  const dim3 grid(p.H, static_cast<unsigned>(batch), (p.T + F::kBr - 1) / F::kBr);
  fwd_kernel<D, kDoc><<<grid, F::kThreads, F::kSmem, ctx.stream()>>>(p);
  FT_CUDA_LAUNCH();
}

template <int D, bool kDoc>
void backward_d(const Context& ctx, Args p, int64_t batch) {
  using B = Bwd<D>;
  const int64_t rows = batch * p.T * p.H, n = rows * D;
  delta_kernel<D><<<static_cast<unsigned>((rows + 7) / 8), 256, 0, ctx.stream()>>>(p, rows);
  FT_CUDA_LAUNCH();
  ctx.zero(p.dq_acc, static_cast<size_t>(n) * sizeof(float));
  FT_CUDA(cudaFuncSetAttribute(bwd_kernel<D, kDoc>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(B::kSmem)));
  const dim3 grid(p.KV, static_cast<unsigned>(batch), (p.T + B::kBc - 1) / B::kBc);
  bwd_kernel<D, kDoc><<<grid, B::kThreads, B::kSmem, ctx.stream()>>>(p);
  FT_CUDA_LAUNCH();
  dq_convert_kernel<<<grid_for(n / 4), 256, 0, ctx.stream()>>>(p, n);
  FT_CUDA_LAUNCH();
}

}  // namespace

bool flash_attention_supported(const Context& ctx, const AttnShape& a) {
  if (ctx.sm_version() < 80 || (a.head_dim != 64 && a.head_dim != 128)) return false;
  if (a.heads <= 0 || a.kv_heads <= 0 || a.heads % a.kv_heads != 0) return false;
  // Kernels compiled for sm_80 or newer: a build with only sm_75 code has empty bodies, and on a
  // newer GPU the driver JIT-compiles its sm_75 PTX, so the image's binary version is the GPU's while
  // its PTX version stays 75.
  cudaFuncAttributes attr{};
  const cudaError_t err = a.head_dim == 64 ? cudaFuncGetAttributes(&attr, bwd_kernel<64, true>)
                                           : cudaFuncGetAttributes(&attr, bwd_kernel<128, true>);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  if (attr.binaryVersion < 80 || attr.ptxVersion < 80) return false;
  int optin = 0;
  FT_CUDA(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, ctx.device()));
  const size_t need = a.head_dim == 64 ? Bwd<64>::kSmem : Bwd<128>::kSmem;
  return static_cast<size_t>(optin) >= need;
}

void flash_attention_forward(const Context& ctx, const AttnShape& a, const void* q, const void* k, const void* v,
                             const int32_t* doc, void* out, float* lse) {
  check(ctx, a);
  if (a.batch == 0 || a.seq == 0) return;
  FT_ASSERT(aligned16(q) && aligned16(k) && aligned16(v) && aligned16(out));
  Args p = make_args(a);
  p.q = static_cast<const bf16*>(q), p.k = static_cast<const bf16*>(k), p.v = static_cast<const bf16*>(v);
  p.doc = doc, p.o = static_cast<bf16*>(out), p.lse = lse;
  if (a.head_dim == 64) doc ? forward_d<64, true>(ctx, p, a.batch) : forward_d<64, false>(ctx, p, a.batch);
  else doc ? forward_d<128, true>(ctx, p, a.batch) : forward_d<128, false>(ctx, p, a.batch);
}

int64_t flash_attention_scratch_floats(const AttnShape& a) { return a.batch * a.seq * a.heads * a.head_dim; }

void flash_attention_backward(const Context& ctx, const AttnShape& a, const void* q, const void* k, const void* v,
                              const int32_t* doc, const void* out, const float* lse, const void* dout, void* dq,
                              void* dk, void* dv, float* delta, float* scratch) {
  check(ctx, a);
  if (a.batch == 0 || a.seq == 0) return;
  FT_ASSERT(aligned16(q) && aligned16(k) && aligned16(v) && aligned16(dout) && aligned16(scratch));
  FT_ASSERT(aligned16(out) && aligned16(dq) && aligned16(dk) && aligned16(dv));
  Args p = make_args(a);
  p.q = static_cast<const bf16*>(q), p.k = static_cast<const bf16*>(k), p.v = static_cast<const bf16*>(v);
  p.out = static_cast<const bf16*>(out), p.dout = static_cast<const bf16*>(dout), p.doc = doc;
  p.dq = static_cast<bf16*>(dq), p.dk = static_cast<bf16*>(dk), p.dv = static_cast<bf16*>(dv);
  p.lse = const_cast<float*>(lse), p.delta = delta, p.dq_acc = scratch;
  if (a.head_dim == 64) doc ? backward_d<64, true>(ctx, p, a.batch) : backward_d<64, false>(ctx, p, a.batch);
  else doc ? backward_d<128, true>(ctx, p, a.batch) : backward_d<128, false>(ctx, p, a.batch);
}

}  // namespace ftune::cuda

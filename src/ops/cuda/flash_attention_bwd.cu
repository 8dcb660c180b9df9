// FlashAttention-2 backward on mma.sync tensor cores, bf16 or fp16 storage: P is recomputed from
// the forward's lse, dK and dV stay in fp32 registers over all query blocks, dQ goes to an fp32
// accumulator by atomic adds; P and dS are rounded to the storage type only as mma inputs.
// Deterministic mode (p.sem set) orders those adds: a counter per (batch, head, query block) says
// how many key blocks are done with it, and key block z adds its share (or passes) only when the
// counter reads z, then counts itself. Key blocks are the grid's slowest dimension, so every block a
// CTA waits for was dispatched before it (in-order dispatch, which FlashAttention-3's
// deterministic backward relies on too) and the lowest unfinished one never waits.
#include <climits>
#include <cstdint>

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/flash_attention.cuh"
#include "ops/cuda/storage.cuh"

namespace ftune::cuda::flash {

namespace {

using namespace mma_tiles;  // ops/cuda/mma_tiles.cuh

__device__ __forceinline__ int load_acquire(const int* p) {
  int v;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// Deterministic mode: the whole CTA waits until `counter` reads `turn`.
__device__ __forceinline__ void wait_turn(const int* counter, int turn) {
  if (threadIdx.x == 0)
    while (load_acquire(counter) != turn) __nanosleep(64);
  __syncthreads();
}

// ... and, after its adds, counts itself: every thread's adds are ordered before the increment.
__device__ __forceinline__ void end_turn(int* counter) {
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) atomicAdd(counter, 1);
}

// delta_i = dO_i . O_i, one warp per (token, head).
template <typename E, int D>
__global__ void delta_kernel(Args<E> p, int64_t rows) {
  const int64_t r = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;  // (b * T + t) * H + h
  const int lane = threadIdx.x & 31;
  if (r >= rows) return;
  const uint32_t* o = reinterpret_cast<const uint32_t*>(p.out + r * D);
  const uint32_t* d = reinterpret_cast<const uint32_t*>(p.dout + r * D);
  float s = 0.0f;
#pragma unroll
  for (int c = lane; c < D / 2; c += 32) {
    const float2 a = unpack<E>(o[c]), bb = unpack<E>(d[c]);
    s += a.x * bb.x + a.y * bb.y;
  }
  for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
  const int64_t bt = r / p.H, h = r % p.H, b = bt / p.T, t = bt % p.T;
  if (lane == 0) p.delta[(b * p.H + h) * p.T + t] = s;
}

// dq = scale * dq_acc, rounded to E; n is a multiple of 4 (head_dim is).
template <typename E>
__global__ void dq_convert_kernel(Args<E> p, int64_t n) {
  for (int64_t i = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * 4; i < n; i += int64_t(gridDim.x) * blockDim.x * 4) {
    const float4 a = *reinterpret_cast<const float4*>(p.dq_acc + i);
    *reinterpret_cast<uint2*>(p.dq + i) = make_uint2(pack<E>(a.x * p.scale, a.y * p.scale), pack<E>(a.z * p.scale, a.w * p.scale));
  }
}

// Warp w keeps dK, dV of its 16 keys in registers over every query head of the group and every
// query block of kBr. kTuring picks the code path as in the forward.
template <typename E, bool kTuring, int D, bool kDoc>
__global__ void __launch_bounds__(Bwd<D, kTuring>::kThreads, 1) bwd_kernel(Args<E> p) {
  if constexpr (arch_has_path<kTuring>()) {
    using B = Bwd<D, kTuring>;
    constexpr int kBr = B::kBr, kBc = B::kBc, kThreads = B::kThreads, kStages = B::kStages, kDq = B::kDq;
    constexpr bool kAsync = !kTuring;
    extern __shared__ __align__(128) unsigned char smem[];
    E* sK = reinterpret_cast<E*>(smem);  // [kBc, D]
    E* sV = sK + kBc * D;                // [kBc, D]
    E* sQ = sV + kBc * D;                // [kStages][kBr, D]
    E* sdO = sQ + kStages * kBr * D;     // [kStages][kBr, D]
    E* sdS = sdO + kStages * kBr * D;    // [kBc, kBr]: dS^T, keys x queries
    float* sL = reinterpret_cast<float*>(sdS + kBc * kBr);  // [kStages][kBr] lse
    float* sDl = sL + kStages * kBr;                         // [kStages][kBr] delta
    int* sQdoc = reinterpret_cast<int*>(sDl + kStages * kBr);  // [kStages][kBr]
    int* sMisc = sQdoc + kStages * kBr;                          // [2]

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
      load_tile<kAsync, kBr, D, kThreads>(sQ + stage * kBr * D, p.q + row0, ldq, T - q0, tid);
      load_tile<kAsync, kBr, D, kThreads>(sdO + stage * kBr * D, p.dout + row0, ldq, T - q0, tid);
      if (tid < kBr) {
        const int64_t r = (int64_t(b) * p.H + h) * T + min(q0 + tid, T - 1);
        const bool ok = q0 + tid < T;  // zero-filled lse, delta, dO and Q make padding rows inert
        copy4<kAsync>(sL + stage * kBr + tid, p.lse + r, ok);
        copy4<kAsync>(sDl + stage * kBr + tid, p.delta + r, ok);
        if (doc) copy4<kAsync>(sQdoc + stage * kBr + tid, doc + min(q0 + tid, T - 1), ok);
      }
    };
    load_tile<kAsync, kBc, D, kThreads>(sK, p.k + ((tok0 + k0) * p.KV + kh) * D, ldk, T - k0, tid);
    load_tile<kAsync, kBc, D, kThreads>(sV, p.v + ((tok0 + k0) * p.KV + kh) * D, ldk, T - k0, tid);
    load_q(0, 0);
    if constexpr (kAsync) cp_commit();

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

    float dk[D / 8][4] = {}, dv[D / 8][4] = {};        // [16 keys, D]
    const int mq = warp & (B::kQT - 1), dh = warp / B::kQT;  // dQ part of this warp: queries 16mq.., dims dh*kDq..
    for (int it = 0; it < total; ++it) {
      const int stage = kStages == 2 ? it & 1 : 0, h = kh * group + it / nq, q0 = (qb_first + it % nq) * kBr;
      if constexpr (kAsync) {
        if (it + 1 < total) {
          load_q(it + 1, stage ^ 1);
          cp_commit();
          cp_wait<1>();
        } else {
          cp_wait<0>();
        }
      }
      __syncthreads();
      const E* sQs = sQ + stage * kBr * D;
      const E* sdOs = sdO + stage * kBr * D;
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
            mma<E, kTuring>(s[2 * np], a, bb[0], bb[1]);
            mma<E, kTuring>(s[2 * np + 1], a, bb[2], bb[3]);
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
          c_to_a<E>(a, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
          for (int dp = 0; dp < D / 16; ++dp) {
            uint32_t bb[4];
            ldsm_t(bb, sdOs + swz<D>(kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, dp * 16 + (lane >> 4) * 8));
            mma<E, kTuring>(dv[2 * dp], a, bb[0], bb[1]);
            mma<E, kTuring>(dv[2 * dp + 1], a, bb[2], bb[3]);
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
            mma<E, kTuring>(dpt[2 * np], a, bb[0], bb[1]);
            mma<E, kTuring>(dpt[2 * np + 1], a, bb[2], bb[3]);
          }
        }
        // dS^T = P^T * (dP^T - delta), also written to shared memory in E for dQ. It stays
        // unscaled (scale is applied to dK and dQ at the end, in fp32), so in fp16 its range is
        // that of P * dP, bounded by |dO| |V|: a dS past 65504 means dK and dQ overflow anyway,
        // and becomes inf that the loss scaler sees; small dS lose bits only below fp16's 2^-14
        // normal range, where they are negligible against the row's larger terms (the loss scale
        // keeps dO, hence dS, well above that).
#pragma unroll
        for (int nt = 0; nt < kBr / 8; ++nt) {
          const int qi = nt * 8 + 2 * tg;
          const float d0 = Dl[qi], d1 = Dl[qi + 1];
          s[nt][0] *= dpt[nt][0] - d0;
          s[nt][1] *= dpt[nt][1] - d1;
          s[nt][2] *= dpt[nt][2] - d0;
          s[nt][3] *= dpt[nt][3] - d1;
          *reinterpret_cast<uint32_t*>(sdS + swz<kBr>(kw0 + g, qi)) = pack<E>(s[nt][0], s[nt][1]);
          *reinterpret_cast<uint32_t*>(sdS + swz<kBr>(kw0 + g + 8, qi)) = pack<E>(s[nt][2], s[nt][3]);
        }
        // dK += dS^T Q: [16 keys, D]
#pragma unroll
        for (int kk = 0; kk < kBr / 16; ++kk) {
          uint32_t a[4];
          c_to_a<E>(a, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
          for (int dp = 0; dp < D / 16; ++dp) {
            uint32_t bb[4];
            ldsm_t(bb, sQs + swz<D>(kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, dp * 16 + (lane >> 4) * 8));
            mma<E, kTuring>(dk[2 * dp], a, bb[0], bb[1]);
            mma<E, kTuring>(dk[2 * dp + 1], a, bb[2], bb[3]);
          }
        }
      } else {
#pragma unroll
        for (int nt = 0; nt < kBr / 8; ++nt) {
          *reinterpret_cast<uint32_t*>(sdS + swz<kBr>(kw0 + g, nt * 8 + 2 * tg)) = 0u;
          *reinterpret_cast<uint32_t*>(sdS + swz<kBr>(kw0 + g + 8, nt * 8 + 2 * tg)) = 0u;
        }
      }
      // dS complete; the stage just read may now be refilled (by the next prefetch, or here).
      const bool any = __syncthreads_or(!skip);
      if constexpr (!kAsync)
        if (it + 1 < total) load_q(it + 1, 0);
      int* turn = p.sem ? p.sem + (int64_t(b) * p.H + h) * p.nqb + q0 / kBr : nullptr;
      if (turn) wait_turn(turn, blockIdx.z);
      if (!any) {
        if (turn) end_turn(turn);
        continue;
      }
      // dQ[16 queries of mq, kDq dims of dh] += dS K over the kBc keys, added into dq_acc.
      float acc[kDq / 8][4] = {};
#pragma unroll
      for (int kk = 0; kk < kBc / 16; ++kk) {
        uint32_t a[4];
        ldsm_t(a, sdS + swz<kBr>(kk * 16 + (lane & 7) + (lane >> 4) * 8, mq * 16 + ((lane >> 3) & 1) * 8));
#pragma unroll
        for (int dp = 0; dp < kDq / 16; ++dp) {
          uint32_t bb[4];
          ldsm_t(bb, sK + swz<D>(kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, dh * kDq + dp * 16 + (lane >> 4) * 8));
          mma<E, kTuring>(acc[2 * dp], a, bb[0], bb[1]);
          mma<E, kTuring>(acc[2 * dp + 1], a, bb[2], bb[3]);
        }
      }
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int qrow = q0 + mq * 16 + g + 8 * hf;
        if (qrow >= T) continue;
        float* dst = p.dq_acc + ((tok0 + qrow) * p.H + h) * D + dh * kDq + 2 * tg;
#pragma unroll
        for (int nt = 0; nt < kDq / 8; ++nt) red_add2(dst + nt * 8, acc[nt][2 * hf], acc[nt][2 * hf + 1]);
      }
      if (turn) end_turn(turn);
    }
    // Deterministic mode: the query blocks after this key block's last one (packed documents end
    // its range early) are passed too, so that the key blocks after it find their turn.
    if (p.sem)
      for (int hh = 0; hh < group; ++hh)
        for (int qb = qb_first + nq; qb < p.nqb; ++qb) {
          int* turn = p.sem + (int64_t(b) * p.H + kh * group + hh) * p.nqb + qb;
          wait_turn(turn, blockIdx.z);
          end_turn(turn);
        }

#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int key = k0 + kw0 + g + 8 * hf;
      if (key >= T) continue;
      const int64_t off = ((tok0 + key) * p.KV + kh) * D + 2 * tg;
#pragma unroll
      for (int dn = 0; dn < D / 8; ++dn) {
        *reinterpret_cast<uint32_t*>(p.dk + off + dn * 8) = pack<E>(dk[dn][2 * hf] * p.scale, dk[dn][2 * hf + 1] * p.scale);
        *reinterpret_cast<uint32_t*>(p.dv + off + dn * 8) = pack<E>(dv[dn][2 * hf], dv[dn][2 * hf + 1]);
      }
    }
  }
}

template <typename E, bool kTuring, int D, bool kDoc>
void backward_d(const Context& ctx, const Args<E>& p, int64_t batch) {
  using B = Bwd<D, kTuring>;
  const int64_t rows = batch * p.T * p.H, n = rows * D;
  delta_kernel<E, D><<<static_cast<unsigned>((rows + 7) / 8), 256, 0, ctx.stream()>>>(p, rows);
  FT_CUDA_LAUNCH();
  ctx.zero(p.dq_acc, static_cast<size_t>(n) * sizeof(float));
  Args<E> q = p;
  q.nqb = (p.T + B::kBr - 1) / B::kBr;
  if (q.sem) ctx.zero(q.sem, static_cast<size_t>(batch * p.H * q.nqb) * sizeof(int));
  auto* kernel = bwd_kernel<E, kTuring, D, kDoc>;
  FT_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(B::kSmem)));
  const dim3 grid(p.KV, static_cast<unsigned>(batch), (p.T + B::kBc - 1) / B::kBc);
  kernel<<<grid, B::kThreads, B::kSmem, ctx.stream()>>>(q);
  FT_CUDA_LAUNCH();
  dq_convert_kernel<E><<<grid_for(n / 4), 256, 0, ctx.stream()>>>(p, n);
  FT_CUDA_LAUNCH();
}

}  // namespace

template <typename E, bool kTuring>
void launch_backward(const Context& ctx, const Args<E>& p, int64_t batch, int64_t d, bool doc) {
  if (d == 64) doc ? backward_d<E, kTuring, 64, true>(ctx, p, batch) : backward_d<E, kTuring, 64, false>(ctx, p, batch);
  else doc ? backward_d<E, kTuring, 128, true>(ctx, p, batch) : backward_d<E, kTuring, 128, false>(ctx, p, batch);
}

template <typename E, bool kTuring>
cudaError_t kernel_attributes(cudaFuncAttributes* attr, int64_t d) {
  return d == 64 ? cudaFuncGetAttributes(attr, bwd_kernel<E, kTuring, 64, true>)
                 : cudaFuncGetAttributes(attr, bwd_kernel<E, kTuring, 128, true>);
}

template void launch_backward<bf16, false>(const Context&, const Args<bf16>&, int64_t, int64_t, bool);
template void launch_backward<fp16, false>(const Context&, const Args<fp16>&, int64_t, int64_t, bool);
template void launch_backward<fp16, true>(const Context&, const Args<fp16>&, int64_t, int64_t, bool);
template cudaError_t kernel_attributes<bf16, false>(cudaFuncAttributes*, int64_t);
template cudaError_t kernel_attributes<fp16, false>(cudaFuncAttributes*, int64_t);
template cudaError_t kernel_attributes<fp16, true>(cudaFuncAttributes*, int64_t);

}  // namespace ftune::cuda::flash

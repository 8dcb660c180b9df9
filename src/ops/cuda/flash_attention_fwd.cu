// FlashAttention-2 forward on mma.sync tensor cores, bf16 or fp16 storage: scores and the online
// softmax stay in fp32 registers, P is rounded to the storage type only as the P.V mma input (P is
// in [0, 1], within either type's range). Causal and document masks skip whole key blocks and mask
// elements only where a block straddles a boundary.
#include <climits>
#include <cstdint>

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/flash_attention.cuh"

namespace ftune::cuda::flash {

namespace {

using namespace mma_tiles;  // ops/cuda/mma_tiles.cuh

// kTuring picks the code path (sm_75 instructions only, whatever the arch compiled for); the body is
// empty in passes whose arch lacks the path's instructions.
template <typename E, bool kTuring, int D, bool kDoc>
__global__ void __launch_bounds__(Fwd<D, kTuring>::kThreads, Fwd<D, kTuring>::kMinBlocks) fwd_kernel(Args<E> p) {
  if constexpr (arch_has_path<kTuring>()) {
    using F = Fwd<D, kTuring>;
    constexpr int kBr = F::kBr, kBc = F::kBc, kMT = F::kMT, kThreads = F::kThreads, kStages = F::kStages;
    constexpr bool kAsync = !kTuring;
    extern __shared__ __align__(128) unsigned char smem[];
    E* sQ = reinterpret_cast<E*>(smem);                            // [kBr, D]
    E* sK = sQ + kBr * D;                                          // [kStages][kBc, D]
    E* sV = sK + kStages * kBc * D;                                // [kStages][kBc, D]
    int* sKdoc = reinterpret_cast<int*>(sV + kStages * kBc * D);  // [kStages][kBc]
    int* sMisc = sKdoc + kStages * kBc;                            // [2]

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, tg = lane & 3;
    const int h = blockIdx.x, b = blockIdx.y, qb = gridDim.z - 1 - blockIdx.z;  // longest rows first
    const int kh = h / (p.H / p.KV), T = p.T;
    const int q0 = qb * kBr, q_end = min(T, q0 + kBr);
    const int64_t tok0 = int64_t(b) * T, ldq = int64_t(p.H) * D, ldk = int64_t(p.KV) * D;
    const E* gk = p.k + (tok0 * p.KV + kh) * D;  // key row 0 of this batch row, stride ldk
    const E* gv = p.v + (tok0 * p.KV + kh) * D;
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
      load_tile<kAsync, kBc, D, kThreads>(sK + stage * kBc * D, gk + k0 * ldk, ldk, T - k0, tid);
      load_tile<kAsync, kBc, D, kThreads>(sV + stage * kBc * D, gv + k0 * ldk, ldk, T - k0, tid);
      if (doc)
        for (int j = tid; j < kBc; j += kThreads)
          copy4<kAsync>(sKdoc + stage * kBc + j, doc + min(k0 + j, T - 1), k0 + j < T);
    };
    load_tile<kAsync, kBr, D, kThreads>(sQ, p.q + ((tok0 + q0) * p.H + h) * D, ldq, q_end - q0, tid);
    load_kv(nb_first, 0);
    if constexpr (kAsync) cp_commit();

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
      const int stage = kStages == 2 ? it & 1 : 0, k0 = (nb_first + it) * kBc;
      if constexpr (kAsync) {
        if (it + 1 < nblocks) {
          load_kv(nb_first + it + 1, stage ^ 1);
          cp_commit();
          cp_wait<1>();
        } else {
          cp_wait<0>();
        }
      }
      __syncthreads();
      const E* sKs = sK + stage * kBc * D;
      const E* sVs = sV + stage * kBc * D;
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
          for (int mt = 0; mt < kMT; ++mt)
            ldsm(a[mt], sQ + swz<D>(warp * F::kRows + mt * 16 + (lane & 15), kk * 16 + (lane >> 4) * 8));
#pragma unroll
          for (int np = 0; np < kBc / 16; ++np) {
            uint32_t bb[4];
            ldsm(bb, sKs + swz<D>(np * 16 + (lane & 7) + (lane >> 4) * 8, kk * 16 + ((lane >> 3) & 1) * 8));
#pragma unroll
            for (int mt = 0; mt < kMT; ++mt) {
              mma<E, kTuring>(s[mt][2 * np], a[mt], bb[0], bb[1]);
              mma<E, kTuring>(s[mt][2 * np + 1], a[mt], bb[2], bb[3]);
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
          for (int mt = 0; mt < kMT; ++mt) c_to_a<E>(a[mt], s[mt][2 * kk], s[mt][2 * kk + 1]);
#pragma unroll
          for (int dp = 0; dp < D / 16; ++dp) {
            uint32_t bb[4];
            ldsm_t(bb, sVs + swz<D>(kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, dp * 16 + (lane >> 4) * 8));
#pragma unroll
            for (int mt = 0; mt < kMT; ++mt) {
              mma<E, kTuring>(o[mt][2 * dp], a[mt], bb[0], bb[1]);
              mma<E, kTuring>(o[mt][2 * dp + 1], a[mt], bb[2], bb[3]);
            }
          }
        }
      }
      __syncthreads();  // every warp is done with this stage: it may be refilled
      if constexpr (!kAsync)
        if (it + 1 < nblocks) load_kv(nb_first + it + 1, 0);
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
        E* orow = p.o + ((tok0 + row) * p.H + h) * D;
#pragma unroll
        for (int dn = 0; dn < D / 8; ++dn)
          *reinterpret_cast<uint32_t*>(orow + dn * 8 + 2 * tg) = pack<E>(o[mt][dn][2 * hf] * inv, o[mt][dn][2 * hf + 1] * inv);
        if (tg == 0) p.lse[(int64_t(b) * p.H + h) * T + row] = (m[mt][hf] + __log2f(sum)) * kLn2;
      }
  }
}

template <typename E, bool kTuring, int D, bool kDoc>
void forward_d(const Context& ctx, const Args<E>& p, int64_t batch) {
  using F = Fwd<D, kTuring>;
  auto* kernel = fwd_kernel<E, kTuring, D, kDoc>;
  FT_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(F::kSmem)));
  const dim3 grid(p.H, static_cast<unsigned>(batch), (p.T + F::kBr - 1) / F::kBr);
  kernel<<<grid, F::kThreads, F::kSmem, ctx.stream()>>>(p);
  FT_CUDA_LAUNCH();
}

}  // namespace

template <typename E, bool kTuring>
void launch_forward(const Context& ctx, const Args<E>& p, int64_t batch, int64_t d, bool doc) {
  if (d == 64) doc ? forward_d<E, kTuring, 64, true>(ctx, p, batch) : forward_d<E, kTuring, 64, false>(ctx, p, batch);
  else doc ? forward_d<E, kTuring, 128, true>(ctx, p, batch) : forward_d<E, kTuring, 128, false>(ctx, p, batch);
}

template void launch_forward<bf16, false>(const Context&, const Args<bf16>&, int64_t, int64_t, bool);
template void launch_forward<fp16, false>(const Context&, const Args<fp16>&, int64_t, int64_t, bool);
template void launch_forward<fp16, true>(const Context&, const Args<fp16>&, int64_t, int64_t, bool);

}  // namespace ftune::cuda::flash

// Whether cuBLASLt's first heuristic choice is its fastest algorithm on the base-weight GEMMs of a
// LoRA step (forward y = x W^T, input gradient dx = dy W, with the step's output types and
// accumulation), as ftune's gemm() takes that first choice: for each problem, up to 32 of the
// heuristic's algorithms are timed with CUDA events on random bf16 operands, and one JSON line
// gives the first choice's time, the fastest, its rank in the heuristic's list, and TFLOP/s.
// Shapes are those of the given preset at `--tokens` rows (micro-batch x seq).
//   bench_gemm_algos_gpu [--shape llama2-7b] [--tokens 8192] [--reps 20] [--algos 32]
#include <cublasLt.h>
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <algorithm>
#include <string>
#include <vector>

#include "bench_args.h"
#include "core/error.h"
#include "event_timing.h"
#include "model/presets.h"
#include "ops/cuda/context.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/elementwise.h"

namespace {

using namespace ftune;

// One row-major problem D[m, n] = A[m, k] op(B) (+ D), as ftune's gemm() states it.
struct Problem {
  const char* what;
  int64_t m, n, k;
  bool b_trans;      // B stored [n, k] (forward: the weight) or [k, n] (input gradient)
  bool f32_out;      // D in fp32 (the input gradient of a projection that feeds RMSNorm)
  bool accumulate;   // beta = 1
};

// Milliseconds per call of one algorithm, or -1 where it refuses the problem.
double time_algo(const cuda::Context& ctx, cublasLtMatmulDesc_t op, cublasLtMatrixLayout_t la, cublasLtMatrixLayout_t lb,
                 cublasLtMatrixLayout_t lc, const cublasLtMatmulAlgo_t& algo, const void* B, const void* A, void* D,
                 float beta, int reps) {
  const float alpha = 1.0f;
  auto run = [&] {
    return cublasLtMatmul(ctx.blas(), op, &alpha, B, la, A, lb, &beta, D, lc, D, lc, &algo, ctx.workspace(),
                          ctx.workspace_bytes(), ctx.stream());
  };
  if (run() != CUBLAS_STATUS_SUCCESS) return -1.0;
  return bench::time_ms(ctx, [&] { run(); }, reps, 2);
}

}  // namespace

int main(int argc, char** argv) {
  std::string shape = "llama2-7b";
  int64_t tokens = 8192, reps = 20, max_algos = 32;
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      auto val = [&] { return bench::flag_value(argc, argv, i); };
      if (a == "--shape") shape = val();
      else if (a == "--tokens") tokens = std::stoll(val());
      else if (a == "--reps") reps = std::stoll(val());
      else if (a == "--algos") max_algos = std::stoll(val());
      else fail("unknown argument '{}'", a);
    }
    const LlamaConfig cfg = preset_config(shape);
    const int64_t H = cfg.hidden_size, I = cfg.intermediate_size, kv = cfg.num_key_value_heads * cfg.head_dim;
    const int64_t N = tokens;
    const Problem problems[] = {
        {"fwd q/o", N, H, H, true, false, false},           {"fwd o + residual", N, H, H, true, false, true},
        {"fwd k/v", N, kv, H, true, false, false},          {"fwd gate/up", N, I, H, true, false, false},
        {"fwd down + residual", N, H, I, true, false, true}, {"dgrad down -> act", N, I, H, false, false, false},
        {"dgrad gate -> fp32", N, H, I, false, true, false}, {"dgrad up -> fp32 +=", N, H, I, false, true, true},
        {"dgrad o -> att", N, H, H, false, false, false},    {"dgrad q -> fp32", N, H, H, false, true, false},
        {"dgrad k/v -> fp32 +=", N, H, kv, false, true, true},
    };
    cuda::Context ctx;
    const int64_t big = std::max(H, I);
    cuda::DeviceBuffer a_buf(static_cast<size_t>(N * big * 2)), b_buf(static_cast<size_t>(big * big * 2)),
        d_buf(static_cast<size_t>(N * big * 4));
    cuda::fill_normal(ctx, cuda::Storage::BF16, a_buf.data(), N * big, 1, 0.0f, 1.0f);
    cuda::fill_normal(ctx, cuda::Storage::BF16, b_buf.data(), big * big, 2, 0.0f, 0.02f);
    ctx.zero(d_buf.data(), d_buf.bytes());
    for (const Problem& p : problems) {
      // Column-major roles as gemm.cu sets them: D^T[n, m] = op(B)^T[n, k] A^T[k, m].
      cublasLtMatmulDesc_t op = nullptr;
      FT_CUBLAS(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
      const cublasOperation_t ta = p.b_trans ? CUBLAS_OP_T : CUBLAS_OP_N, tb = CUBLAS_OP_N;
      FT_CUBLAS(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
      FT_CUBLAS(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
      cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;
      FT_CUBLAS(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, p.b_trans ? p.k : p.n, p.b_trans ? p.n : p.k,
                                           p.b_trans ? p.k : p.n));
      FT_CUBLAS(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, p.k, p.m, p.k));
      FT_CUBLAS(cublasLtMatrixLayoutCreate(&lc, p.f32_out ? CUDA_R_32F : CUDA_R_16BF, p.n, p.m, p.n));
      cublasLtMatmulPreference_t pref = nullptr;
      FT_CUBLAS(cublasLtMatmulPreferenceCreate(&pref));
      const size_t ws = ctx.workspace_bytes();
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
      std::vector<cublasLtMatmulHeuristicResult_t> heur(static_cast<size_t>(max_algos));
      int found = 0;
      FT_CUBLAS(cublasLtMatmulAlgoGetHeuristic(ctx.blas(), op, la, lb, lc, lc, pref, static_cast<int>(max_algos),
                                               heur.data(), &found));
      cublasLtMatmulPreferenceDestroy(pref);
      const float beta = p.accumulate ? 1.0f : 0.0f;
      double first = -1, best = -1;
      int best_i = -1;
      for (int i = 0; i < found; ++i) {
        const double t = time_algo(ctx, op, la, lb, lc, heur[static_cast<size_t>(i)].algo, b_buf.data(), a_buf.data(),
                                  d_buf.data(), beta, static_cast<int>(reps));
        if (i == 0) first = t;
        if (t > 0 && (best < 0 || t < best)) best = t, best_i = i;
      }
      const double flop = 2.0 * static_cast<double>(p.m) * static_cast<double>(p.n) * static_cast<double>(p.k);
      fmt::print("{{\"bench\": \"gemm_algos\", \"shape\": \"{}\", \"problem\": \"{}\", \"m\": {}, \"n\": {}, \"k\": {}, "
                 "\"algos\": {}, \"first_ms\": {:.4f}, \"best_ms\": {:.4f}, \"best_rank\": {}, \"first_tflops\": {:.0f}, "
                 "\"best_tflops\": {:.0f}, \"gain\": {:.4f}, \"gpu\": \"{}\"}}\n",
                 shape, p.what, p.m, p.n, p.k, found, first, best, best_i, flop / (first * 1e9), flop / (best * 1e9),
                 first / best - 1.0, ctx.name());
      cublasLtMatrixLayoutDestroy(la), cublasLtMatrixLayoutDestroy(lb), cublasLtMatrixLayoutDestroy(lc);
      cublasLtMatmulDescDestroy(op);
    }
  } catch (const std::exception& e) {
    fmt::print(stderr, "bench_gemm_algos_gpu: {}\n", e.what());
    return 1;
  }
  return 0;
}

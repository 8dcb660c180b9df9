// cuBLASLt behind a row-major interface. cuBLASLt is column-major, so the row-major product
// D = op(A) op(B) is computed as the column-major D^T = op(B)^T op(A)^T: the operands swap, and a
// row-major [r, c] matrix is read as a column-major [c, r] one with leading dimension c.
// Descriptors and the chosen algorithm are cached per problem in the Context: a training step
// issues the same few dozen GEMM shapes thousands of times.
#include <map>
#include <memory>
#include <tuple>

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/gemm.h"

namespace ftune::cuda {

namespace {

cudaDataType_t lt_type(Storage s) {
  return s == Storage::BF16 ? CUDA_R_16BF : s == Storage::F16 ? CUDA_R_16F : CUDA_R_32F;
}

// One planned problem: descriptors, layouts and the heuristic's algorithm.
struct GemmPlan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;
  cublasLtMatmulAlgo_t algo{};
  ~GemmPlan() {
    if (op) cublasLtMatmulDescDestroy(op);
    for (auto l : {la, lb, lc})
      if (l) cublasLtMatrixLayoutDestroy(l);
  }
};

using GemmKey = std::tuple<int64_t, int64_t, int64_t, bool, bool, int, int, bool>;

}  // namespace

struct GemmCache {
  std::map<GemmKey, std::unique_ptr<GemmPlan>> plans;
};

GemmCache& Context::gemm_cache() const {
  if (!gemm_cache_) gemm_cache_.reset(new GemmCache);
  return *gemm_cache_;
}

void GemmCacheDeleter::operator()(GemmCache* c) const { delete c; }

namespace {

const GemmPlan& plan_for(const Context& ctx, int64_t m, int64_t n, int64_t k, GemmOperand a, GemmOperand b,
                         bool accumulate, Storage c_type) {
  auto& plans = ctx.gemm_cache().plans;
  const GemmKey key{m, n, k, a.trans, b.trans, static_cast<int>(a.type), static_cast<int>(c_type), accumulate};
  auto it = plans.find(key);
  if (it != plans.end()) return *it->second;
  auto p = std::make_unique<GemmPlan>();
  FT_CUBLAS(cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  // Column-major roles: the first operand is B (n x k after op), the second is A (k x m after op).
  const cublasOperation_t ta = b.trans ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t tb = a.trans ? CUBLAS_OP_T : CUBLAS_OP_N;
  FT_CUBLAS(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  FT_CUBLAS(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  // B row-major [k, n] (or [n, k] when transposed) seen column-major.
  FT_CUBLAS(cublasLtMatrixLayoutCreate(&p->la, lt_type(b.type), b.trans ? k : n, b.trans ? n : k, b.trans ? k : n));
  // A row-major [m, k] (or [k, m]).
  FT_CUBLAS(cublasLtMatrixLayoutCreate(&p->lb, lt_type(a.type), a.trans ? m : k, a.trans ? k : m, a.trans ? m : k));
  FT_CUBLAS(cublasLtMatrixLayoutCreate(&p->lc, lt_type(c_type), n, m, n));
  cublasLtMatmulPreference_t pref = nullptr;
  FT_CUBLAS(cublasLtMatmulPreferenceCreate(&pref));
  const size_t ws = ctx.workspace_bytes();
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  cublasLtMatmulHeuristicResult_t heur{};
  int found = 0;
  const cublasStatus_t st =
      cublasLtMatmulAlgoGetHeuristic(ctx.blas(), p->op, p->la, p->lb, p->lc, p->lc, pref, 1, &heur, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  FT_CUBLAS(st);
  if (found == 0) fail("cuBLASLt has no algorithm for a {}x{}x{} GEMM with these types", m, n, k);
  p->algo = heur.algo;
  return *plans.emplace(key, std::move(p)).first->second;
}

}  // namespace

void gemm(const Context& ctx, int64_t m, int64_t n, int64_t k, float alpha, GemmOperand a, GemmOperand b, float beta,
          const void* c, void* d, Storage c_type) {
  FT_ASSERT(m >= 0 && n >= 0 && k >= 0 && a.type == b.type);
  if (a.type == Storage::F32 && c_type != Storage::F32)
    fail("internal error: cuBLASLt has no fp32 x fp32 -> 16-bit GEMM; write fp32 and convert");
  if (m == 0 || n == 0) return;
  const GemmPlan& p = plan_for(ctx, m, n, k, a, b, beta != 0.0f, c_type);
  FT_CUBLAS(cublasLtMatmul(ctx.blas(), p.op, &alpha, b.ptr, p.la, a.ptr, p.lb, &beta, beta != 0.0f ? c : d, p.lc, d,
                           p.lc, &p.algo, ctx.workspace(), ctx.workspace_bytes(), ctx.stream()));
}

}  // namespace ftune::cuda

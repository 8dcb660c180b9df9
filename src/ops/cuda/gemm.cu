// cuBLASLt behind a row-major interface. cuBLASLt is column-major, so the row-major product
// C = op(A) op(B) is computed as the column-major C^T = op(B)^T op(A)^T: the operands swap, and a
// row-major [r, c] matrix is read as a column-major [c, r] one with leading dimension c.
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/gemm.h"

namespace ftune::cuda {

namespace {

cudaDataType_t lt_type(Storage s) { return s == Storage::BF16 ? CUDA_R_16BF : CUDA_R_32F; }

// Owns one cuBLASLt descriptor.
template <typename T, cublasStatus_t (*Destroy)(T)>
struct LtHandle {
  T h = nullptr;
  ~LtHandle() {
    if (h) Destroy(h);
  }
};

}  // namespace

void gemm(const Context& ctx, int64_t m, int64_t n, int64_t k, float alpha, GemmOperand a, GemmOperand b, float beta,
          void* c, Storage c_type) {
  FT_ASSERT(m >= 0 && n >= 0 && k >= 0 && a.type == b.type);
  if (a.type == Storage::F32 && c_type == Storage::BF16)
    fail("internal error: cuBLASLt has no fp32 x fp32 -> bf16 GEMM; write fp32 and convert");
  if (m == 0 || n == 0) return;
  LtHandle<cublasLtMatmulDesc_t, cublasLtMatmulDescDestroy> op;
  FT_CUBLAS(cublasLtMatmulDescCreate(&op.h, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  // Column-major roles: the first operand is B (n x k after op), the second is A (k x m after op).
  const cublasOperation_t ta = b.trans ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t tb = a.trans ? CUBLAS_OP_T : CUBLAS_OP_N;
  FT_CUBLAS(cublasLtMatmulDescSetAttribute(op.h, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  FT_CUBLAS(cublasLtMatmulDescSetAttribute(op.h, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  LtHandle<cublasLtMatrixLayout_t, cublasLtMatrixLayoutDestroy> la, lb, lc;
  // B row-major [k, n] (or [n, k] when transposed) seen column-major.
  FT_CUBLAS(cublasLtMatrixLayoutCreate(&la.h, lt_type(b.type), b.trans ? k : n, b.trans ? n : k, b.trans ? k : n));
  // A row-major [m, k] (or [k, m]).
  FT_CUBLAS(cublasLtMatrixLayoutCreate(&lb.h, lt_type(a.type), a.trans ? m : k, a.trans ? k : m, a.trans ? m : k));
  FT_CUBLAS(cublasLtMatrixLayoutCreate(&lc.h, lt_type(c_type), n, m, n));
  LtHandle<cublasLtMatmulPreference_t, cublasLtMatmulPreferenceDestroy> pref;
  FT_CUBLAS(cublasLtMatmulPreferenceCreate(&pref.h));
  const size_t ws = ctx.workspace_bytes();
  FT_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref.h, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
  cublasLtMatmulHeuristicResult_t heur{};
  int found = 0;
  FT_CUBLAS(cublasLtMatmulAlgoGetHeuristic(ctx.blas(), op.h, la.h, lb.h, lc.h, lc.h, pref.h, 1, &heur, &found));
  if (found == 0) fail("cuBLASLt has no algorithm for a {}x{}x{} GEMM with these types", m, n, k);
  FT_CUBLAS(cublasLtMatmul(ctx.blas(), op.h, &alpha, b.ptr, la.h, a.ptr, lb.h, &beta, c, lc.h, c, lc.h, &heur.algo,
                           ctx.workspace(), ws, ctx.stream()));
}

}  // namespace ftune::cuda

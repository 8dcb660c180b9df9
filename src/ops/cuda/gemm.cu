// cuBLASLt behind a row-major interface. cuBLASLt is column-major, so the row-major product
// D = op(A) op(B) is computed as the column-major D^T = op(B)^T op(A)^T: the operands swap, and a
// row-major [r, c] matrix is read as a column-major [c, r] one with leading dimension c.
// Descriptors and the chosen algorithm are cached per problem in the Context: a training step
// issues the same few dozen GEMM shapes thousands of times.
//
// Tuning (Context::set_gemm_tuning, off unless asked for): cuBLASLt's first heuristic choice is not
// always its fastest algorithm when problems are timed alone (on an H100, 5-14% slower than the best
// of its own list on several of a 7B LoRA step's [8192 x 11008 x 4096] products), though within the
// step itself the difference was ~2% on those and +0.3% on the whole step. For problems of at least
// kTuneFlop the plan keeps up to kTuneCandidates of the heuristic's algorithms and the problem's
// first calls run them in turn, each timed with a pair of CUDA events read back without blocking at
// later calls; once every candidate has kTuneSamples times, the plan keeps the fastest (its median),
// and the heuristic's first choice unless another is kTuneMargin faster, so that close timings do
// not flip the choice run to run.
// Every call computes the product the caller asked for (candidates differ only in summation order),
// so tuning costs no extra GEMMs and no memory, and in-place accumulation is safe. Off, the
// heuristic's first choice keeps results bitwise run to run.
#include <algorithm>
#include <map>
#include <memory>
#include <tuple>
#include <vector>

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/gemm.h"

namespace ftune::cuda {

namespace {

cudaDataType_t lt_type(Storage s) {
  return s == Storage::BF16 ? CUDA_R_16BF : s == Storage::F16 ? CUDA_R_16F : CUDA_R_32F;
}

constexpr double kTuneFlop = 1e10;     // 2 m n k: ~14 us at 700 TFLOP/s; below, heuristic alone
constexpr int kTuneCandidates = 8;     // of the heuristic's list, in its order
constexpr int kTuneSamples = 3;        // timed calls per candidate
constexpr double kTuneMargin = 0.02;   // the fastest replaces the first choice only when this much faster
constexpr int kTunedPlansMax = 64;     // per Context: bounds the tuning of many distinct shapes

// One planned problem: descriptors, layouts and the chosen algorithm; while tuning, the candidates,
// their timed calls still in flight, and the times read back so far.
struct GemmPlan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;
  cublasLtMatmulAlgo_t algo{};
  std::vector<cublasLtMatmulAlgo_t> candidates;  // empty once chosen (or never tuned)
  struct Timed {
    cudaEvent_t start = nullptr, end = nullptr;
    size_t candidate = 0;
  };
  std::vector<Timed> in_flight;
  std::vector<std::vector<float>> ms;  // [candidate] times read back
  size_t next = 0;                     // the candidate the next call runs (modulo their count)
  ~GemmPlan() {
    for (const Timed& t : in_flight) cudaEventDestroy(t.start), cudaEventDestroy(t.end);
    if (op) cublasLtMatmulDescDestroy(op);
    for (auto l : {la, lb, lc})
      if (l) cublasLtMatrixLayoutDestroy(l);
  }
};

using GemmKey = std::tuple<int64_t, int64_t, int64_t, bool, bool, int, int, bool>;

}  // namespace

struct GemmCache {
  std::map<GemmKey, std::unique_ptr<GemmPlan>> plans;
  int tuned = 0;  // plans that tuned (kTunedPlansMax)
};

GemmCache& Context::gemm_cache() const {
  if (!gemm_cache_) gemm_cache_.reset(new GemmCache);
  return *gemm_cache_;
}

void GemmCacheDeleter::operator()(GemmCache* c) const { delete c; }

namespace {

float median(std::vector<float> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Reads back the timed calls that have finished; once every candidate has its samples, chooses.
void harvest(GemmPlan& p) {
  auto done = [&](GemmPlan::Timed& t) {
    if (cudaEventQuery(t.end) != cudaSuccess) return false;
    float ms = 0;
    if (cudaEventElapsedTime(&ms, t.start, t.end) == cudaSuccess) p.ms[t.candidate].push_back(ms);
    cudaEventDestroy(t.start), cudaEventDestroy(t.end);
    return true;
  };
  p.in_flight.erase(std::remove_if(p.in_flight.begin(), p.in_flight.end(), done), p.in_flight.end());
  cudaGetLastError();  // cudaEventQuery's cudaErrorNotReady is not an error here
  for (const auto& m : p.ms)
    if (m.size() < static_cast<size_t>(kTuneSamples)) return;
  size_t best = 0;
  std::vector<float> med(p.candidates.size());
  for (size_t i = 0; i < med.size(); ++i) med[i] = median(p.ms[i]);
  for (size_t i = 1; i < med.size(); ++i)
    if (med[i] < med[best]) best = i;
  if (med[best] >= med[0] * (1.0 - kTuneMargin)) best = 0;
  p.algo = p.candidates[best];
  for (const auto& t : p.in_flight) cudaEventDestroy(t.start), cudaEventDestroy(t.end);
  p.in_flight.clear(), p.candidates.clear(), p.ms.clear();
}

GemmPlan& plan_for(const Context& ctx, int64_t m, int64_t n, int64_t k, GemmOperand a, GemmOperand b,
                   bool accumulate, Storage c_type) {
  auto& cache = ctx.gemm_cache();
  auto& plans = cache.plans;
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
  const bool tune = ctx.gemm_tuning() && cache.tuned < kTunedPlansMax &&
                    2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k) >= kTuneFlop;
  std::vector<cublasLtMatmulHeuristicResult_t> heur(tune ? kTuneCandidates : 1);
  int found = 0;
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(ctx.blas(), p->op, p->la, p->lb, p->lc, p->lc, pref,
                                                           static_cast<int>(heur.size()), heur.data(), &found);
  cublasLtMatmulPreferenceDestroy(pref);
  FT_CUBLAS(st);
  if (found == 0) fail("cuBLASLt has no algorithm for a {}x{}x{} GEMM with these types", m, n, k);
  p->algo = heur[0].algo;
  if (found > 1) {
    ++cache.tuned;
    for (int i = 0; i < found; ++i) p->candidates.push_back(heur[static_cast<size_t>(i)].algo);
    p->ms.resize(p->candidates.size());
  }
  return *plans.emplace(key, std::move(p)).first->second;
}

}  // namespace

void gemm(const Context& ctx, int64_t m, int64_t n, int64_t k, float alpha, GemmOperand a, GemmOperand b, float beta,
          const void* c, void* d, Storage c_type) {
  FT_ASSERT(m >= 0 && n >= 0 && k >= 0 && a.type == b.type);
  if (a.type == Storage::F32 && c_type != Storage::F32)
    fail("internal error: cuBLASLt has no fp32 x fp32 -> 16-bit GEMM; write fp32 and convert");
  if (m == 0 || n == 0) return;
  GemmPlan& p = plan_for(ctx, m, n, k, a, b, beta != 0.0f, c_type);
  auto run = [&](const cublasLtMatmulAlgo_t& algo) {
    return cublasLtMatmul(ctx.blas(), p.op, &alpha, b.ptr, p.la, a.ptr, p.lb, &beta, beta != 0.0f ? c : d, p.lc, d,
                          p.lc, &algo, ctx.workspace(), ctx.workspace_bytes(), ctx.stream());
  };
  if (!p.candidates.empty()) harvest(p);
  if (p.candidates.empty()) {
    FT_CUBLAS(run(p.algo));
    return;
  }
  // Tuning: this call on the next candidate in turn, between two events.
  const size_t i = p.next % p.candidates.size();
  p.next = i + 1;
  GemmPlan::Timed t;
  t.candidate = i;
  FT_CUDA(cudaEventCreate(&t.start));
  FT_CUDA(cudaEventCreate(&t.end));
  FT_CUDA(cudaEventRecord(t.start, ctx.stream()));
  const cublasStatus_t st = run(p.candidates[i]);
  if (st != CUBLAS_STATUS_SUCCESS) {
    // A candidate the heuristic offered that refuses the call: dropped, and the first choice runs.
    cudaEventDestroy(t.start), cudaEventDestroy(t.end);
    if (i == 0) FT_CUBLAS(st);
    p.candidates.erase(p.candidates.begin() + static_cast<std::ptrdiff_t>(i));
    p.ms.erase(p.ms.begin() + static_cast<std::ptrdiff_t>(i));
    for (auto& f : p.in_flight)
      if (f.candidate > i) --f.candidate;
    p.next = 0;
    FT_CUBLAS(run(p.algo));
    return;
  }
  FT_CUDA(cudaEventRecord(t.end, ctx.stream()));
  p.in_flight.push_back(t);
}

GemmTuning gemm_tuning_state(const Context& ctx) {
  GemmTuning s;
  for (const auto& [key, p] : ctx.gemm_cache().plans) {
    if (!p->candidates.empty()) harvest(*p);
    ++s.plans;
    if (!p->candidates.empty()) ++s.tuning;
  }
  s.tuned = ctx.gemm_cache().tuned;
  return s;
}

}  // namespace ftune::cuda

// cuDNN fused causal attention: the graph of cudnn_attention.h on the backend descriptors of
// cudnn_graph.h, with libcudnn.so.9 opened by dlopen (no link-time dependency). The operation
// graphs follow cudnn-frontend's composite sdpa nodes (forward: Q.K^T, scale, causal mask,
// softmax with stats, P.V; backward: the FlashAttention-2 recomputation with the row sums
// rowsum(dO * O), a fp32 dQ accumulator and, for grouped-query heads, a reduction of dK and dV over
// each group), which is the pattern cuDNN's fused attention engines match.
#include "ops/cuda/cudnn_attention.h"

#include <cuda_runtime.h>
#include <dlfcn.h>
#include <fmt/format.h>

#include <array>
#include <cmath>
#include <limits>
#include <map>
#include <tuple>
#include <vector>

#include "core/error.h"
#include "ops/cuda/cuda_check.h"

#if __has_include(<cudnn_graph.h>)
#include <cudnn_graph.h>
#define FTUNE_CUDNN_HEADERS 1
#else
#define FTUNE_CUDNN_HEADERS 0
#endif

namespace ftune::cuda {

bool CudnnAttention::takes(Storage s, int sm, const AttnShape& a) {
  return s != Storage::F32 && sm >= 80 && (a.head_dim == 64 || a.head_dim == 128) && a.kv_heads > 0 &&
         a.heads % a.kv_heads == 0;
}

size_t cudnn_attention_workspace_estimate(const AttnShape& a) {
  const size_t group = a.heads != a.kv_heads ? static_cast<size_t>(a.batch * a.seq * a.heads * a.head_dim) * 4 : 0;
  return 256 + group;
}

#if FTUNE_CUDNN_HEADERS
namespace {

// The library's entry points this file uses, looked up once.
struct Lib {
  void* so = nullptr;
  size_t (*getVersion)() = nullptr;
  cudnnStatus_t (*create)(cudnnHandle_t*) = nullptr;
  cudnnStatus_t (*destroy)(cudnnHandle_t) = nullptr;
  cudnnStatus_t (*setStream)(cudnnHandle_t, cudaStream_t) = nullptr;
  const char* (*errorString)(cudnnStatus_t) = nullptr;
  void (*lastError)(char*, size_t) = nullptr;
  cudnnStatus_t (*createDesc)(cudnnBackendDescriptorType_t, cudnnBackendDescriptor_t*) = nullptr;
  cudnnStatus_t (*destroyDesc)(cudnnBackendDescriptor_t) = nullptr;
  cudnnStatus_t (*finalize)(cudnnBackendDescriptor_t) = nullptr;
  cudnnStatus_t (*setAttr)(cudnnBackendDescriptor_t, cudnnBackendAttributeName_t, cudnnBackendAttributeType_t, int64_t,
                           const void*) = nullptr;
  cudnnStatus_t (*getAttr)(cudnnBackendDescriptor_t, cudnnBackendAttributeName_t, cudnnBackendAttributeType_t, int64_t,
                           int64_t*, void*) = nullptr;
  cudnnStatus_t (*execute)(cudnnHandle_t, cudnnBackendDescriptor_t, cudnnBackendDescriptor_t) = nullptr;

  // Empty on success, else why not.
  std::string open() {
    so = dlopen("libcudnn.so.9", RTLD_NOW | RTLD_LOCAL);
    if (!so) return "libcudnn.so.9 not found";
    auto sym = [&](auto& fn, const char* name) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(so, name));
      return fn != nullptr;
    };
    bool ok = sym(getVersion, "cudnnGetVersion") && sym(create, "cudnnCreate") && sym(destroy, "cudnnDestroy") &&
              sym(setStream, "cudnnSetStream") && sym(errorString, "cudnnGetErrorString") &&
              sym(createDesc, "cudnnBackendCreateDescriptor") && sym(destroyDesc, "cudnnBackendDestroyDescriptor") &&
              sym(finalize, "cudnnBackendFinalize") && sym(setAttr, "cudnnBackendSetAttribute") &&
              sym(getAttr, "cudnnBackendGetAttribute") && sym(execute, "cudnnBackendExecute");
    sym(lastError, "cudnnGetLastErrorString");  // optional
    if (!ok) return "libcudnn.so.9 lacks the graph API";
    return {};
  }
  ~Lib() {
    if (so) dlclose(so);
  }

  std::string describe(cudnnStatus_t st) const {
    std::string s = fmt::format("{} ({})", errorString ? errorString(st) : "?", static_cast<int>(st));
    if (lastError) {
      char buf[512] = {0};
      lastError(buf, sizeof buf);
      if (buf[0]) s += std::string(": ") + buf;
    }
    return s;
  }
};

// A graph-building step failed: carries the step's name and cuDNN's message.
struct Refused {
  std::string why;
};

// Owns every descriptor of one plan (tensors, operations, graph, engine config, plan).
class Descs {
 public:
  explicit Descs(const Lib& lib) : lib_(&lib) {}
  Descs(Descs&& o) noexcept : lib_(o.lib_), all_(std::move(o.all_)) { o.all_.clear(); }
  Descs(const Descs&) = delete;
  ~Descs() {
    for (auto it = all_.rbegin(); it != all_.rend(); ++it) lib_->destroyDesc(*it);
  }
  cudnnBackendDescriptor_t make(cudnnBackendDescriptorType_t type, const char* what) {
    cudnnBackendDescriptor_t d = nullptr;
    check(lib_->createDesc(type, &d), what);
    all_.push_back(d);
    return d;
  }
  void check(cudnnStatus_t st, const char* what) const {
    if (st != CUDNN_STATUS_SUCCESS) throw Refused{fmt::format("{}: {}", what, lib_->describe(st))};
  }
  template <typename T>
  void set(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type, const T* v,
           int64_t n, const char* what) {
    check(lib_->setAttr(d, name, type, n, v), what);
  }
  void finalize(cudnnBackendDescriptor_t d, const char* what) { check(lib_->finalize(d), what); }
  const Lib& lib() const { return *lib_; }

 private:
  const Lib* lib_;
  std::vector<cudnnBackendDescriptor_t> all_;
};

using Dims = std::array<int64_t, 4>;
using Tensor = cudnnBackendDescriptor_t;

// The user-visible tensors of the two graphs (variant-pack ids); virtual tensors count up from 100.
enum Uid : int64_t {
  kQ = 1, kK, kV, kO, kStats, kScale, kNegInf, kOne, kDO, kDQ, kDK, kDV, kRowSums, kDQAccum
};

// Builds one operation graph: tensors and operations, then the plan.
class GraphBuilder {
 public:
  explicit GraphBuilder(Descs& d) : d_(d) {}

  Tensor tensor(int64_t uid, cudnnDataType_t dt, const Dims& dim, const Dims& stride, bool is_virtual = false,
                bool by_value = false) {
    Tensor t = d_.make(CUDNN_BACKEND_TENSOR_DESCRIPTOR, "tensor descriptor");
    const int64_t align = 16;
    d_.set(t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, &dt, 1, "tensor data type");
    d_.set(t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, dim.data(), 4, "tensor dims");
    d_.set(t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, stride.data(), 4, "tensor strides");
    d_.set(t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, &uid, 1, "tensor uid");
    d_.set(t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, &align, 1, "tensor alignment");
    d_.set(t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, &is_virtual, 1, "tensor virtual");
    if (by_value) d_.set(t, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, &by_value, 1, "tensor by value");
    d_.finalize(t, "tensor finalize");
    return t;
  }
  Tensor virt(cudnnDataType_t dt, const Dims& dim, const Dims& stride) {
    return tensor(next_uid_++, dt, dim, stride, true);
  }
  Tensor scalar(int64_t uid) { return tensor(uid, CUDNN_DATA_FLOAT, {1, 1, 1, 1}, {1, 1, 1, 1}, false, true); }

  void matmul(Tensor a, Tensor b, Tensor c) {
    auto md = d_.make(CUDNN_BACKEND_MATMUL_DESCRIPTOR, "matmul descriptor");
    const cudnnDataType_t comp = CUDNN_DATA_FLOAT;
    d_.set(md, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, &comp, 1, "matmul compute type");
    d_.finalize(md, "matmul descriptor finalize");
    auto op = d_.make(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR, "matmul operation");
    d_.set(op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, &a, 1, "matmul A");
    d_.set(op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, &b, 1, "matmul B");
    d_.set(op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, &c, 1, "matmul C");
    d_.set(op, CUDNN_ATTR_OPERATION_MATMUL_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, &md, 1, "matmul desc");
    d_.finalize(op, "matmul operation finalize");
    ops_.push_back(op);
  }
  // y = mode(x[, b[, t]]); axis for GEN_INDEX.
  void pointwise(cudnnPointwiseMode_t mode, cudnnDataType_t comp, Tensor x, Tensor b, Tensor t, Tensor y,
                 int64_t axis = -1) {
    auto pd = d_.make(CUDNN_BACKEND_POINTWISE_DESCRIPTOR, "pointwise descriptor");
    d_.set(pd, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, &mode, 1, "pointwise mode");
    d_.set(pd, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, &comp, 1, "pointwise precision");
    if (mode == CUDNN_POINTWISE_GEN_INDEX) d_.set(pd, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, &axis, 1, "axis");
    d_.finalize(pd, "pointwise descriptor finalize");
    auto op = d_.make(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR, "pointwise operation");
    d_.set(op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, CUDNN_TYPE_BACKEND_DESCRIPTOR, &pd, 1, "pointwise desc");
    d_.set(op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, &x, 1, "pointwise x");
    if (b) d_.set(op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, &b, 1, "pointwise b");
    if (t) d_.set(op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, &t, 1, "pointwise t");
    d_.set(op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, &y, 1, "pointwise y");
    d_.finalize(op, "pointwise operation finalize");
    ops_.push_back(op);
  }
  // y: x's shape with the reduced dims set to 1.
  void reduction(cudnnReduceTensorOp_t how, Tensor x, Tensor y) {
    auto rd = d_.make(CUDNN_BACKEND_REDUCTION_DESCRIPTOR, "reduction descriptor");
    const cudnnDataType_t comp = CUDNN_DATA_FLOAT;
    d_.set(rd, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, &how, 1, "reduction operator");
    d_.set(rd, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, &comp, 1, "reduction compute type");
    d_.finalize(rd, "reduction descriptor finalize");
    auto op = d_.make(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR, "reduction operation");
    d_.set(op, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, &x, 1, "reduction x");
    d_.set(op, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, &y, 1, "reduction y");
    d_.set(op, CUDNN_ATTR_OPERATION_REDUCTION_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, &rd, 1, "reduction desc");
    d_.finalize(op, "reduction operation finalize");
    ops_.push_back(op);
  }
  void reshape(Tensor x, Tensor y) {
    auto op = d_.make(CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR, "reshape operation");
    d_.set(op, CUDNN_ATTR_OPERATION_RESHAPE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, &x, 1, "reshape x");
    d_.set(op, CUDNN_ATTR_OPERATION_RESHAPE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, &y, 1, "reshape y");
    d_.finalize(op, "reshape operation finalize");
    ops_.push_back(op);
  }

  // Scores [b, h, s_q, s_kv] masked to row >= column (top-left aligned causal), the rest -inf.
  Tensor causal_mask(Tensor s, const Dims& dim, const Dims& stride, Tensor neg_inf) {
    Tensor row = virt(CUDNN_DATA_INT32, dim, stride), col = virt(CUDNN_DATA_INT32, dim, stride);
    pointwise(CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_FLOAT, s, nullptr, nullptr, row, 2);
    pointwise(CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_FLOAT, s, nullptr, nullptr, col, 3);
    Tensor keep = virt(CUDNN_DATA_BOOLEAN, dim, stride);
    pointwise(CUDNN_POINTWISE_CMP_GE, CUDNN_DATA_BOOLEAN, row, col, nullptr, keep);
    Tensor out = virt(CUDNN_DATA_FLOAT, dim, stride);
    pointwise(CUDNN_POINTWISE_BINARY_SELECT, CUDNN_DATA_FLOAT, s, neg_inf, keep, out);
    return out;
  }

  // The operation graph, then the first engine of the heuristics' list that makes a plan.
  cudnnBackendDescriptor_t plan(cudnnHandle_t handle, const char* which) {
    auto graph = d_.make(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, "operation graph");
    d_.set(graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, ops_.data(),
           static_cast<int64_t>(ops_.size()), "graph operations");
    d_.set(graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, &handle, 1, "graph handle");
    d_.finalize(graph, "operation graph finalize");
    std::string tried;
    for (cudnnBackendHeurMode_t mode : {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK}) {
      cudnnBackendDescriptor_t heur = nullptr;
      try {
        heur = d_.make(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, "heuristics");
        d_.set(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, &graph, 1, "heur graph");
        d_.set(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, &mode, 1, "heur mode");
        d_.finalize(heur, "heuristics finalize");
      } catch (const Refused& r) {
        tried += (tried.empty() ? "" : "; ") + r.why;
        continue;
      }
      int64_t count = 0;
      d_.check(d_.lib().getAttr(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &count, nullptr),
               "heuristics count");
      std::vector<cudnnBackendDescriptor_t> cfgs;
      for (int64_t i = 0; i < count; ++i) cfgs.push_back(d_.make(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, "engine config"));
      int64_t got = 0;
      if (count > 0)
        d_.check(d_.lib().getAttr(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, count, &got,
                                  cfgs.data()),
                 "heuristics results");
      for (int64_t i = 0; i < got; ++i) {
        try {
          auto p = d_.make(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, "execution plan");
          d_.set(p, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, &handle, 1, "plan handle");
          d_.set(p, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, &cfgs[i], 1, "plan config");
          d_.finalize(p, "execution plan finalize");
          return p;
        } catch (const Refused& r) {
          tried += (tried.empty() ? "" : "; ") + r.why;
        }
      }
      if (got == 0) tried += (tried.empty() ? "" : "; ") + std::string("no engine");
    }
    throw Refused{fmt::format("{}: {}", which, tried)};
  }

 private:
  Descs& d_;
  std::vector<cudnnBackendDescriptor_t> ops_;
  int64_t next_uid_ = 100;
};

// Layouts of ftune's activations as cuDNN's [b, h, s, d] views.
struct Layout {
  int64_t b, hq, hk, s, d;
  Dims q_dim() const { return {b, hq, s, d}; }
  Dims q_stride() const { return {s * hq * d, d, hq * d, 1}; }
  Dims kt_dim() const { return {b, hk, d, s}; }  // K (and V) read transposed: [b, hk, d, s]
  Dims kt_stride() const { return {s * hk * d, d, 1, hk * d}; }
  Dims kv_dim() const { return {b, hk, s, d}; }
  Dims kv_stride() const { return {s * hk * d, d, hk * d, 1}; }
  Dims s_dim() const { return {b, hq, s, s}; }
  Dims s_stride() const { return {hq * s * s, s * s, s, 1}; }
  Dims st_stride() const { return {hq * s * s, s * s, 1, s}; }  // the scores read transposed
  Dims row_dim() const { return {b, hq, s, 1}; }
  Dims row_stride() const { return {hq * s, s, 1, 1}; }
  Dims full_dim() const { return {b, hq, s, d}; }  // per query head, BHSD
  Dims full_stride() const { return {hq * s * d, s * d, d, 1}; }
};

}  // namespace

struct CudnnAttention::Impl {
  Lib lib;
  std::string status;
  bool ok = false;
  size_t version = 0;
  int sm = 0;
  cudaStream_t stream = nullptr;  // the Context's compute stream
  cudnnHandle_t handle = nullptr;
  std::string refusal;

  struct Plans {
    explicit Plans(const Lib& l) : fwd_descs(l), bwd_descs(l) {}
    Descs fwd_descs, bwd_descs;
    cudnnBackendDescriptor_t fwd = nullptr, bwd = nullptr;
    size_t fwd_ws = 0, bwd_ws = 0;
    float scale = 1.0f;
    bool ok = false;
  };
  static constexpr size_t kMaxShapes = 64;  // plans kept (each a few hundred ms to build)
  // (storage, batch, seq, heads, kv_heads, head_dim) -> plans
  std::map<std::tuple<int, int64_t, int64_t, int64_t, int64_t, int64_t>, std::unique_ptr<Plans>> cache;

  ~Impl() {
    cache.clear();
    if (handle) lib.destroy(handle);
  }

  Plans* plans(Storage s, const AttnShape& a) {
    if (!ok || !CudnnAttention::takes(s, sm, a)) return nullptr;
    auto key = std::make_tuple(static_cast<int>(s), a.batch, a.seq, a.heads, a.kv_heads, a.head_dim);
    auto it = cache.find(key);
    if (it == cache.end()) {
      if (cache.size() >= kMaxShapes) {  // many lengths (unpacked batches): the rest on ftune's kernels
        refusal = fmt::format("B{} T{}: plans for {} shapes already", a.batch, a.seq, kMaxShapes);
        return nullptr;
      }
      auto p = std::make_unique<Plans>(lib);
      try {
        build(*p, s, a);
        p->ok = true;
      } catch (const Refused& r) {
        refusal = fmt::format("B{} T{} h{}/{} d{}: {}", a.batch, a.seq, a.heads, a.kv_heads, a.head_dim, r.why);
      }
      it = cache.emplace(key, std::move(p)).first;
    }
    return it->second->ok ? it->second.get() : nullptr;
  }

  void build(Plans& p, Storage s, const AttnShape& a) {
    const cudnnDataType_t io = s == Storage::BF16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_HALF;
    const Layout L{a.batch, a.heads, a.kv_heads, a.seq, a.head_dim};
    const auto F = CUDNN_DATA_FLOAT;
    {  // forward
      GraphBuilder g(p.fwd_descs);
      Tensor q = g.tensor(kQ, io, L.q_dim(), L.q_stride()), kt = g.tensor(kK, io, L.kt_dim(), L.kt_stride());
      Tensor v = g.tensor(kV, io, L.kv_dim(), L.kv_stride()), o = g.tensor(kO, io, L.q_dim(), L.q_stride());
      Tensor stats = g.tensor(kStats, F, L.row_dim(), L.row_stride());
      Tensor scale = g.scalar(kScale), neg_inf = g.scalar(kNegInf);
      Tensor s0 = g.virt(F, L.s_dim(), L.s_stride()), s1 = g.virt(F, L.s_dim(), L.s_stride());
      g.matmul(q, kt, s0);
      g.pointwise(CUDNN_POINTWISE_MUL, F, s0, scale, nullptr, s1);
      Tensor sm = g.causal_mask(s1, L.s_dim(), L.s_stride(), neg_inf);
      Tensor mx = g.virt(F, L.row_dim(), L.row_stride()), sub = g.virt(F, L.s_dim(), L.s_stride());
      Tensor ex = g.virt(F, L.s_dim(), L.s_stride()), sum = g.virt(F, L.row_dim(), L.row_stride());
      Tensor lg = g.virt(F, L.row_dim(), L.row_stride()), pr = g.virt(io, L.s_dim(), L.s_stride());
      g.reduction(CUDNN_REDUCE_TENSOR_MAX, sm, mx);
      g.pointwise(CUDNN_POINTWISE_SUB, F, sm, mx, nullptr, sub);
      g.pointwise(CUDNN_POINTWISE_EXP, F, sub, nullptr, nullptr, ex);
      g.reduction(CUDNN_REDUCE_TENSOR_ADD, ex, sum);
      g.pointwise(CUDNN_POINTWISE_LOG, F, sum, nullptr, nullptr, lg);
      g.pointwise(CUDNN_POINTWISE_ADD, F, mx, lg, nullptr, stats);
      g.pointwise(CUDNN_POINTWISE_DIV, F, ex, sum, nullptr, pr);
      g.matmul(pr, v, o);
      p.fwd = g.plan(handle, "forward");
    }
    {  // backward
      GraphBuilder g(p.bwd_descs);
      Tensor q = g.tensor(kQ, io, L.q_dim(), L.q_stride()), kt = g.tensor(kK, io, L.kt_dim(), L.kt_stride());
      Tensor vt = g.tensor(kV, io, L.kt_dim(), L.kt_stride()), o = g.tensor(kO, io, L.q_dim(), L.q_stride());
      Tensor dO = g.tensor(kDO, io, L.q_dim(), L.q_stride()), stats = g.tensor(kStats, F, L.row_dim(), L.row_stride());
      Tensor dq = g.tensor(kDQ, io, L.q_dim(), L.q_stride());
      Tensor dk = g.tensor(kDK, io, L.kv_dim(), L.kv_stride()), dv = g.tensor(kDV, io, L.kv_dim(), L.kv_stride());
      Tensor rows = g.tensor(kRowSums, F, L.row_dim(), L.row_stride());
      Tensor dq_acc = g.tensor(kDQAccum, F, L.full_dim(), L.full_stride());
      Tensor scale = g.scalar(kScale), neg_inf = g.scalar(kNegInf), one = g.scalar(kOne);
      const bool gqa = a.heads != a.kv_heads;
      // row sums: rowsum(dO * O) (times 1: the frontend's dropout-free form)
      const Dims dOO_stride{L.hq * L.s * L.d, L.s * L.d, L.hq * L.d, 1};
      Tensor dOO = g.virt(F, L.q_dim(), dOO_stride), red = g.virt(F, L.row_dim(), L.row_stride());
      g.pointwise(CUDNN_POINTWISE_MUL, F, dO, o, nullptr, dOO);
      g.reduction(CUDNN_REDUCE_TENSOR_ADD, dOO, red);
      g.pointwise(CUDNN_POINTWISE_MUL, F, red, one, nullptr, rows);
      // P = exp(scale * Q.K^T - stats), masked
      Tensor s0 = g.virt(F, L.s_dim(), L.s_stride()), s1 = g.virt(F, L.s_dim(), L.s_stride());
      Tensor s2 = g.virt(F, L.s_dim(), L.s_stride());
      g.matmul(q, kt, s0);
      g.pointwise(CUDNN_POINTWISE_MUL, F, s0, scale, nullptr, s1);
      g.pointwise(CUDNN_POINTWISE_SUB, F, s1, stats, nullptr, s2);
      Tensor s3 = g.causal_mask(s2, L.s_dim(), L.s_stride(), neg_inf);
      Tensor p_ = g.virt(F, L.s_dim(), L.s_stride());
      g.pointwise(CUDNN_POINTWISE_EXP, F, s3, nullptr, nullptr, p_);
      // dV = P^T dO (summed over each group of query heads)
      Tensor pt = g.virt(io, L.s_dim(), L.st_stride());
      g.reshape(p_, pt);
      if (gqa) {
        Tensor dv_full = g.virt(io, L.full_dim(), L.full_stride());
        g.matmul(pt, dO, dv_full);
        g.reduction(CUDNN_REDUCE_TENSOR_ADD, dv_full, dv);
      } else {
        g.matmul(pt, dO, dv);
      }
      // dS = P * (dO.V^T - rows) * scale
      Tensor dp = g.virt(F, L.s_dim(), L.s_stride()), dp1 = g.virt(F, L.s_dim(), L.s_stride());
      Tensor dp2 = g.virt(F, L.s_dim(), L.s_stride()), ds = g.virt(F, L.s_dim(), L.s_stride());
      g.matmul(dO, vt, dp);
      g.pointwise(CUDNN_POINTWISE_SUB, F, dp, rows, nullptr, dp1);
      g.pointwise(CUDNN_POINTWISE_MUL, F, dp1, p_, nullptr, dp2);
      g.pointwise(CUDNN_POINTWISE_MUL, F, dp2, scale, nullptr, ds);
      // dK = dS^T Q (summed over each group)
      Tensor dst = g.virt(io, L.s_dim(), L.st_stride());
      g.reshape(ds, dst);
      if (gqa) {
        Tensor dk_full = g.virt(io, L.full_dim(), L.full_stride());
        g.matmul(dst, q, dk_full);
        g.reduction(CUDNN_REDUCE_TENSOR_ADD, dk_full, dk);
      } else {
        g.matmul(dst, q, dk);
      }
      // dQ = dS K, accumulated in fp32, then rounded
      Tensor k = g.virt(io, L.kv_dim(), L.kv_stride());
      g.reshape(kt, k);
      g.matmul(ds, k, dq_acc);
      g.pointwise(CUDNN_POINTWISE_IDENTITY, F, dq_acc, nullptr, nullptr, dq);
      p.bwd = g.plan(handle, "backward");
    }
    auto ws = [&](Descs& d, cudnnBackendDescriptor_t plan) {
      int64_t n = 0, bytes = 0;
      d.check(lib.getAttr(plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &n, &bytes),
              "plan workspace");
      return static_cast<size_t>(bytes);
    };
    p.fwd_ws = ws(p.fwd_descs, p.fwd);
    p.bwd_ws = ws(p.bwd_descs, p.bwd);
    p.scale = a.scale;
  }

  void run(Descs& d, cudnnBackendDescriptor_t plan, std::vector<int64_t> uids, std::vector<void*> ptrs, void* ws) {
    d.check(lib.setStream(handle, stream), "cudnnSetStream");
    Descs pack(lib);
    auto vp = pack.make(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, "variant pack");
    pack.set(vp, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, uids.data(), static_cast<int64_t>(uids.size()),
             "variant uids");
    pack.set(vp, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, ptrs.data(),
             static_cast<int64_t>(ptrs.size()), "variant pointers");
    pack.set(vp, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, &ws, 1, "variant workspace");
    pack.finalize(vp, "variant pack finalize");
    d.check(lib.execute(handle, plan, vp), "cudnnBackendExecute");
  }
};

CudnnAttention::CudnnAttention(const Context& ctx) : impl_(std::make_unique<Impl>()) {
  Impl& I = *impl_;
  I.sm = ctx.sm_version();
  I.stream = ctx.stream();
  I.status = I.lib.open();
  if (!I.status.empty()) return;
  I.version = I.lib.getVersion();
  if (I.version < 90000) {
    I.status = fmt::format("cuDNN {} is older than 9.0", I.version);
    return;
  }
  if (cudnnStatus_t st = I.lib.create(&I.handle); st != CUDNN_STATUS_SUCCESS) {
    I.handle = nullptr;
    I.status = "cudnnCreate: " + I.lib.describe(st);
    return;
  }
  I.ok = true;
  I.status = fmt::format("cuDNN {}.{}.{}", I.version / 10000, I.version / 100 % 100, I.version % 100);
}

CudnnAttention::~CudnnAttention() = default;

bool CudnnAttention::loaded() const { return impl_->ok; }
std::string CudnnAttention::status() const { return impl_->status; }
const std::string& CudnnAttention::refusal() const { return impl_->refusal; }

bool CudnnAttention::supports(Storage s, const AttnShape& a) { return impl_->plans(s, a) != nullptr; }

size_t CudnnAttention::workspace_bytes(Storage s, const AttnShape& a) {
  const Impl::Plans* p = impl_->plans(s, a);
  return p ? std::max(p->fwd_ws, p->bwd_ws) : 0;
}

void CudnnAttention::forward(Storage s, const AttnShape& a, const void* q, const void* k, const void* v, void* out,
                             float* lse, void* workspace) {
  Impl::Plans* p = impl_->plans(s, a);
  if (!p) fail("cuDNN attention: no plan for B{} T{} ({})", a.batch, a.seq, impl_->refusal);
  float scale = a.scale, neg_inf = -std::numeric_limits<float>::infinity();
  impl_->run(p->fwd_descs, p->fwd, {kQ, kK, kV, kO, kStats, kScale, kNegInf},
             {const_cast<void*>(q), const_cast<void*>(k), const_cast<void*>(v), out, lse, &scale, &neg_inf}, workspace);
}

void CudnnAttention::backward(Storage s, const AttnShape& a, const void* q, const void* k, const void* v,
                              const void* out, const float* lse, const void* dout, void* dq, void* dk, void* dv,
                              float* row_sums, float* dq_accum, void* workspace) {
  Impl::Plans* p = impl_->plans(s, a);
  if (!p) fail("cuDNN attention: no plan for B{} T{} ({})", a.batch, a.seq, impl_->refusal);
  float scale = a.scale, neg_inf = -std::numeric_limits<float>::infinity(), one = 1.0f;
  if (impl_->version < 90600)  // before 9.6 the dQ accumulator comes in zeroed
    FT_CUDA(cudaMemsetAsync(dq_accum, 0, static_cast<size_t>(a.batch * a.seq * a.heads * a.head_dim) * 4, impl_->stream));
  impl_->run(p->bwd_descs, p->bwd, {kQ, kK, kV, kO, kDO, kStats, kDQ, kDK, kDV, kRowSums, kDQAccum, kScale, kNegInf, kOne},
             {const_cast<void*>(q), const_cast<void*>(k), const_cast<void*>(v), const_cast<void*>(out),
              const_cast<void*>(dout), const_cast<float*>(lse), dq, dk, dv, row_sums, dq_accum, &scale, &neg_inf, &one},
             workspace);
}

#else  // no cuDNN headers at build time: never in use

struct CudnnAttention::Impl {
  std::string refusal;
};
CudnnAttention::CudnnAttention(const Context&) : impl_(std::make_unique<Impl>()) {}
CudnnAttention::~CudnnAttention() = default;
bool CudnnAttention::loaded() const { return false; }
std::string CudnnAttention::status() const { return "built without cuDNN headers"; }
const std::string& CudnnAttention::refusal() const { return impl_->refusal; }
bool CudnnAttention::supports(Storage, const AttnShape&) { return false; }
size_t CudnnAttention::workspace_bytes(Storage, const AttnShape&) { return 0; }
void CudnnAttention::forward(Storage, const AttnShape&, const void*, const void*, const void*, void*, float*, void*) {
  fail("cuDNN attention: built without cuDNN headers");
}
void CudnnAttention::backward(Storage, const AttnShape&, const void*, const void*, const void*, const void*,
                              const float*, const void*, void*, void*, void*, float*, float*, void*) {
  fail("cuDNN attention: built without cuDNN headers");
}

#endif

}  // namespace ftune::cuda

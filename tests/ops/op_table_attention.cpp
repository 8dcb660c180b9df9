// Op rows for attention: the reference GPU attention (attention.h) against the CPU twin in fp32,
// bf16 and fp16 storage, and the tensor-core flash attention (bf16, fp16, and fp16 on the sm_75
// code path forced on any GPU) against that reference run in fp32 storage on the same rounded
// values (the two kernels are interchangeable by contract, lse included), plus the sm_75 path
// against the default fp16 one. GQA, packed documents, lengths that are not a multiple of any
// block, forward and backward; the Llama-2-7B shape once per variant, with its speed printed (never
// asserted).
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <cmath>
#include <cstdio>
#include <string>

#include "../test_util.h"
#include "attention_outputs.h"
#include "op_harness.h"
#include "ops/cpu/attention.h"
#include "ops/cuda/attention.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/flash_attention.h"

namespace ftune::ops {

Outputs flash_attention_outputs(const cuda::Context& ctx, Dtype dt, const cuda::FlashOptions& o,
                                const cuda::AttnShape& a, const Tensors& t) {
  const auto it = t.i.find("doc");
  const std::vector<int32_t> doc = it == t.i.end() ? std::vector<int32_t>{} : it->second;
  auto ddoc = cuda::DeviceBuffer::from(doc.empty() ? std::vector<int32_t>{0} : doc);
  const int32_t* dp = doc.empty() ? nullptr : ddoc.as<int32_t>();
  const size_t nq = t.at("q").size(), nk = t.at("k").size(), nl = static_cast<size_t>(a.batch * a.heads * a.seq);
  const cuda::Storage s = storage(dt);
  auto q = upload(dt, t.at("q")), k = upload(dt, t.at("k")), v = upload(dt, t.at("v")), dout = upload(dt, t.at("dout"));
  cuda::DeviceBuffer out(nq * 2), dq(nq * 2), dk(nk * 2), dv(nk * 2), lse(nl * 4), delta(nl * 4),
      scratch(static_cast<size_t>(cuda::flash_attention_scratch_floats(a, o)) * 4);
  cuda::flash_attention_forward(ctx, s, a, q.data(), k.data(), v.data(), dp, out.data(), lse.as<float>(), o);
  cuda::flash_attention_backward(ctx, s, a, q.data(), k.data(), v.data(), dp, out.data(), lse.as<float>(), dout.data(),
                                 dq.data(), dk.data(), dv.data(), delta.as<float>(), scratch.as<float>(), o);
  return Outputs{{"out", download(ctx, dt, out, nq)}, {"lse", download(ctx, Dtype::F32, lse, nl)},
                 {"dq", download(ctx, dt, dq, nq)},   {"dk", download(ctx, dt, dk, nk)},
                 {"dv", download(ctx, dt, dv, nk)}};
}

namespace {

struct Case {
  int64_t batch, seq, heads, kv, d;
  int max_doc;  // packed documents of 1..max_doc tokens; 0: one document per row; -n: ids drawn from 0..n-1
};

std::string describe(const Case& c) {
  return fmt::format("B{} T{} h{}/{} d{} docs<={}", c.batch, c.seq, c.heads, c.kv, c.d, c.max_doc);
}

// Document ids [B*T]: empty for one document per row; else restarting per row and never decreasing,
// as the packer writes them, or (max_doc < 0) drawn at random, which the kernels must handle too.
std::vector<int32_t> doc_ids(const Case& c, Rng& r) {
  std::vector<int32_t> doc;
  if (c.max_doc < 0)
    for (int64_t i = 0; i < c.batch * c.seq; ++i) doc.push_back(static_cast<int32_t>(r.below(-c.max_doc)));
  if (c.max_doc > 0)
    for (int64_t b = 0; b < c.batch; ++b)
      for (int64_t t = 0, id = 0, left = 0; t < c.seq; ++t, --left) {
        if (left == 0) left = 1 + static_cast<int64_t>(r.below(c.max_doc)), ++id;
        doc.push_back(static_cast<int32_t>(id));
      }
  return doc;
}

void add_inputs(OpCase& op, const Case& c) {
  const int64_t N = c.batch * c.seq;
  op.inputs = {{"q", N * c.heads * c.d}, {"k", N * c.kv * c.d}, {"v", N * c.kv * c.d}, {"dout", N * c.heads * c.d}};
  op.prepare = [c](Tensors& t, Rng& r) { t.i["doc"] = doc_ids(c, r); };
}

cuda::AttnShape gpu_shape(const Case& c) {
  return {c.batch, c.seq, c.heads, c.kv, c.d, 1.0f / std::sqrt(static_cast<float>(c.d))};
}

// The reference GPU attention in storage dt: out, lse, dq, dk, dv (lse only when with_lse).
Outputs gpu_attention(const cuda::Context& ctx, Dtype dt, const Case& c, const Tensors& t, bool with_lse) {
  const auto& doc = t.ints("doc");
  auto ddoc = cuda::DeviceBuffer::from(doc.empty() ? std::vector<int32_t>{0} : doc);
  const int32_t* dp = doc.empty() ? nullptr : ddoc.as<int32_t>();
  const cuda::AttnShape a = gpu_shape(c);
  const size_t nq = t.at("q").size(), nk = t.at("k").size(), nl = static_cast<size_t>(c.batch * c.heads * c.seq);
  const size_t es = storage_bytes(storage(dt));
  auto q = upload(dt, t.at("q")), k = upload(dt, t.at("k")), v = upload(dt, t.at("v")), dout = upload(dt, t.at("dout"));
  cuda::DeviceBuffer out(nq * es), dq(nq * es), dk(nk * es), dv(nk * es), lse(nl * 4), delta(nl * 4);
  cuda::attention_forward(ctx, storage(dt), a, q.data(), k.data(), v.data(), dp, out.data(), lse.as<float>());
  cuda::attention_backward(ctx, storage(dt), a, q.data(), k.data(), v.data(), dp, out.data(), lse.as<float>(),
                           dout.data(), dq.data(), dk.data(), dv.data(), delta.as<float>());
  Outputs o{{"out", download(ctx, dt, out, nq)},
            {"dq", download(ctx, dt, dq, nq)},
            {"dk", download(ctx, dt, dk, nk)},
            {"dv", download(ctx, dt, dv, nk)}};
  if (with_lse) o["lse"] = download(ctx, Dtype::F32, lse, nl);
  return o;
}

// ---- reference attention against the CPU twin ----

OpCase attention_case(Dtype dt, const Case& c) {
  OpCase op;
  op.name = "attention " + describe(c) + " " + dtype_name(dt);
  op.dtype = dt;
  add_inputs(op, c);
  op.reference = [c](const Tensors& t) {
    const auto& doc = t.ints("doc");
    const cpu::AttnShape s{c.batch, c.seq, c.heads, c.kv, c.d, gpu_shape(c).scale};
    const auto &q = t.at("q"), &k = t.at("k"), &v = t.at("v");
    Floats probs(c.batch * c.heads * c.seq * c.seq), out(q.size()), dq(q.size()), dk(k.size()), dv(v.size());
    cpu::attention_forward(s, q.data(), k.data(), v.data(), doc.empty() ? nullptr : doc.data(), probs.data(), out.data());
    cpu::attention_backward(s, q.data(), k.data(), v.data(), probs.data(), t.at("dout").data(), dq.data(), dk.data(),
                            dv.data());
    return Outputs{{"out", out}, {"dq", dq}, {"dk", dk}, {"dv", dv}};
  };
  op.launch = [dt, c](const cuda::Context& ctx, const Tensors& t) { return gpu_attention(ctx, dt, c, t, false); };
  for (const char* out : {"out", "dq", "dk", "dv"})
    op.checks.push_back(
        bound(out, dt, {2e-5, "fp32: order of sums and __expf (~1e-6)"},
              {1.5e-2, "outputs rounded to bf16 once, and the backward reads the bf16 out for its row term: ~1e-2"},
              {2e-3, "the same roundings at fp16's 2^-12 rms: 8x below bf16's bound"}));
  return op;
}

std::vector<OpCase> attention_rows() {
  std::vector<OpCase> rows;
  for (Dtype dt : kAllDtypes)
    for (const Case& c : {Case{1, 1, 1, 1, 32, 0}, Case{2, 37, 8, 2, 64, 0}, Case{2, 130, 4, 4, 128, 40},
                          Case{1, 67, 8, 1, 64, 40}, Case{2, 45, 4, 2, 16, 40}, Case{1, 29, 2, 1, 80, 0}})
      rows.push_back(attention_case(dt, c));
  return rows;
}

TEST(GpuOps, Attention) {
  FTUNE_SKIP_WITHOUT_CUDA();
  cuda::Context ctx;
  run_cases(ctx, attention_rows());
}

// ---- flash attention against the reference kernel ----

// A flash attention variant: storage and code path (turing: the sm_75 kernels, forced on sm_80+).
struct Flash {
  Dtype dt;
  bool turing = false;
  bool deterministic = false;  // dQ's adds in key-block order
  cuda::FlashOptions options() const { return cuda::FlashOptions{turing, deterministic}; }
  std::string name() const {
    return std::string(dtype_name(dt)) + (turing ? " sm75-path" : "") + (deterministic ? " deterministic" : "");
  }
};

bool flash_usable(const cuda::Context& ctx, const Flash& f, const Case& c) {
  return cuda::flash_attention_supported(ctx, storage(f.dt), cuda::AttnShape{c.batch, c.seq, c.heads, c.kv, c.d, 1.0f},
                                         f.options());
}

// Flash forward then backward in f's storage and path: out, lse, dq, dk, dv.
Outputs flash_attention(const cuda::Context& ctx, const Flash& f, const Case& c, const Tensors& t) {
  return flash_attention_outputs(ctx, f.dt, f.options(), gpu_shape(c), t);
}

// Bounds of a flash variant against the fp32 reference. fp16 has 10 stored mantissa bits against
// bf16's 7: the same roundings (P and dS as mma inputs, out once, delta from the rounded out) at a
// unit 8x smaller give errors 8x smaller, and nothing else in the error (fp32 sums, ex2.approx, both
// ~1e-6) comes near; so the fp16 bounds are bf16's / 8, with the same 2-3x margin over the expected
// error. lse is fp32 on both sides whatever the storage.
std::vector<Check> flash_checks(Dtype dt) {
  if (dt == Dtype::BF16)
    return {{"out", 1e-2, "P rounded to bf16 for the P.V mma (2^-9 per weight), out rounded once: a few 1e-3"},
            {"lse", 1e-4, "fp32 sums of exact bf16 products on both sides: summation order and ex2.approx (~1e-6)"},
            {"dq", 2e-2, "P and dS rounded to bf16 for four mmas, delta = dO.O from the bf16 out: ~1e-2 at worst"},
            {"dk", 2e-2, "P and dS rounded to bf16 for four mmas, delta = dO.O from the bf16 out: ~1e-2 at worst"},
            {"dv", 2e-2, "P and dS rounded to bf16 for four mmas, delta = dO.O from the bf16 out: ~1e-2 at worst"}};
  return {{"out", 1.25e-3, "bf16's bound / 8: P rounded to fp16 (2^-12 per weight), out rounded once: ~5e-4"},
          {"lse", 1e-4, "fp32 sums of exact fp16 products on both sides: summation order and ex2.approx (~1e-6)"},
          {"dq", 2.5e-3, "bf16's bound / 8: P and dS rounded to fp16 for four mmas, delta from the fp16 out"},
          {"dk", 2.5e-3, "bf16's bound / 8: P and dS rounded to fp16 for four mmas, delta from the fp16 out"},
          {"dv", 2.5e-3, "bf16's bound / 8: P and dS rounded to fp16 for four mmas, delta from the fp16 out"}};
}

// ctx: where the reference kernel runs (the row must not outlive it).
OpCase flash_case(const cuda::Context& ctx, const Flash& f, const Case& c) {
  OpCase op;
  op.name = "flash_attention " + describe(c) + " " + f.name();
  op.dtype = f.dt;
  add_inputs(op, c);
  // The reference kernel in fp32 storage on the same rounded values.
  op.reference = [&ctx, c](const Tensors& t) { return gpu_attention(ctx, Dtype::F32, c, t, true); };
  op.launch = [f, c](const cuda::Context& ctx, const Tensors& t) { return flash_attention(ctx, f, c, t); };
  op.checks = flash_checks(f.dt);
  return op;
}

// The sm_75 path against the default fp16 path on the same device: a fault of the sm_75 code
// (m16n8k8 fragments, synchronous loads, its smaller tiles and one stage) shows here directly.
OpCase flash_sm75_vs_default_case(const cuda::Context& ctx, const Case& c) {
  OpCase op;
  op.name = "flash_attention " + describe(c) + " f16 sm75-path vs default";
  op.dtype = Dtype::F16;
  add_inputs(op, c);
  op.reference = [&ctx, c](const Tensors& t) { return flash_attention(ctx, Flash{Dtype::F16, false}, c, t); };
  op.launch = [c](const cuda::Context& ctx, const Tensors& t) { return flash_attention(ctx, Flash{Dtype::F16, true}, c, t); };
  // The two paths share the largest errors against exact math (out rounded to fp16 once, delta from
  // it), so they differ by much less than either differs from the fp32 reference: only where P and
  // dS round (other tiles, so other running maxima) and the order of the fp32 sums, ~5e-5. The
  // bounds are ~6x that, well below the fp16 rows' 1.25e-3 and 2.5e-3.
  op.checks = {{"out", 2e-4, "P rounded to fp16 against other running maxima, the same final rounding: ~2e-5"},
               {"lse", 1e-5, "fp32 on both sides with the same ex2.approx: only the summation order differs (~1e-7)"},
               {"dq", 4e-4, "P and dS rounded to fp16 from sums in another order, dq_acc added in another order: ~5e-5"},
               {"dk", 4e-4, "P and dS rounded to fp16 from sums in another order: ~6e-5"},
               {"dv", 4e-4, "P rounded to fp16 from sums in another order: ~5e-5"}};
  return op;
}

// GQA, packed documents (and random ids), lengths that are not a multiple of any block (the sm_75
// path's are 32 and 64 rows, the default's 64 and 128), a single token.
const std::vector<Case>& flash_shapes() {
  static const std::vector<Case> shapes = {
      Case{2, 256, 8, 2, 64, 0},  Case{1, 1000, 4, 4, 128, 300}, Case{2, 37, 4, 1, 128, 0},
      Case{1, 1, 2, 2, 64, 0},    Case{2, 130, 8, 8, 64, 40},    Case{1, 300, 8, 2, 128, 60},
      Case{3, 200, 4, 2, 64, 1},  Case{2, 300, 4, 2, 64, -3},    Case{1, 260, 4, 1, 128, -2},
      Case{2, 97, 8, 4, 128, 30}};
  return shapes;
}

void run_flash_rows(const Flash& f) {
  cuda::Context ctx;
  if (!flash_usable(ctx, f, Case{1, 1, 1, 1, 128, 0}))
    GTEST_SKIP() << "flash attention " << f.name() << " not supported on " << ctx.name();
  std::vector<OpCase> rows;
  for (const Case& c : flash_shapes()) rows.push_back(flash_case(ctx, f, c));
  run_cases(ctx, rows);
}

TEST(GpuOps, FlashAttention) {
  FTUNE_SKIP_WITHOUT_CUDA();
  run_flash_rows(Flash{Dtype::BF16, false});
}

TEST(GpuOps, FlashAttentionF16) {
  FTUNE_SKIP_WITHOUT_CUDA();
  run_flash_rows(Flash{Dtype::F16, false});
}

TEST(GpuOps, FlashAttentionF16Sm75Path) {
  FTUNE_SKIP_WITHOUT_CUDA();
  run_flash_rows(Flash{Dtype::F16, true});
}

TEST(GpuOps, FlashAttentionSm75PathMatchesDefault) {
  FTUNE_SKIP_WITHOUT_CUDA();
  cuda::Context ctx;
  const Case probe{1, 1, 1, 1, 128, 0};
  if (!flash_usable(ctx, Flash{Dtype::F16, false}, probe) || !flash_usable(ctx, Flash{Dtype::F16, true}, probe))
    GTEST_SKIP() << "fp16 flash attention paths not both supported on " << ctx.name();
  std::vector<OpCase> rows;
  for (const Case& c : flash_shapes())
    // Where every query sees only its own key (one token, one-token documents) dq and dk are 0,
    // and both paths return rounding noise that no relative bound fits; the rows against the fp32
    // reference check those shapes.
    if (c.seq > 1 && c.max_doc != 1) rows.push_back(flash_sm75_vs_default_case(ctx, c));
  run_cases(ctx, rows);
}

// Deterministic mode, on every shape, path and storage: against the fp32 reference with the
// default's bounds, each output bit-identical on a second launch (the harness runs it twice); and
// against the default mode on the same inputs: the forward, dk and dv bit for bit (nothing of theirs
// changes), dq within the reordering of its fp32 sums (1e-3 relative: a few 16-bit roundings moved
// by one unit; the default's own sums come in an unordered way).
OpCase flash_deterministic_vs_default_case(const cuda::Context& ctx, const Flash& base, const Case& c) {
  OpCase op;
  Flash det = base;
  det.deterministic = true;
  op.name = "flash_attention " + describe(c) + " " + det.name() + " vs default";
  op.dtype = base.dt;
  add_inputs(op, c);
  op.reference = [&ctx, base, c](const Tensors& t) { return flash_attention(ctx, base, c, t); };
  op.launch = [det, c](const cuda::Context& ctx, const Tensors& t) { return flash_attention(ctx, det, c, t); };
  op.checks = {{"out", 0, "the forward is not changed"},
               {"lse", 0, "the forward is not changed"},
               {"dq", 1e-3, "the same fp32 shares summed in key-block order instead of the atomics' order: ~1e-4"},
               {"dk", 0, "dK is kept in registers either way"},
               {"dv", 0, "dV is kept in registers either way"}};
  return op;
}

TEST(GpuOps, FlashAttentionDeterministic) {
  FTUNE_SKIP_WITHOUT_CUDA();
  cuda::Context ctx;
  int variants = 0;
  for (const Flash& base : {Flash{Dtype::BF16, false}, Flash{Dtype::F16, false}, Flash{Dtype::F16, true}}) {
    if (!flash_usable(ctx, base, Case{1, 1, 1, 1, 128, 0})) continue;
    ++variants;
    Flash det = base;
    det.deterministic = true;
    std::vector<OpCase> rows;
    for (const Case& c : flash_shapes()) {
      rows.push_back(flash_case(ctx, det, c));
      rows.back().deterministic = true;
      if (c.seq > 1 && c.max_doc != 1) rows.push_back(flash_deterministic_vs_default_case(ctx, base, c));
    }
    run_cases(ctx, rows);
  }
  if (variants == 0) GTEST_SKIP() << "flash attention not supported on " << ctx.name();
}

struct Event {
  cudaEvent_t e = nullptr;
  Event() { FT_CUDA(cudaEventCreate(&e)); }
  ~Event() { cudaEventDestroy(e); }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
};

// The Llama-2-7B training shape, per variant: checked once as a row, then timed (printed only).
TEST(GpuOps, FlashAttentionLlamaShapeAndSpeed) {
  FTUNE_SKIP_WITHOUT_CUDA();
  cuda::Context ctx;
  const Case c{4, 2048, 32, 32, 128, 0};
  int timed = 0;
  for (const Flash& f : {Flash{Dtype::BF16, false}, Flash{Dtype::BF16, false, true}, Flash{Dtype::F16, false},
                         Flash{Dtype::F16, true}}) {
    if (!flash_usable(ctx, f, c)) {
      std::printf("flash %s not supported on %s\n", f.name().c_str(), ctx.name().c_str());
      continue;
    }
    ++timed;
    run_case(ctx, flash_case(ctx, f, c));

    const cuda::AttnShape a = gpu_shape(c);
    const cuda::Storage s = storage(f.dt);
    const size_t nq = static_cast<size_t>(c.batch * c.seq * c.heads * c.d), nl = static_cast<size_t>(c.batch * c.heads * c.seq);
    const Floats host = round_to(f.dt, testing::randn(nq, 7));
    auto bq = upload(f.dt, host), bk = upload(f.dt, host), bv = upload(f.dt, host), bdo = upload(f.dt, host);
    cuda::DeviceBuffer bo(nq * 2), bdq(nq * 2), bdk(nq * 2), bdv(nq * 2), lse(nl * 4), delta(nl * 4),
        scratch(static_cast<size_t>(cuda::flash_attention_scratch_floats(a, f.options())) * 4);
    auto fwd = [&] {
      cuda::flash_attention_forward(ctx, s, a, bq.data(), bk.data(), bv.data(), nullptr, bo.data(), lse.as<float>(),
                                    f.options());
    };
    auto bwd = [&] {
      cuda::flash_attention_backward(ctx, s, a, bq.data(), bk.data(), bv.data(), nullptr, bo.data(), lse.as<float>(),
                                     bdo.data(), bdq.data(), bdk.data(), bdv.data(), delta.as<float>(),
                                     scratch.as<float>(), f.options());
    };
    const double fwd_flops = 4.0 * c.batch * c.heads * c.seq * c.seq * c.d / 2, bwd_flops = 2.5 * fwd_flops;
    constexpr int kReps = 5;
    Event e0, e1, e2;
    fwd(), bwd();  // warm-up
    FT_CUDA(cudaEventRecord(e0.e, ctx.stream()));
    for (int i = 0; i < kReps; ++i) fwd();
    FT_CUDA(cudaEventRecord(e1.e, ctx.stream()));
    for (int i = 0; i < kReps; ++i) bwd();
    FT_CUDA(cudaEventRecord(e2.e, ctx.stream()));
    ctx.synchronize();
    float ms_f = 0, ms_b = 0;
    FT_CUDA(cudaEventElapsedTime(&ms_f, e0.e, e1.e));
    FT_CUDA(cudaEventElapsedTime(&ms_b, e1.e, e2.e));
    ms_f /= kReps, ms_b /= kReps;
    std::printf("flash %s B4 T2048 h32 d128 causal on %s: forward %.3f ms %.1f TFLOP/s, backward %.3f ms %.1f TFLOP/s\n",
                f.name().c_str(), ctx.name().c_str(), ms_f, fwd_flops / (ms_f * 1e-3) / 1e12, ms_b,
                bwd_flops / (ms_b * 1e-3) / 1e12);
  }
  if (timed == 0) GTEST_SKIP() << "flash attention not supported on " << ctx.name();
}

}  // namespace
}  // namespace ftune::ops

// Op rows for the cuBLASLt GEMM (every transpose combination, odd shapes, fp32/bf16/fp16 operands,
// fp32 and 16-bit outputs, beta = 1 accumulation, a separate C fused into the epilogue) and the
// chunked lm_head + cross-entropy (loss, d hidden and the lm_head's weight gradient, ignored rows,
// vocabularies of Llama 2 and Llama 3 size), against the CPU twins.
#include <string>
#include <tuple>
#include <utility>

#include "op_harness.h"
#include "ops/cpu/cross_entropy.h"
#include "ops/cpu/matmul.h"
#include "ops/cuda/cross_entropy.h"
#include "ops/cuda/gemm.h"

namespace ftune::ops {
namespace {

// ---- GEMM ----

struct GemmShape {
  int64_t m, n, k;
};

std::string describe(const GemmShape& s) {
  return std::to_string(s.m) + "x" + std::to_string(s.n) + "x" + std::to_string(s.k);
}

// D = 0.5 op(A) op(B) + beta C in place (D = C), operands of the row's dtype, C/D of `out`
// (fp32, or the operands' own 16-bit type).
OpCase gemm_case(Dtype dt, Dtype out, GemmShape s, bool ta, bool tb, float beta) {
  OpCase c;
  c.name = "gemm " + describe(s) + " ta" + std::to_string(ta) + " tb" + std::to_string(tb) + " beta" +
           std::to_string(static_cast<int>(beta)) + " " + dtype_name(dt) + "->" + dtype_name(out);
  c.dtype = dt;
  c.inputs = {{"a", s.m * s.k}, {"b", s.k * s.n}, {"c", s.m * s.n, 0, 1, out != Dtype::F32}};
  c.reference = [=](const Tensors& t) {
    Floats d = t.at("c");
    cpu::gemm(ta, tb, s.m, s.n, s.k, 0.5f, t.at("a").data(), t.at("b").data(), beta, d.data());
    return Outputs{{"d", d}};
  };
  c.launch = [=](const cuda::Context& ctx, const Tensors& t) {
    auto a = upload(dt, t.at("a")), b = upload(dt, t.at("b")), d = upload(out, t.at("c"));
    cuda::gemm(ctx, s.m, s.n, s.k, 0.5f, {a.data(), storage(dt), ta}, {b.data(), storage(dt), tb}, beta, d.data(),
               storage(out));
    return Outputs{{"d", download(ctx, out, d, s.m * s.n)}};
  };
  c.checks = {bound("d", out,
                    {1e-5, "operands exact in their type, fp32 products and accumulation (no TF32): summation order only"},
                    {4e-3, "one bf16 rounding of the result (2^-9 rms, 2^-8 at most); beta*C read from bf16 exactly"},
                    {5e-4, "one fp16 rounding of the result (2^-12 rms, 2^-11 at most); beta*C read from fp16 exactly"})};
  return c;
}

std::vector<OpCase> gemm_rows() {
  // Operand and output types cuBLASLt runs: fp32 operands need an fp32 output.
  const std::pair<Dtype, Dtype> types[] = {{Dtype::F32, Dtype::F32},   {Dtype::BF16, Dtype::F32},
                                           {Dtype::BF16, Dtype::BF16}, {Dtype::F16, Dtype::F32},
                                           {Dtype::F16, Dtype::F16}};
  std::vector<OpCase> rows;
  for (GemmShape s : {GemmShape{1, 1, 1}, {37, 53, 67}, {256, 512, 1024}, {8, 4096, 16}})
    for (int t = 0; t < 4; ++t)
      for (auto [dt, out] : types)
        for (float beta : {0.0f, 1.0f}) rows.push_back(gemm_case(dt, out, s, t & 1, t & 2, beta));
  return rows;
}

// D = A B^T + C with C and D distinct (the residual add fused into the epilogue), all of the row's
// dtype: C is read, not written, and D gets the sum.
OpCase gemm_separate_c_case(Dtype dt) {
  OpCase c;
  const int64_t m = 45, n = 96, k = 80;
  c.name = std::string("gemm separate C and D 45x96x80 ") + dtype_name(dt);
  c.dtype = dt;
  c.inputs = {{"a", m * k}, {"b", n * k}, {"c", m * n}};
  c.reference = [=](const Tensors& t) {
    Floats d = t.at("c");
    cpu::gemm(false, true, m, n, k, 1.0f, t.at("a").data(), t.at("b").data(), 1.0f, d.data());
    return Outputs{{"d", d}, {"c", t.at("c")}};
  };
  c.launch = [=](const cuda::Context& ctx, const Tensors& t) {
    auto a = upload(dt, t.at("a")), b = upload(dt, t.at("b")), cm = upload(dt, t.at("c"));
    cuda::DeviceBuffer d(m * n * storage_bytes(storage(dt)));
    cuda::gemm(ctx, m, n, k, 1.0f, {a.data(), storage(dt), false}, {b.data(), storage(dt), true}, 1.0f, cm.data(),
               d.data(), storage(dt));
    return Outputs{{"d", download(ctx, dt, d, m * n)}, {"c", download(ctx, dt, cm, m * n)}};
  };
  c.checks = {bound("d", dt, {1e-5, "fp32 accumulation: summation order only"},
                    {4e-3, "one bf16 rounding of the result: 2^-9 rms, 2^-8 at most"},
                    {5e-4, "one fp16 rounding of the result: 2^-12 rms, 2^-11 at most"}),
              {"c", 0.0, "C is only read: untouched, bit for bit"}};
  return c;
}

TEST(GpuOps, Gemm) {
  FTUNE_SKIP_WITHOUT_CUDA();
  cuda::Context ctx;
  run_cases(ctx, gemm_rows());
}

TEST(GpuOps, GemmSeparateInputAndOutputMatrices) {
  FTUNE_SKIP_WITHOUT_CUDA();
  cuda::Context ctx;
  run_cases(ctx, {gemm_separate_c_case(Dtype::F32), gemm_separate_c_case(Dtype::BF16), gemm_separate_c_case(Dtype::F16)});
}

// ---- lm_head + cross-entropy ----

// h: [rows, dim], w: [vocab, dim] in the row's dtype; one target in five ignored (-100). with_dw:
// the lm_head's weight gradient accumulated too (full fine-tuning), onto a small non-zero dw0.
OpCase cross_entropy_case(Dtype dt, int64_t rows, int64_t dim, int64_t vocab, bool with_dw) {
  OpCase c;
  c.name = "lm_head_cross_entropy " + std::to_string(rows) + "x" + std::to_string(dim) + " vocab " +
           std::to_string(vocab) + (with_dw ? " +dw " : " ") + dtype_name(dt);
  c.dtype = dt;
  // fp16 rows carry a loss scale of 1024 in grad_scale, as fp16 training does (optim/loss_scaler.h),
  // so the logit gradients stay clear of fp16's subnormals; the relative errors do not depend on it.
  const float loss_scale = dt == Dtype::F16 ? 1024.0f : 1.0f;
  c.inputs = {{"h", rows * dim}, {"w", vocab * dim, 0, 0.1f}};
  // dw0 about 1% of the gradient's norm: an overwrite instead of an add shows in the fp32 rows.
  if (with_dw) c.inputs.push_back({"dw0", vocab * dim, 0, 1e-5f * loss_scale, false});
  c.prepare = [=](Tensors& t, Rng& r) {
    auto& target = t.i["target"];
    target.resize(rows);
    int64_t count = 0;
    for (auto& x : target) x = r.below(5) == 0 ? -100 : static_cast<int32_t>(r.below(vocab)), count += x >= 0;
    ASSERT_GT(count, 0);
    t.f["scale"] = {loss_scale / static_cast<float>(count)};
  };
  c.reference = [=](const Tensors& t) {
    Floats dh(rows * dim), dw = with_dw ? t.at("dw0") : Floats();
    const auto ref = cpu::lm_head_cross_entropy(t.at("h").data(), t.at("w").data(), t.ints("target").data(), rows, dim,
                                                vocab, t.at("scale")[0], dh.data(), 64, with_dw ? dw.data() : nullptr);
    Outputs o{{"loss_sum", {static_cast<float>(ref.loss_sum)}}, {"dh", dh}};
    if (with_dw) o["dw"] = dw;
    return o;
  };
  c.launch = [=](const cuda::Context& ctx, const Tensors& t) {
    auto h = upload(dt, t.at("h")), w = upload(dt, t.at("w")), target = cuda::DeviceBuffer::from(t.ints("target"));
    cuda::DeviceBuffer dw;
    if (with_dw) dw = cuda::DeviceBuffer::from(t.at("dw0"));
    const int64_t chunk = 16;
    cuda::DeviceBuffer scratch(chunk * vocab * 4), loss(rows * 4), dh(rows * dim * 4);
    cuda::lm_head_cross_entropy(ctx, storage(dt), h.data(), w.data(), target.as<int32_t>(), rows, dim, vocab,
                                t.at("scale")[0], loss.as<float>(), dh.data(), scratch.data(), chunk,
                                with_dw ? dw.as<float>() : nullptr);
    double sum = 0;
    for (float l : download(ctx, Dtype::F32, loss, rows)) sum += l;
    Outputs o{{"loss_sum", {static_cast<float>(sum)}}, {"dh", download(ctx, dt, dh, rows * dim)}};
    if (with_dw) o["dw"] = download(ctx, Dtype::F32, dw, vocab * dim);
    return o;
  };
  c.checks = {bound("loss_sum", dt, {1e-5, "fp32: summation order only"},
                    {2e-3, "logits rounded to bf16 once (2^-9), which moves the loss by ~1e-3 relative"},
                    {2.5e-4, "logits rounded to fp16 once (2^-12): 8x below bf16's bound"}),
              bound("dh", dt, {1e-4, "fp32: summation order through the chunked GEMMs"},
                    {1.5e-2, "logits and their gradients rounded to bf16 once each: ~1e-2"},
                    {2e-3, "logits and their gradients rounded to fp16 once each: 8x below bf16's bound"})};
  if (with_dw)
    c.checks.push_back(bound("dw", dt, {1e-4, "fp32: summation order through the chunked GEMMs"},
                             {1.5e-2, "logits and their gradients rounded to bf16 once each, as for dh"},
                             {2e-3, "logits and their gradients rounded to fp16 once each: 8x below bf16's bound"}));
  return c;
}

std::vector<OpCase> cross_entropy_rows() {
  std::vector<OpCase> rows;
  for (Dtype dt : kAllDtypes)
    for (auto [r, dim, vocab] : {std::tuple<int64_t, int64_t, int64_t>{5, 64, 1000}, {67, 256, 32000}, {33, 128, 128256}})
      for (bool with_dw : {false, true}) rows.push_back(cross_entropy_case(dt, r, dim, vocab, with_dw));
  return rows;
}

TEST(GpuOps, CrossEntropy) {
  FTUNE_SKIP_WITHOUT_CUDA();
  cuda::Context ctx;
  run_cases(ctx, cross_entropy_rows());
}

}  // namespace
}  // namespace ftune::ops

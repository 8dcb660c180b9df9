// Op rows for cuDNN's fused attention (ops/cuda/cudnn_attention.h): forward (out, lse) and backward
// (dq, dk, dv) in bf16 and fp16 against the fp32 CPU attention on the same rounded inputs, with
// grouped-query heads and lengths that are and are not multiples of 64; and at the long shapes,
// where the CPU would take minutes, against ftune's flash kernels. Without libcudnn.so.9 (or on a
// GPU older than sm_80) the rows are skipped, visibly.
#include <fmt/format.h>

#include <cmath>
#include <memory>
#include <string>

#include "../test_util.h"
#include "attention_outputs.h"
#include "op_harness.h"
#include "ops/cpu/attention.h"
#include "ops/cuda/cudnn_attention.h"
#include "ops/cuda/flash_attention.h"

namespace ftune::ops {
namespace {

struct Case {
  int64_t batch, seq, heads, kv, d;
  bool required;  // a shape training uses (T a multiple of 64): cuDNN refusing it is a failure
};

std::string describe(const Case& c) {
  return fmt::format("B{} T{} h{}/{} d{}", c.batch, c.seq, c.heads, c.kv, c.d);
}

cuda::AttnShape shape(const Case& c) {
  return {c.batch, c.seq, c.heads, c.kv, c.d, 1.0f / std::sqrt(static_cast<float>(c.d))};
}

void add_inputs(OpCase& op, const Case& c) {
  const int64_t N = c.batch * c.seq;
  op.inputs = {{"q", N * c.heads * c.d}, {"k", N * c.kv * c.d}, {"v", N * c.kv * c.d}, {"dout", N * c.heads * c.d}};
}

// cuDNN forward then backward in dt: out, lse, dq, dk, dv.
Outputs cudnn_attention(const cuda::Context& ctx, cuda::CudnnAttention& dnn, Dtype dt, const Case& c,
                        const Tensors& t) {
  const cuda::AttnShape a = shape(c);
  const cuda::Storage s = storage(dt);
  const size_t nq = t.at("q").size(), nk = t.at("k").size(), nl = static_cast<size_t>(c.batch * c.heads * c.seq);
  auto q = upload(dt, t.at("q")), k = upload(dt, t.at("k")), v = upload(dt, t.at("v")), dout = upload(dt, t.at("dout"));
  cuda::DeviceBuffer out(nq * 2), dq(nq * 2), dk(nk * 2), dv(nk * 2), lse(nl * 4), rows(nl * 4),
      acc(static_cast<size_t>(cuda::flash_attention_scratch_floats(a)) * 4), ws(dnn.workspace_bytes(s, a));
  dnn.forward(s, a, q.data(), k.data(), v.data(), out.data(), lse.as<float>(), ws.data());
  dnn.backward(s, a, q.data(), k.data(), v.data(), out.data(), lse.as<float>(), dout.data(), dq.data(), dk.data(),
               dv.data(), rows.as<float>(), acc.as<float>(), ws.data());
  return Outputs{{"out", download(ctx, dt, out, nq)}, {"lse", download(ctx, Dtype::F32, lse, nl)},
                 {"dq", download(ctx, dt, dq, nq)},   {"dk", download(ctx, dt, dk, nk)},
                 {"dv", download(ctx, dt, dv, nk)}};
}

// The fp32 CPU attention (one document per row), lse included.
Outputs cpu_reference(const Case& c, const Tensors& t) {
  const cpu::AttnShape s{c.batch, c.seq, c.heads, c.kv, c.d, shape(c).scale};
  const auto &q = t.at("q"), &k = t.at("k"), &v = t.at("v");
  Floats probs(c.batch * c.heads * c.seq * c.seq), out(q.size()), dq(q.size()), dk(k.size()), dv(v.size());
  cpu::attention_forward(s, q.data(), k.data(), v.data(), nullptr, probs.data(), out.data());
  cpu::attention_backward(s, q.data(), k.data(), v.data(), probs.data(), t.at("dout").data(), dq.data(), dk.data(),
                          dv.data());
  // lse[b, h, i] = log sum_{j <= i} exp(scale * q_i . k_j), in double
  Floats lse(c.batch * c.heads * c.seq);
  const int64_t g = c.heads / c.kv;
  for (int64_t b = 0; b < c.batch; ++b)
    for (int64_t h = 0; h < c.heads; ++h)
      for (int64_t i = 0; i < c.seq; ++i) {
        const float* qi = &q[((b * c.seq + i) * c.heads + h) * c.d];
        std::vector<double> sc;
        double mx = -INFINITY;
        for (int64_t j = 0; j <= i; ++j) {
          const float* kj = &k[((b * c.seq + j) * c.kv + h / g) * c.d];
          double dot = 0;
          for (int64_t e = 0; e < c.d; ++e) dot += double(qi[e]) * kj[e];
          sc.push_back(dot * s.scale);
          mx = std::max(mx, sc.back());
        }
        double sum = 0;
        for (double x : sc) sum += std::exp(x - mx);
        lse[(b * c.heads + h) * c.seq + i] = static_cast<float>(mx + std::log(sum));
      }
  return Outputs{{"out", out}, {"lse", lse}, {"dq", dq}, {"dk", dk}, {"dv", dv}};
}

// cuDNN's roundings are those of ftune's flash kernels (P and dS rounded to the storage for the
// mmas, out rounded once, the row sums from the rounded out), so the bounds are the flash rows'.
std::vector<Check> checks(Dtype dt) {
  if (dt == Dtype::BF16)
    return {{"out", 1e-2, "P rounded to bf16 for the P.V mma (2^-9 per weight), out rounded once: a few 1e-3"},
            {"lse", 1e-4, "fp32 sums of exact bf16 products on both sides: summation order and exp (~1e-6)"},
            {"dq", 2e-2, "P and dS rounded to bf16 for four mmas, rowsum(dO.O) from the bf16 out: ~1e-2"},
            {"dk", 2e-2, "P and dS rounded to bf16 for four mmas, rowsum(dO.O) from the bf16 out: ~1e-2"},
            {"dv", 2e-2, "P and dS rounded to bf16 for four mmas, rowsum(dO.O) from the bf16 out: ~1e-2"}};
  return {{"out", 1.25e-3, "bf16's bound / 8: P rounded to fp16 (2^-12 per weight), out rounded once"},
          {"lse", 1e-4, "fp32 sums of exact fp16 products on both sides: summation order and exp (~1e-6)"},
          {"dq", 2.5e-3, "bf16's bound / 8: P and dS rounded to fp16 for four mmas"},
          {"dk", 2.5e-3, "bf16's bound / 8: P and dS rounded to fp16 for four mmas"},
          {"dv", 2.5e-3, "bf16's bound / 8: P and dS rounded to fp16 for four mmas"}};
}

// Against ftune's kernels both sides carry their own roundings of the same size: twice the bound.
std::vector<Check> twice(std::vector<Check> cs) {
  for (Check& c : cs)
    if (c.output != "lse") c.tol *= 2, c.why = "two kernels' roundings, each within: " + c.why;
  return cs;
}

// Rows for the cases cuDNN plans for; the refused ones are printed (and fail when required).
std::vector<OpCase> rows(cuda::CudnnAttention& dnn, const cuda::Context& ctx, bool long_shapes) {
  std::vector<OpCase> out;
  const std::vector<Case> shapes =
      long_shapes ? std::vector<Case>{{1, 2048, 32, 8, 128, true}, {2, 1024, 32, 32, 128, true}}
                  : std::vector<Case>{{2, 128, 4, 2, 64, true},   {1, 256, 8, 8, 128, true}, {2, 192, 8, 1, 128, true},
                                      {2, 100, 8, 2, 128, false}, {1, 67, 4, 1, 64, false}};
  for (Dtype dt : {Dtype::BF16, Dtype::F16})
    for (const Case& c : shapes) {
      if (!dnn.supports(storage(dt), shape(c))) {
        const std::string msg = fmt::format("cuDNN refused {} {}: {}", describe(c), dtype_name(dt), dnn.refusal());
        if (c.required) ADD_FAILURE() << msg;
        else std::printf("%s (not a training shape; ftune's kernels take it)\n", msg.c_str());
        continue;
      }
      OpCase op;
      op.name = "cudnn_attention " + describe(c) + " " + dtype_name(dt) + (long_shapes ? " vs flash" : "");
      op.dtype = dt;
      add_inputs(op, c);
      if (long_shapes) {
        op.reference = [&ctx, dt, c](const Tensors& t) { return flash_attention_outputs(ctx, dt, {}, shape(c), t); };
        op.checks = twice(checks(dt));
      } else {
        op.reference = [c](const Tensors& t) { return cpu_reference(c, t); };
        op.checks = checks(dt);
      }
      op.launch = [&dnn, dt, c](const cuda::Context& ctx, const Tensors& t) {
        return cudnn_attention(ctx, dnn, dt, c, t);
      };
      out.push_back(std::move(op));
    }
  return out;
}

#define FTUNE_SKIP_WITHOUT_CUDNN(dnn, ctx)                                                            \
  if (!(dnn).loaded()) GTEST_SKIP() << "cuDNN not in use: " << (dnn).status();                    \
  if ((ctx).sm_version() < 80) GTEST_SKIP() << "cuDNN's fused attention needs sm_80+"

TEST(GpuOps, CudnnAttention) {
  FTUNE_SKIP_WITHOUT_CUDA();
  cuda::Context ctx;
  cuda::CudnnAttention dnn(ctx);
  FTUNE_SKIP_WITHOUT_CUDNN(dnn, ctx);
  std::printf("%s\n", dnn.status().c_str());
  run_cases(ctx, rows(dnn, ctx, false));
}

TEST(GpuOps, CudnnAttentionLongShapesAgainstFlash) {
  FTUNE_SKIP_WITHOUT_CUDA();
  cuda::Context ctx;
  cuda::CudnnAttention dnn(ctx);
  FTUNE_SKIP_WITHOUT_CUDNN(dnn, ctx);
  run_cases(ctx, rows(dnn, ctx, true));
}

// fp32 storage and head sizes other than 64 / 128 are refused without asking cuDNN.
TEST(GpuOps, CudnnAttentionRefusesWhatItDoesNotTake) {
  FTUNE_SKIP_WITHOUT_CUDA();
  cuda::Context ctx;
  cuda::CudnnAttention dnn(ctx);
  FTUNE_SKIP_WITHOUT_CUDNN(dnn, ctx);
  EXPECT_FALSE(dnn.supports(cuda::Storage::F32, shape({1, 128, 4, 2, 64, true})));
  EXPECT_FALSE(dnn.supports(cuda::Storage::BF16, shape({1, 128, 4, 2, 80, true})));
  EXPECT_FALSE(dnn.supports(cuda::Storage::BF16, shape({1, 128, 6, 4, 64, true})));
  EXPECT_TRUE(dnn.supports(cuda::Storage::BF16, shape({1, 128, 4, 2, 64, true}))) << dnn.refusal();
}

}  // namespace
}  // namespace ftune::ops

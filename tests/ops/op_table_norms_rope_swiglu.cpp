// Op rows for the elementwise and row-wise kernels: RMSNorm (forward, backward, the weight gradient
// of full fine-tuning), RoPE (llama3-scaled frequencies, GQA head counts, odd token counts) and
// SwiGLU, each in fp32, bf16 and fp16 storage against its CPU twin.
#include <cstring>
#include <limits>
#include <string>

#include "../test_util.h"
#include "core/rng.h"
#include "model/rope.h"
#include "op_harness.h"
#include "ops/cpu/rmsnorm.h"
#include "ops/cpu/rope.h"
#include "ops/cpu/swiglu.h"
#include "ops/cuda/rmsnorm.h"
#include "ops/cuda/rope.h"
#include "ops/cuda/swiglu.h"

namespace ftune::ops {
namespace {

std::string shape(int64_t a, int64_t b) { return std::to_string(a) + "x" + std::to_string(b); }

// ---- RMSNorm forward and backward ----

OpCase rmsnorm_case(Dtype dt, int64_t rows, int64_t dim) {
  OpCase c;
  c.name = "rmsnorm " + shape(rows, dim) + " " + dtype_name(dt);
  c.dtype = dt;
  // dx0: the backward adds onto what dx holds.
  c.inputs = {{"x", rows * dim}, {"w", dim, 1.0f, 1.0f, false}, {"dy", rows * dim, 0, 1, false},
              {"dx0", rows * dim, 0, 1, false}};
  c.reference = [=](const Tensors& t) {
    Floats y(rows * dim), rstd(rows), dx = t.at("dx0");
    cpu::rmsnorm_forward(t.at("x").data(), t.at("w").data(), y.data(), rstd.data(), rows, dim, 1e-5f);
    cpu::rmsnorm_backward(t.at("dy").data(), t.at("x").data(), t.at("w").data(), rstd.data(), dx.data(), rows, dim);
    return Outputs{{"y", y}, {"rstd", rstd}, {"dx", dx}, {"dx_copy", dx}};
  };
  c.launch = [=](const cuda::Context& ctx, const Tensors& t) {
    auto x = upload(dt, t.at("x")), w = cuda::DeviceBuffer::from(t.at("w")), dy = cuda::DeviceBuffer::from(t.at("dy")),
         dx = cuda::DeviceBuffer::from(t.at("dx0"));
    cuda::DeviceBuffer y(rows * dim * storage_bytes(storage(dt))), rstd(rows * 4),
        copy(rows * dim * storage_bytes(storage(dt)));
    cuda::rmsnorm_forward(ctx, storage(dt), x.data(), w.as<float>(), y.data(), rstd.as<float>(), rows, dim, 1e-5f);
    cuda::rmsnorm_backward(ctx, storage(dt), dy.as<float>(), x.data(), w.as<float>(), rstd.as<float>(), dx.as<float>(),
                           rows, dim, copy.data());
    return Outputs{{"y", download(ctx, dt, y, rows * dim)},
                   {"rstd", download(ctx, Dtype::F32, rstd, rows)},
                   {"dx", download(ctx, Dtype::F32, dx, rows * dim)},
                   {"dx_copy", download(ctx, dt, copy, rows * dim)}};
  };
  c.checks = {bound("y", dt, {1e-5, "fp32 on both sides: summation order only"},
                    {4e-3, "y rounded to bf16 once: 2^-9 rms, 2^-8 at most"},
                    {5e-4, "y rounded to fp16 once: 2^-12 rms, 2^-11 at most (8x below bf16)"}),
              {"rstd", 1e-5, "fp32 in every storage, on the same rounded x: summation order only"},
              {"dx", 1e-5, "fp32 in every storage, on the same rounded x: summation order only"},
              bound("dx_copy", dt, {1e-5, "the fp32 dx itself"}, {4e-3, "dx rounded to bf16 once: 2^-9 rms"},
                    {5e-4, "dx rounded to fp16 once: 2^-12 rms"})};
  return c;
}

std::vector<OpCase> rmsnorm_rows() {
  std::vector<OpCase> rows;
  // Odd sizes on purpose: rows not a multiple of anything, dims below and above the block size.
  const std::pair<int64_t, int64_t> shapes[] = {{3, 7}, {17, 256}, {33, 1000}, {5, 4099}, {5, 64}, {19, 1000}, {8, 4096}};
  for (Dtype dt : kAllDtypes)
    for (auto [r, d] : shapes) rows.push_back(rmsnorm_case(dt, r, d));
  return rows;
}

// ---- RMSNorm weight gradient (full fine-tuning) ----

OpCase rmsnorm_weight_grad_case(Dtype dt, int64_t rows, int64_t dim) {
  OpCase c;
  c.name = "rmsnorm_weight_grad " + shape(rows, dim) + " " + dtype_name(dt);
  c.dtype = dt;
  // dw0: the gradient adds onto what dw holds.
  c.inputs = {{"x", rows * dim}, {"dy", rows * dim, 0, 1, false}, {"dw0", dim, 0, 1, false},
              {"w", dim, 1.0f, 1.0f, false}};
  c.prepare = [=](Tensors& t, Rng&) {  // rstd: the CPU forward's, on x as the GPU sees it
    Floats y(rows * dim), rstd(rows);
    cpu::rmsnorm_forward(t.at("x").data(), t.at("w").data(), y.data(), rstd.data(), rows, dim, 1e-5f);
    t.f["rstd"] = rstd;
  };
  c.reference = [=](const Tensors& t) {
    Floats dx(rows * dim, 0.0f), dw = t.at("dw0");
    cpu::rmsnorm_backward(t.at("dy").data(), t.at("x").data(), t.at("w").data(), t.at("rstd").data(), dx.data(), rows,
                          dim, dw.data());
    return Outputs{{"dw", dw}};
  };
  c.launch = [=](const cuda::Context& ctx, const Tensors& t) {
    auto dy = cuda::DeviceBuffer::from(t.at("dy")), x = upload(dt, t.at("x")),
         rstd = cuda::DeviceBuffer::from(t.at("rstd")), dw = cuda::DeviceBuffer::from(t.at("dw0"));
    const size_t ws = cuda::rmsnorm_weight_grad_workspace(rows, dim);
    EXPECT_GE(ws, static_cast<size_t>(dim) * sizeof(float));
    // NaN-poisoned: every workspace element must be written before it is read.
    auto work = cuda::DeviceBuffer::from(Floats(ws / sizeof(float), std::numeric_limits<float>::quiet_NaN()));
    cuda::rmsnorm_weight_grad(ctx, storage(dt), dy.as<float>(), x.data(), rstd.as<float>(), rows, dim, dw.as<float>(),
                              work.as<float>());
    return Outputs{{"dw", download(ctx, Dtype::F32, dw, dim)}};
  };
  // The same products summed in fp32 partials of 64 rows (the CPU sums in double over all rows):
  // order sqrt(64) fp32 ulps of the partials; an overwrite instead of an add, or a lost chunk,
  // costs 1e-2 or more. x is rounded to the dtype on both sides, so every dtype has this bound.
  c.checks = {{"dw", 1e-5, "fp32 partials of 64 rows against the CPU's double sums"}};
  c.deterministic = true;  // two passes and no atomics
  return c;
}

std::vector<OpCase> rmsnorm_weight_grad_rows() {
  std::vector<OpCase> rows;
  // Rows below, at and across the 64-row chunks (never a multiple of them), dims below a warp, at a
  // power of two and above the block size.
  const std::pair<int64_t, int64_t> shapes[] = {{1, 64}, {37, 7}, {129, 64}, {1000, 7}, {203, 4099}};
  for (Dtype dt : kAllDtypes)
    for (auto [r, d] : shapes) rows.push_back(rmsnorm_weight_grad_case(dt, r, d));
  return rows;
}

// ---- RoPE ----

OpCase rope_case(Dtype dt, int64_t n, int64_t heads) {
  OpCase c;
  c.name = "rope " + shape(n, heads) + " " + dtype_name(dt);
  c.dtype = dt;
  const int64_t d = 64;
  c.inputs = {{"x", n * heads * d}};
  c.prepare = [=](Tensors& t, Rng& r) {
    LlamaConfig cfg;
    cfg.head_dim = d;
    cfg.rope_theta = 500000;
    cfg.rope_scaling.type = "llama3";
    cfg.rope_scaling.factor = 8;
    cfg.rope_scaling.original_max_position_embeddings = 512;
    std::vector<int32_t> pos(n);
    for (auto& p : pos) p = static_cast<int32_t>(r.below(8192));  // packed rows: arbitrary positions
    rope_tables(rope_inv_freq(cfg), pos.data(), n, t.f["cos"], t.f["sin"]);
  };
  c.reference = [=](const Tensors& t) {
    Floats fwd = t.at("x"), bwd = t.at("x");
    cpu::rope_forward(fwd.data(), t.at("cos").data(), t.at("sin").data(), n, heads, d);
    cpu::rope_backward(bwd.data(), t.at("cos").data(), t.at("sin").data(), n, heads, d);
    return Outputs{{"forward", fwd}, {"backward", bwd}};
  };
  c.launch = [=](const cuda::Context& ctx, const Tensors& t) {
    auto cos = cuda::DeviceBuffer::from(t.at("cos")), sin = cuda::DeviceBuffer::from(t.at("sin"));
    auto fwd = upload(dt, t.at("x")), bwd = upload(dt, t.at("x"));  // in place
    cuda::rope_forward(ctx, storage(dt), fwd.data(), cos.as<float>(), sin.as<float>(), n, heads, d);
    cuda::rope_backward(ctx, storage(dt), bwd.data(), cos.as<float>(), sin.as<float>(), n, heads, d);
    return Outputs{{"forward", download(ctx, dt, fwd, n * heads * d)},
                   {"backward", download(ctx, dt, bwd, n * heads * d)}};
  };
  for (const char* out : {"forward", "backward"})
    c.checks.push_back(bound(out, dt, {1e-6, "fp32: identical arithmetic up to fused multiply-add contraction"},
                             {4e-3, "rounded to bf16 once: 2^-9 rms, 2^-8 at most"},
                             {5e-4, "rounded to fp16 once: 2^-12 rms, 2^-11 at most (8x below bf16)"}));
  return c;
}

std::vector<OpCase> rope_rows() {
  std::vector<OpCase> rows;
  for (Dtype dt : kAllDtypes)
    for (auto [n, heads] : {std::pair<int64_t, int64_t>{1, 1}, {37, 8}, {4099, 32}}) rows.push_back(rope_case(dt, n, heads));
  return rows;
}

// ---- SwiGLU ----

OpCase swiglu_case(Dtype dt, int64_t n) {
  OpCase c;
  c.name = "swiglu " + std::to_string(n) + " " + dtype_name(dt);
  c.dtype = dt;
  c.inputs = {{"gate", n, 0, 2}, {"up", n, 0, 2}, {"dout", n, 0, 2}};
  c.reference = [=](const Tensors& t) {
    Floats out(n), dg(n), du(n);
    cpu::swiglu_forward(t.at("gate").data(), t.at("up").data(), out.data(), n);
    cpu::swiglu_backward(t.at("gate").data(), t.at("up").data(), t.at("dout").data(), dg.data(), du.data(), n);
    return Outputs{{"out", out}, {"dgate", dg}, {"dup", du}};
  };
  c.launch = [=](const cuda::Context& ctx, const Tensors& t) {
    auto g = upload(dt, t.at("gate")), u = upload(dt, t.at("up")), d = upload(dt, t.at("dout"));
    const size_t bytes = n * storage_bytes(storage(dt));
    cuda::DeviceBuffer out(bytes), dg(bytes), du(bytes);
    cuda::swiglu_forward(ctx, storage(dt), g.data(), u.data(), out.data(), n);
    cuda::swiglu_backward(ctx, storage(dt), g.data(), u.data(), d.data(), dg.data(), du.data(), n);
    return Outputs{{"out", download(ctx, dt, out, n)}, {"dgate", download(ctx, dt, dg, n)},
                   {"dup", download(ctx, dt, du, n)}};
  };
  for (const char* out : {"out", "dgate", "dup"})
    c.checks.push_back(bound(out, dt, {1e-5, "fp32: __expf differs from std::exp by a few ulp"},
                             {4e-3, "rounded to bf16 once: 2^-9 rms, 2^-8 at most"},
                             {5e-4, "rounded to fp16 once: 2^-12 rms, 2^-11 at most (8x below bf16)"}));
  return c;
}

std::vector<OpCase> swiglu_rows() {
  std::vector<OpCase> rows;
  for (Dtype dt : kAllDtypes)
    for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{1000}, int64_t{1} << 20, 3 * (int64_t{1} << 20) + 5})
      rows.push_back(swiglu_case(dt, n));
  return rows;
}

TEST(GpuOps, RmsNorm) {
  FTUNE_SKIP_WITHOUT_CUDA();
  cuda::Context ctx;
  run_cases(ctx, rmsnorm_rows());
}

TEST(GpuOps, RmsNormWeightGrad) {
  FTUNE_SKIP_WITHOUT_CUDA();
  cuda::Context ctx;
  run_cases(ctx, rmsnorm_weight_grad_rows());
}

TEST(GpuOps, Rope) {
  FTUNE_SKIP_WITHOUT_CUDA();
  cuda::Context ctx;
  run_cases(ctx, rope_rows());
}

TEST(GpuOps, Swiglu) {
  FTUNE_SKIP_WITHOUT_CUDA();
  cuda::Context ctx;
  run_cases(ctx, swiglu_rows());
}

// No rows: the weight gradient is left exactly as it was (and needs no workspace).
TEST(GpuOps, RmsNormWeightGradNoRowsLeavesGradientAlone) {
  FTUNE_SKIP_WITHOUT_CUDA();
  cuda::Context ctx;
  EXPECT_EQ(cuda::rmsnorm_weight_grad_workspace(0, 16), 0u);
  const Floats dw0 = testing::randn(16, 61);
  auto dw = cuda::DeviceBuffer::from(dw0);
  cuda::rmsnorm_weight_grad(ctx, cuda::Storage::F32, nullptr, nullptr, nullptr, 0, 16, dw.as<float>(), nullptr);
  const Floats got = download(ctx, Dtype::F32, dw, 16);
  EXPECT_EQ(std::memcmp(got.data(), dw0.data(), 16 * sizeof(float)), 0);
}

}  // namespace
}  // namespace ftune::ops

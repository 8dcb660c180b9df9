// Op rows for the token embedding (the gather in every storage dtype, bit for bit; the
// deterministic scatter-add backward of full fine-tuning, accumulating onto the gradient) and the
// fp32 AdamW update over several steps against the CPU optimizer; the sum of squares of the gradient
// norm; plus the embedding backward's host-side index and empty-batch cases.
#include <algorithm>
#include <cstring>
#include <string>

#include "../test_util.h"
#include "core/error.h"
#include "model/lora.h"
#include "op_harness.h"
#include "ops/cpu/embedding.h"
#include "ops/cuda/adamw.h"
#include "ops/cuda/elementwise.h"
#include "ops/cuda/embedding.h"
#include "train/lora_adamw.h"

namespace ftune::ops {
namespace {

// ---- embedding forward ----

OpCase embedding_case(Dtype dt) {
  OpCase c;
  const int64_t vocab = 1000, dim = 300, n = 77;
  c.name = std::string("embedding 77 of 1000x300 ") + dtype_name(dt);
  c.dtype = dt;
  c.inputs = {{"table", vocab * dim}};
  c.prepare = [=](Tensors& t, Rng& r) {
    auto& ids = t.i["ids"];
    for (int64_t i = 0; i < n; ++i) ids.push_back(static_cast<int32_t>(r.below(vocab)));
  };
  c.reference = [=](const Tensors& t) {
    Floats out(n * dim);
    cpu::embedding_forward(t.at("table").data(), t.ints("ids").data(), n, dim, out.data());
    return Outputs{{"out", out}};
  };
  c.launch = [=](const cuda::Context& ctx, const Tensors& t) {
    auto table = upload(dt, t.at("table")), ids = cuda::DeviceBuffer::from(t.ints("ids"));
    cuda::DeviceBuffer out(n * dim * storage_bytes(storage(dt)));
    cuda::embedding_forward(ctx, storage(dt), table.data(), ids.as<int32_t>(), n, dim, vocab, out.data());
    return Outputs{{"out", download(ctx, dt, out, n * dim)}};
  };
  c.checks = {{"out", 0.0, "a copy of table rows in the same storage: bit for bit"}};
  return c;
}

TEST(GpuOps, Embedding) {
  FTUNE_SKIP_WITHOUT_CUDA();
  cuda::Context ctx;
  run_cases(ctx, {embedding_case(Dtype::F32), embedding_case(Dtype::BF16), embedding_case(Dtype::F16)});
}

// ---- embedding backward (fp32 by its interface) ----

// dtable = dtable0 + the scatter-add of dx; `offset` floats shift dx and dtable off their 16-byte
// alignment, which must take the scalar path and give the same sums.
OpCase embedding_backward_case(int64_t dim, int64_t offset) {
  OpCase c;
  const int64_t vocab = 997, n = 523;  // n prime: a multiple of no block or vector width
  c.name = "embedding_backward " + std::to_string(n) + " of " + std::to_string(vocab) + "x" + std::to_string(dim) +
           " offset " + std::to_string(offset) + " f32";
  c.inputs = {{"dx", n * dim}, {"dtable0", vocab * dim}};  // dtable0: the backward must add onto it
  // Ids with one id used by many tokens, several used a few times, most of the table unused, and
  // the table's last row used once.
  c.prepare = [=](Tensors& t, Rng& r) {
    auto& ids = t.i["ids"];
    for (int64_t i = 0; i < n; ++i) ids.push_back(r.below(3) == 0 ? 5 : static_cast<int32_t>(r.below(vocab / 3)));
    ids[n / 2] = static_cast<int32_t>(vocab - 1);
    std::vector<char> used(vocab, 0);
    for (int32_t i : ids) used[i] = 1;
    auto& unused = t.i["unused"];
    for (int64_t v = 0; v < vocab; ++v)
      if (!used[v]) unused.push_back(static_cast<int32_t>(v));
    EXPECT_GT(static_cast<int64_t>(unused.size()), vocab / 2);  // the case does have unused ids
  };
  auto unused_rows = [=](const Tensors& t, const Floats& table) {
    Floats rows;
    for (int32_t v : t.ints("unused")) rows.insert(rows.end(), table.begin() + v * dim, table.begin() + (v + 1) * dim);
    return rows;
  };
  c.reference = [=](const Tensors& t) {
    Floats dtable = t.at("dtable0");
    cpu::embedding_backward(t.ints("ids").data(), t.at("dx").data(), n, dim, dtable.data());
    return Outputs{{"dtable", dtable}, {"unused rows", unused_rows(t, t.at("dtable0"))}};
  };
  c.launch = [=](const cuda::Context& ctx, const Tensors& t) {
    const auto& ids = t.ints("ids");
    const auto ix = cuda::embedding_grad_index(ids.data(), n);
    auto du = cuda::DeviceBuffer::from(ix.unique_ids), doff = cuda::DeviceBuffer::from(ix.offsets),
         dtok = cuda::DeviceBuffer::from(ix.tokens);
    Floats dx_pad(offset, 0.0f), dt_pad(offset, 0.0f);
    dx_pad.insert(dx_pad.end(), t.at("dx").begin(), t.at("dx").end());
    dt_pad.insert(dt_pad.end(), t.at("dtable0").begin(), t.at("dtable0").end());
    auto ddx = cuda::DeviceBuffer::from(dx_pad), dtab = cuda::DeviceBuffer::from(dt_pad);
    cuda::embedding_backward(ctx, du.as<int32_t>(), doff.as<int32_t>(), dtok.as<int32_t>(),
                             static_cast<int64_t>(ix.unique_ids.size()), ddx.as<float>() + offset, dim,
                             dtab.as<float>() + offset);
    const Floats dtable = download(ctx, Dtype::F32, dtab, vocab * dim, offset);
    return Outputs{{"dtable", dtable}, {"unused rows", unused_rows(t, dtable)}};
  };
  // Both sides add the same fp32 values onto the same starting row in the same token order, so the
  // sums are expected to be bit-identical; a lost, doubled or misplaced token row, or an overwrite
  // instead of an add, costs 1e-3 or more.
  c.checks = {{"dtable", 1e-6, "the CPU's additions in its order: a few fp32 ulps at most"},
              {"unused rows", 0.0, "rows of ids no token uses stay as they were, bit for bit"}};
  c.deterministic = true;  // no atomics
  return c;
}

TEST(GpuOps, EmbeddingBackward) {
  FTUNE_SKIP_WITHOUT_CUDA();
  cuda::Context ctx;
  // dim 7 and 4099: the scalar path; 64: the float4 path, and shifted off alignment, the scalar one.
  run_cases(ctx, {embedding_backward_case(7, 0), embedding_backward_case(64, 0), embedding_backward_case(64, 1),
                  embedding_backward_case(4099, 0)});
}

TEST(GpuOps, EmbeddingBackwardIndexGroupsPositionsById) {  // host code only: runs without a GPU too
  const std::vector<int32_t> ids = {3, 1, 3, 0, 1, 3, 7};
  const auto ix = cuda::embedding_grad_index(ids.data(), static_cast<int64_t>(ids.size()));
  EXPECT_EQ(ix.unique_ids, (std::vector<int32_t>{0, 1, 3, 7}));
  EXPECT_EQ(ix.offsets, (std::vector<int32_t>{0, 1, 3, 6, 7}));
  EXPECT_EQ(ix.tokens, (std::vector<int32_t>{3, 1, 4, 0, 2, 5, 6}));

  const auto empty = cuda::embedding_grad_index(nullptr, 0);
  EXPECT_TRUE(empty.unique_ids.empty());
  EXPECT_EQ(empty.offsets, (std::vector<int32_t>{0}));
  EXPECT_TRUE(empty.tokens.empty());

  const std::vector<int32_t> bad = {2, -1, 4};
  EXPECT_THROW(cuda::embedding_grad_index(bad.data(), 3), Error);
}

TEST(GpuOps, EmbeddingBackwardNoTokensLeavesTableAlone) {
  FTUNE_SKIP_WITHOUT_CUDA();
  cuda::Context ctx;
  const Floats dtable0 = testing::randn(10 * 8, 31);
  auto dtab = cuda::DeviceBuffer::from(dtable0);
  cuda::embedding_backward(ctx, nullptr, nullptr, nullptr, 0, nullptr, 8, dtab.as<float>());
  const Floats got = download(ctx, Dtype::F32, dtab, dtable0.size());
  EXPECT_EQ(std::memcmp(got.data(), dtable0.data(), got.size() * sizeof(float)), 0);
}

// ---- AdamW (fp32) ----

// The CPU optimizer works on LoraParams: one layer, q_proj only, r = 4, in/out = 64 -> 512 values,
// set from the row's flat parameters.
LoraParams lora_shapes() {
  LlamaConfig c;
  c.hidden_size = 64;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 2;
  c.head_dim = 32;
  c.intermediate_size = 96;
  c.num_hidden_layers = 1;
  LoraSpec spec;
  spec.r = 4;
  spec.targets[0] = true;
  return LoraParams::zeros(c, spec);
}

void set_flat(LoraParams& p, const Floats& v) {
  size_t off = 0;
  p.for_each([&](const std::string&, Tensor& t) {
    std::copy(v.begin() + off, v.begin() + off + t.data.size(), t.data.begin());
    off += t.data.size();
  });
}

Floats flat(const LoraParams& p) {
  Floats v;
  p.for_each([&](const std::string&, const Tensor& t) { v.insert(v.end(), t.data.begin(), t.data.end()); });
  return v;
}

OpCase adamw_case() {
  constexpr int kSteps = 5;
  OpCase c;
  const int64_t n = lora_shapes().num_parameters();
  c.name = "adamw " + std::to_string(n) + " x " + std::to_string(kSteps) + " steps f32";
  c.inputs = {{"p0", n, 0, 0.1f}};
  for (int s = 1; s <= kSteps; ++s) c.inputs.push_back({"g" + std::to_string(s), n});
  c.reference = [=](const Tensors& t) {
    LoraParams p = lora_shapes(), g = lora_shapes();
    set_flat(p, t.at("p0"));
    LoraAdamW opt(p, AdamWSettings{0.9, 0.999, 1e-8, 0.01});
    for (int s = 1; s <= kSteps; ++s) {
      set_flat(g, t.at("g" + std::to_string(s)));
      opt.step(p, g, 1e-2);
    }
    EXPECT_GT(testing::rel_err(flat(p), t.at("p0")), 1e-3);  // the parameters did move
    return Outputs{{"p", flat(p)}};
  };
  c.launch = [=](const cuda::Context& ctx, const Tensors& t) {
    auto p = cuda::DeviceBuffer::from(t.at("p0"));
    auto m = cuda::DeviceBuffer::from(Floats(n, 0.0f)), v = cuda::DeviceBuffer::from(Floats(n, 0.0f));
    for (int s = 1; s <= kSteps; ++s) {
      auto g = cuda::DeviceBuffer::from(t.at("g" + std::to_string(s)));
      cuda::adamw_update(ctx, {1e-2f, 0.9f, 0.999f, 1e-8f, 0.01f, s}, p.as<float>(), g.as<float>(), m.as<float>(),
                         v.as<float>(), n);
      ctx.synchronize();  // g is freed at the end of the iteration
    }
    return Outputs{{"p", download(ctx, Dtype::F32, p, n)}};
  };
  // Same fp32 formula, but nvcc contracts the moment updates into fused multiply-adds, which round
  // once instead of twice; over 5 steps that measured 3e-6 relative on the H100.
  c.checks = {{"p", 1e-5, "FMA contraction of the moment updates: 3e-6 measured over 5 steps"}};
  return c;
}

TEST(GpuOps, AdamW) {
  FTUNE_SKIP_WITHOUT_CUDA();
  cuda::Context ctx;
  run_cases(ctx, {adamw_case()});
}

// ---- the sum of squares (gradient norms) ----

OpCase sum_squares_case(int64_t n) {
  OpCase c;
  c.name = "sum_squares " + std::to_string(n);
  c.dtype = Dtype::F32;
  c.inputs = {{"x", n}, {"acc0", 1, 0, 1, false}};  // acc0: the sum adds onto what acc holds
  c.reference = [=](const Tensors& t) {
    double s = t.at("acc0")[0];
    for (float v : t.at("x")) s += static_cast<double>(v) * static_cast<double>(v);
    return Outputs{{"acc", Floats{static_cast<float>(s)}}};
  };
  c.launch = [=](const cuda::Context& ctx, const Tensors& t) {
    auto x = cuda::DeviceBuffer::from(t.at("x"));
    auto acc = cuda::DeviceBuffer::from(std::vector<double>{static_cast<double>(t.at("acc0")[0])});
    cuda::sum_squares(ctx, x.as<float>(), n, acc.as<double>());
    ctx.synchronize();
    return Outputs{{"acc", Floats{static_cast<float>(acc.to_host<double>(1)[0])}}};
  };
  // fp64 sums on both sides in a different order; the result compared in fp32: its rounding only.
  // A lost block or a block added twice is off by 1/1024 or more of the sum.
  c.checks = {{"acc", 1e-6, "fp64 sums in another order, compared after rounding to fp32"}};
  return c;
}

TEST(GpuOps, SumSquares) {
  FTUNE_SKIP_WITHOUT_CUDA();
  cuda::Context ctx;
  // One element, below and across a block, and enough for every one of the 1024 blocks to loop.
  run_cases(ctx, {sum_squares_case(1), sum_squares_case(257), sum_squares_case(100003), sum_squares_case(5000011)});
}

}  // namespace
}  // namespace ftune::ops

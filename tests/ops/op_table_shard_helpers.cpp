// The element-wise helpers of ZeRO-3 sharding: the gradient piece added into the accumulator, and a
// random fill of a tensor's piece that equals the same piece of the whole tensor's fill.
#include "op_harness.h"
#include "ops/cuda/elementwise.h"

namespace ftune::ops {

namespace {

OpCase add_into_case(int64_t n) {
  OpCase c;
  c.name = "add_into " + std::to_string(n) + " f32";
  c.inputs = {{"x", n, 0.0f, 1.0f, false}, {"acc", n, 0.5f, 2.0f, false}};
  c.reference = [=](const Tensors& t) {
    Floats out = t.at("acc");
    for (int64_t i = 0; i < n; ++i) out[i] += t.at("x")[i];
    return Outputs{{"acc", out}};
  };
  c.launch = [=](const cuda::Context& ctx, const Tensors& t) {
    auto x = cuda::DeviceBuffer::from(t.at("x")), acc = cuda::DeviceBuffer::from(t.at("acc"));
    cuda::add_into(ctx, x.as<float>(), acc.as<float>(), n);
    return Outputs{{"acc", download(ctx, Dtype::F32, acc, n)}};
  };
  c.checks = {{"acc", 0, "one fp32 addition per element, the reference's own"}};
  c.deterministic = true;
  return c;
}

}  // namespace

TEST(GpuOps, AddInto) {
  FTUNE_SKIP_WITHOUT_CUDA();
  cuda::Context ctx;
  run_cases(ctx, {add_into_case(1), add_into_case(1000), add_into_case(300001)});
}

// Pieces filled with `first` at their offset reassemble the whole tensor's fill bit for bit, in
// every storage dtype (ZeRO-3's random benchmark weights equal the unsharded ones).
TEST(GpuOps, FillNormalPiecesEqualTheWhole) {
  FTUNE_SKIP_WITHOUT_CUDA();
  cuda::Context ctx;
  const int64_t n = 100003;
  for (Dtype d : kAllDtypes) {
    const size_t es = static_cast<size_t>(cuda::storage_bytes(storage(d)));
    cuda::DeviceBuffer whole(n * es), parts(n * es);
    cuda::fill_normal(ctx, storage(d), whole.data(), n, 77, 0.0f, 0.02f);
    const int64_t cuts[] = {0, 1, 4099, 50000, 99999, n};
    for (size_t k = 0; k + 1 < std::size(cuts); ++k)
      cuda::fill_normal(ctx, storage(d), parts.as<char>() + cuts[k] * es, cuts[k + 1] - cuts[k], 77, 0.0f, 0.02f,
                        cuts[k]);
    const Floats a = download(ctx, d, whole, n), b = download(ctx, d, parts, n);
    ASSERT_EQ(a, b) << dtype_name(d);
    double ss = 0;
    for (float v : a) ss += static_cast<double>(v) * v;
    EXPECT_NEAR(std::sqrt(ss / n), 0.02, 0.002) << dtype_name(d);  // the draw is N(0, 0.02)
  }
}

}  // namespace ftune::ops

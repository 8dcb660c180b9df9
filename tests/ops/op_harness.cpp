// The op-table runner: inputs drawn and rounded, reference and launcher run, outputs checked.
#include "op_harness.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <stdexcept>

#include "../test_util.h"
#include "core/dtype.h"

namespace ftune::ops {

cuda::Storage storage(Dtype d) {
  return d == Dtype::F32 ? cuda::Storage::F32 : d == Dtype::BF16 ? cuda::Storage::BF16 : cuda::Storage::F16;
}

const char* dtype_name(Dtype d) { return d == Dtype::F32 ? "f32" : d == Dtype::BF16 ? "bf16" : "f16"; }

float round_to(Dtype d, float x) {
  if (d == Dtype::BF16) return bf16_to_f32(f32_to_bf16(x));
  if (d == Dtype::F16) return f16_to_f32(f32_to_f16(x));
  return x;
}

std::vector<float> round_to(Dtype d, std::vector<float> v) {
  if (d != Dtype::F32)
    for (float& x : v) x = round_to(d, x);
  return v;
}

cuda::DeviceBuffer upload(Dtype d, const std::vector<float>& v) {
  if (d == Dtype::F32) return cuda::DeviceBuffer::from(v);
  std::vector<uint16_t> h(v.size());
  for (size_t i = 0; i < v.size(); ++i) h[i] = d == Dtype::BF16 ? f32_to_bf16(v[i]) : f32_to_f16(v[i]);
  return cuda::DeviceBuffer::from(h);
}

std::vector<float> download(const cuda::Context& ctx, Dtype d, const cuda::DeviceBuffer& b, size_t n, size_t offset) {
  ctx.synchronize();
  std::vector<float> out(n);
  if (d == Dtype::F32) {
    b.download_at(offset * 4, out.data(), n * 4);
    return out;
  }
  std::vector<uint16_t> h(n);
  b.download_at(offset * 2, h.data(), n * 2);
  for (size_t i = 0; i < n; ++i) out[i] = d == Dtype::BF16 ? bf16_to_f32(h[i]) : f16_to_f32(h[i]);
  return out;
}

const Floats& Tensors::at(const std::string& name) const {
  const auto it = f.find(name);
  if (it == f.end()) throw std::runtime_error("op table: no float input '" + name + "'");
  return it->second;
}

const std::vector<int32_t>& Tensors::ints(const std::string& name) const {
  const auto it = i.find(name);
  if (it == i.end()) throw std::runtime_error("op table: no integer input '" + name + "'");
  return it->second;
}

Check bound(const std::string& output, Dtype d, Bound f32, Bound bf16, Bound f16) {
  const Bound& b = d == Dtype::F32 ? f32 : d == Dtype::BF16 ? bf16 : f16;
  return {output, b.tol, b.why};
}

namespace {

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char ch : s) h = (h ^ ch) * 1099511628211ull;
  return h;
}

// Positions whose bits differ (so -0.0 against 0.0, or another NaN payload, counts); first: the
// first such position or -1.
int64_t bit_mismatches(const Floats& a, const Floats& b, int64_t& first) {
  first = -1;
  int64_t k = 0;
  for (size_t i = 0; i < a.size(); ++i)
    if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0) {
      if (first < 0) first = static_cast<int64_t>(i);
      ++k;
    }
  return k;
}

bool all_finite(const Floats& v) {
  for (float x : v)
    if (!std::isfinite(x)) return false;
  return true;
}

}  // namespace

void run_case(const cuda::Context& ctx, const OpCase& c) {
  SCOPED_TRACE(c.name);  // also names the row in failures raised inside its reference or launcher
  const uint64_t seed = fnv1a(c.name);
  Tensors in;
  for (size_t k = 0; k < c.inputs.size(); ++k) {
    const Input& s = c.inputs[k];
    Floats v = testing::randn(static_cast<size_t>(s.n), seed + 1 + k);
    bool nonzero = false;
    for (float& x : v) x = s.mean + s.std * x, nonzero |= x != 0.0f;
    ASSERT_TRUE(nonzero) << c.name << ": input " << s.name << " is all zeros";
    in.f[s.name] = s.stored ? round_to(c.dtype, std::move(v)) : std::move(v);
  }
  if (c.prepare) {
    Rng rng(seed, 1);
    c.prepare(in, rng);
    for (const Input& s : c.inputs)
      if (s.stored) in.f[s.name] = round_to(c.dtype, std::move(in.f[s.name]));
  }
  const Outputs want = c.reference(in);
  const Outputs got = c.launch(ctx, in);

  std::string line = "[ op ] " + c.name + ":";
  for (const auto& [name, w] : want) {
    bool checked = false;
    for (const Check& k : c.checks) checked |= k.output == name;
    EXPECT_TRUE(checked) << c.name << ": output " << name << " has no check";
  }
  for (const Check& k : c.checks) {
    const auto wi = want.find(k.output);
    const auto gi = got.find(k.output);
    if (wi == want.end() || gi == got.end()) {
      ADD_FAILURE() << c.name << ": output " << k.output << " missing from the "
                    << (wi == want.end() ? "reference" : "launcher");
      continue;
    }
    const Floats &w = wi->second, &g = gi->second;
    if (g.size() != w.size()) {
      ADD_FAILURE() << c.name << " " << k.output << ": " << g.size() << " values, the reference has " << w.size();
      continue;
    }
    char buf[96];
    if (k.tol == 0.0) {
      int64_t first = -1;
      const int64_t bad = bit_mismatches(g, w, first);
      EXPECT_EQ(bad, 0) << c.name << " " << k.output << ": " << bad << " of " << w.size()
                        << " values differ in their bits, the first at " << first << " (got "
                        << (first >= 0 ? g[first] : 0.0f) << ", want " << (first >= 0 ? w[first] : 0.0f)
                        << "); bound: " << k.why;
      std::snprintf(buf, sizeof buf, " %s %lld differ", k.output.c_str(), static_cast<long long>(bad));
    } else {
      const double err = testing::rel_err(g, w);
      EXPECT_TRUE(all_finite(g)) << c.name << " " << k.output << ": not finite";
      EXPECT_LT(err, k.tol) << c.name << " " << k.output << ": relative L2 error " << err << ", bound " << k.tol
                            << " (" << k.why << ")";
      std::snprintf(buf, sizeof buf, " %s %.2e (<%.1e)", k.output.c_str(), err, k.tol);
    }
    line += buf;
  }
  if (c.deterministic) {
    const Outputs again = c.launch(ctx, in);
    for (const auto& [name, g] : got) {
      const auto it = again.find(name);
      int64_t first = -1;
      EXPECT_TRUE(it != again.end() && it->second.size() == g.size() && bit_mismatches(it->second, g, first) == 0)
          << c.name << " " << name << ": two runs differ (first at " << first << ")";
    }
    line += ", run to run bit-identical";
  }
  std::printf("%s\n", line.c_str());
}

void run_cases(const cuda::Context& ctx, const std::vector<OpCase>& cases) {
  ASSERT_FALSE(cases.empty());
  for (const OpCase& c : cases) run_case(ctx, c);
}

}  // namespace ftune::ops

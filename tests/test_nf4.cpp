// NF4 + double quantization against the fixtures of tools/make_nf4_fixtures.py (an independent numpy
// rewrite of bitsandbytes' kernels): maps, codes, scales and dequantized values bit for bit, error
// statistics, the bitsandbytes checkpoint format both ways, and one-line errors for bad files.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/rng.h"
#include "io/safetensors.h"
#include "quant/dynamic_map.h"
#include "quant/nf4.h"
#include "quant/nf4_checkpoint.h"
#include "test_util.h"

namespace ftune {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string fixture_dir() { return std::string(FTUNE_SOURCE_DIR) + "/tests/fixtures/nf4"; }

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// Index of the first element whose bit pattern differs, or -1.
template <typename A, typename B>
int64_t first_bit_difference(const A& a, const B& b) {
  if (a.size() != b.size()) return 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if constexpr (std::is_same_v<std::decay_t<decltype(a[0])>, float>) {
      if (bits(a[i]) != bits(b[i])) return static_cast<int64_t>(i);
    } else if (a[i] != b[i]) {
      return static_cast<int64_t>(i);
    }
  }
  return -1;
}

int64_t ulp_distance(float a, float b) {
  auto ord = [](float f) {
    const int64_t u = bits(f);
    return u & 0x80000000 ? -(u & 0x7fffffff) : u;
  };
  return std::llabs(ord(a) - ord(b));
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

// The fixture files, loaded once per test; a missing file fails the test with a pointer to the
// generator instead of skipping it.
class Nf4Fixture : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* f : {"nf4_cases.safetensors", "nf4_cases.json", "model.safetensors"})
      if (!fs::exists(fixture_dir() + "/" + f))
        FAIL() << "missing fixture " << fixture_dir() << "/" << f
               << ": run `python3 tools/make_nf4_fixtures.py --out tests/fixtures/nf4` (numpy; torch optional)";
    cases_ = std::make_unique<SafetensorsFile>(SafetensorsFile::open(fixture_dir() + "/nf4_cases.safetensors"));
    std::ifstream in(fixture_dir() + "/nf4_cases.json");
    meta_ = json::parse(in);
  }

  std::vector<float> f32(const std::string& key) const { return cases_->read_f32(key).data; }
  std::vector<uint8_t> u8(const std::string& key) const {
    const TensorInfo* t = cases_->find(key);
    EXPECT_TRUE(t && t->dtype == DType::U8) << key;
    if (!t) return {};
    const auto b = cases_->bytes(*t);
    return {b.begin(), b.end()};
  }

  std::unique_ptr<SafetensorsFile> cases_;
  json meta_;
};

TEST_F(Nf4Fixture, DynamicMapsMatchTorch) {
  const auto s = f32("dynamic_map.signed"), u = f32("dynamic_map.unsigned");
  const QuantMap &ms = dynamic_map(true), &mu = dynamic_map(false);
  EXPECT_EQ(first_bit_difference(std::vector<float>(ms.begin(), ms.end()), s), -1)
      << "signed map (source: " << meta_["dynamic_map_source"] << ")";
  EXPECT_EQ(first_bit_difference(std::vector<float>(mu.begin(), mu.end()), u), -1)
      << "unsigned map (source: " << meta_["dynamic_map_source"] << ")";
  EXPECT_EQ(ms[127], 0.0f);
  EXPECT_EQ(ms[255], 1.0f);
  EXPECT_EQ(mu[0], 0.0f);
}

TEST_F(Nf4Fixture, Nf4TablesMatch) {
  const auto& c = nf4_code();
  const auto& th = nf4_thresholds();
  EXPECT_EQ(first_bit_difference(std::vector<float>(c.begin(), c.end()), f32("nf4.code")), -1);
  EXPECT_EQ(first_bit_difference(std::vector<float>(th.begin(), th.end()), f32("nf4.thresholds")), -1);
}

TEST_F(Nf4Fixture, EightBitSearchIsBitsandbytesDQuantize) {
  const auto y = f32("dynamic_probe.y");
  const auto q = u8("dynamic_probe.q");
  ASSERT_EQ(y.size(), q.size());
  // The fixture's own map, so that this checks the search alone (DynamicMapsMatchTorch checks the map).
  const auto m = f32("dynamic_map.signed");
  ASSERT_EQ(m.size(), 256u);
  QuantMap map{};
  std::copy(m.begin(), m.end(), map.begin());
  int ties_differ = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    EXPECT_EQ(quantize_dynamic_bnb(map, y[i]), q[i]) << "probe " << i << " y=" << y[i];
    if (!std::isnan(y[i]) && quantize_to_map(map, y[i]) != q[i]) ++ties_differ;
  }
  // quantize_to_map sends every exact midpoint down; dQuantize sends about half of them up.
  EXPECT_EQ(ties_differ, meta_["dynamic_probe_differs_from_nearest_ties_low"].get<int>());
}

TEST_F(Nf4Fixture, QuantizeIsBitIdentical) {
  for (const auto& [name, info] : meta_["cases"].items()) {
    SCOPED_TRACE(name);
    const auto x = f32(name + ".x");
    const auto shape = info["shape"].get<std::vector<int64_t>>();
    const int64_t bs = info["blocksize"], n = info["numel"];
    const bool nested = info["nested"];
    ASSERT_EQ(static_cast<int64_t>(x.size()), n);
    const Nf4Tensor t = nf4_quantize(x.data(), shape, bs, nested);
    EXPECT_EQ(first_bit_difference(t.packed, u8(name + ".packed")), -1);
    std::vector<uint8_t> packed((n + 1) / 2);
    std::vector<float> absmax(t.nblocks());
    nf4_quantize_blocks(x.data(), n, bs, packed.data(), absmax.data());
    EXPECT_EQ(first_bit_difference(absmax, f32(name + ".absmax")), -1);
    if (!nested) {
      EXPECT_EQ(first_bit_difference(t.absmax, f32(name + ".absmax")), -1);
      continue;
    }
    EXPECT_EQ(first_bit_difference(t.absmax_q, u8(name + ".absmax_q")), -1);
    EXPECT_EQ(first_bit_difference(t.absmax2, f32(name + ".absmax2")), -1);
    EXPECT_EQ(bits(t.offset), bits(f32(name + ".offset")[0])) << t.offset;
    // torch's own means sum in another order (CPU: cascade sum then / n; CUDA: tree sum * (1/n)):
    // the same value to within a couple of ulp. Recorded, not required to be equal.
    for (const char* k : {"torch_cpu_mean", "torch_cuda_mean"})
      if (info.contains(k)) {
        const float m = info[k].get<float>();
        EXPECT_LE(ulp_distance(t.offset, m), 2) << k << " " << m << " vs " << t.offset;
        RecordProperty(name + "_" + k + "_ulps", static_cast<int>(ulp_distance(t.offset, m)));
      }
  }
}

TEST_F(Nf4Fixture, DequantizeIsBitIdentical) {
  for (const auto& [name, info] : meta_["cases"].items()) {
    SCOPED_TRACE(name);
    const auto x = f32(name + ".x");
    const Nf4Tensor t = nf4_quantize(x.data(), info["shape"].get<std::vector<int64_t>>(), info["blocksize"],
                                     info["nested"].get<bool>());
    std::vector<float> out(t.numel);
    nf4_dequantize(t, out.data());
    // Exact, sign of zero included: one fp32 product (and for nested scales one product and one
    // sum), each rounded once, on both sides.
    EXPECT_EQ(first_bit_difference(out, f32(name + ".dequant")), -1);
  }
}

TEST_F(Nf4Fixture, RoundTripErrorMatchesFixtureAndNf4Figure) {
  for (const auto& [name, info] : meta_["cases"].items()) {
    SCOPED_TRACE(name);
    const auto x = f32(name + ".x");
    const Nf4Tensor t = nf4_quantize(x.data(), info["shape"].get<std::vector<int64_t>>(), info["blocksize"],
                                     info["nested"].get<bool>());
    std::vector<float> out(t.numel);
    nf4_dequantize(t, out.data());
    double sa = 0, ss = 0, mx = 0;
    int64_t m = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      if (!std::isfinite(x[i])) continue;
      const double e = static_cast<double>(out[i]) - x[i];
      sa += std::fabs(e), ss += e * e, mx = std::max(mx, std::fabs(e)), ++m;
    }
    const auto& st = info["stats"];
    EXPECT_NEAR(sa / m, st["mae"].get<double>(), 1e-12 * (1 + st["mae"].get<double>()));
    EXPECT_NEAR(std::sqrt(ss / m), st["rmse"].get<double>(), 1e-12 * (1 + st["rmse"].get<double>()));
    EXPECT_EQ(mx, st["max_abs"].get<double>());
  }
  // The NF4 figure for N(0,1) with blocksize 64 and double quantization: RMSE 0.0919 (2^20 samples
  // in the fixture). Our own sample of the same size must land within 1% of it.
  const double want = meta_["large_sample"]["nested"]["rmse"];
  EXPECT_NEAR(want, 0.0919, 0.0005);
  Rng rng(42);
  std::vector<float> x(1 << 20);
  for (float& v : x) v = rng.normal();
  const Nf4Tensor t = nf4_quantize(x.data(), {1 << 20}, 64, true);
  std::vector<float> out(x.size());
  nf4_dequantize(t, out.data());
  double ss = 0;
  for (size_t i = 0; i < x.size(); ++i) ss += (static_cast<double>(out[i]) - x[i]) * (out[i] - x[i]);
  const double rmse = std::sqrt(ss / static_cast<double>(x.size()));
  EXPECT_NEAR(rmse, want, 0.01 * want);
  std::printf("[ nf4 ] N(0,1) round trip, blocksize 64, nested: RMSE %.6f (fixture %.6f)\n", rmse, want);
}

TEST_F(Nf4Fixture, BitsandbytesCheckpointLoadsAndRewritesIdentically) {
  const auto file = SafetensorsFile::open(fixture_dir() + "/model.safetensors");
  SafetensorsWriter w;
  for (const auto& [prefix, info] : meta_["checkpoint"].items()) {
    SCOPED_TRACE(prefix);
    ASSERT_TRUE(is_bnb_4bit(file, prefix));
    const auto shape = info["shape"].get<std::vector<int64_t>>();
    const Nf4Tensor t = read_bnb_nf4(file, prefix, shape);
    EXPECT_EQ(t.nested, info["nested"].get<bool>());
    EXPECT_EQ(t.dtype, "bfloat16");
    EXPECT_EQ(bnb_quant_state_json(t), info["quant_state"].get<std::string>());
    std::vector<float> out(t.numel);
    nf4_dequantize(t, out.data());
    const std::string c = "ckpt." + info["case"].get<std::string>();
    EXPECT_EQ(first_bit_difference(out, f32(c + ".dequant")), -1);
    // Quantizing the bf16 source ourselves gives the file's bytes.
    const auto src = f32(c + ".source");
    Nf4Tensor mine = nf4_quantize(src.data(), shape, 64, t.nested);
    EXPECT_EQ(first_bit_difference(mine.packed, t.packed), -1);
    EXPECT_EQ(first_bit_difference(mine.absmax, t.absmax), -1);
    EXPECT_EQ(first_bit_difference(mine.absmax_q, t.absmax_q), -1);
    EXPECT_EQ(first_bit_difference(mine.absmax2, t.absmax2), -1);
    EXPECT_EQ(bits(mine.offset), bits(t.offset));
    mine.dtype = "bfloat16";
    add_bnb_nf4(w, prefix, mine);
  }
  EXPECT_FALSE(is_bnb_4bit(file, "model.norm.weight"));
  // Every key we write holds the same dtype, shape and bytes as bitsandbytes' (the JSON included).
  testing::TempDir dir("nf4-ckpt");
  w.write(dir / "out.safetensors");
  const auto ours = SafetensorsFile::open(dir / "out.safetensors");
  for (const auto& t : file.tensors()) {
    if (t.name == "model.norm.weight") continue;
    SCOPED_TRACE(t.name);
    const TensorInfo* o = ours.find(t.name);
    ASSERT_NE(o, nullptr);
    EXPECT_EQ(o->dtype, t.dtype);
    EXPECT_EQ(o->shape, t.shape);
    const auto a = file.bytes(t), b = ours.bytes(*o);
    EXPECT_TRUE(a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin()));
  }
  EXPECT_EQ(ours.tensors().size() + 1, file.tensors().size());
}

// ---- tests that need no fixture ----

TEST(Nf4, EncodeUsesStrictThresholdsAndSendsNanToZero) {
  const auto& code = nf4_code();
  const auto& th = nf4_thresholds();
  EXPECT_EQ(code[7], 0.0f);
  for (int k = 0; k < 15; ++k) {
    EXPECT_EQ(nf4_encode(th[k]), k) << "a value on a threshold takes the lower code";
    EXPECT_EQ(nf4_encode(std::nextafter(th[k], 2.0f)), k + 1);
    EXPECT_EQ(nf4_encode(code[k]), k);
    // Each threshold is the double midpoint of two codes rounded to float32 (straight from the
    // decimal literal), so it lies within one ulp of the float midpoint.
    const float mid = static_cast<float>((static_cast<double>(code[k]) + code[k + 1]) / 2);
    EXPECT_LE(std::fabs(th[k] - mid), std::fabs(std::nextafter(mid, 2.0f) - mid)) << k;
  }
  EXPECT_EQ(nf4_encode(1.0f), 15);
  EXPECT_EQ(nf4_encode(-1.0f), 0);
  EXPECT_EQ(nf4_encode(0.0f), 7);
  EXPECT_EQ(nf4_encode(-0.0f), 7);
  EXPECT_EQ(nf4_encode(std::nanf("")), 0);
}

TEST(Nf4, PartialBlocksOddLengthAndZeroBlocks) {
  // 7 elements: one partial block; the 8th nibble is the code of the zero padding.
  const std::vector<float> x = {0.5f, -1.0f, 0.25f, 0.0f, 1.0f, -0.1f, 0.3f};
  const Nf4Tensor t = nf4_quantize(x.data(), {7}, 64, false);
  ASSERT_EQ(t.packed.size(), 4u);
  EXPECT_EQ(t.absmax[0], 1.0f);
  EXPECT_EQ(t.packed[3] & 15, 7);
  EXPECT_EQ(t.packed[0] >> 4, nf4_encode(0.5f));
  EXPECT_EQ(t.packed[0] & 15, 0);
  // An all-zero block: absmax 0, 0 * (1/0) is NaN, so every code is 0 and dequantizes to -0.0.
  std::vector<float> z(128, 0.0f);
  z[70] = 2.0f;
  const Nf4Tensor tz = nf4_quantize(z.data(), {128}, 64, false);
  EXPECT_EQ(tz.absmax[0], 0.0f);
  EXPECT_EQ(tz.packed[0], 0);
  std::vector<float> out(128);
  nf4_dequantize(tz, out.data());
  EXPECT_EQ(out[0], 0.0f);
  EXPECT_TRUE(std::signbit(out[0]));
  EXPECT_EQ(out[70], 2.0f);
}

TEST(Nf4, RejectsBadBlocksize) {
  const std::vector<float> x(64, 1.0f);
  EXPECT_NE(error_of([&] { nf4_quantize(x.data(), {64}, 48); }).find("blocksize 48"), std::string::npos);
  EXPECT_NE(error_of([&] { nf4_quantize(x.data(), {64}, 16); }).find("blocksize 16"), std::string::npos);
}

// A small quantized weight written with add_bnb_nf4, as a map from key to (dtype, shape, bytes) that
// the bad-input tests edit before writing it out.
struct Entry {
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};
using Entries = std::map<std::string, Entry>;

const std::string kPrefix = "model.layers.0.mlp.up_proj.weight";

Entries good_entries(bool nested) {
  Rng r(7);
  std::vector<float> w(40 * 72);
  for (float& v : w) v = 0.02f * r.normal();
  Nf4Tensor t = nf4_quantize(w.data(), {40, 72}, 64, nested);
  t.dtype = "bfloat16";
  SafetensorsWriter wr;
  add_bnb_nf4(wr, kPrefix, t);
  testing::TempDir dir("nf4-good");
  wr.write(dir / "m.safetensors");
  const auto f = SafetensorsFile::open(dir / "m.safetensors");
  Entries e;
  for (const auto& ti : f.tensors()) {
    const auto b = f.bytes(ti);
    e[ti.name] = {ti.dtype, ti.shape, {b.begin(), b.end()}};
  }
  return e;
}

// Writes `e` and reads the weight back; returns the error text.
std::string load_error(const Entries& e, const std::vector<int64_t>& expected = {40, 72}) {
  testing::TempDir dir("nf4-bad");
  SafetensorsWriter wr;
  for (const auto& [k, v] : e) wr.add(k, v.dtype, v.shape, v.bytes);
  wr.write(dir / "bad.safetensors");
  const auto f = SafetensorsFile::open(dir / "bad.safetensors");
  return error_of([&] { read_bnb_nf4(f, kPrefix, expected); });
}

void set_state(Entries& e, const std::string& js, const std::string& key_suffix = "nf4") {
  for (auto it = e.begin(); it != e.end();)
    it = it->first.find(".quant_state.") != std::string::npos ? e.erase(it) : std::next(it);
  e[kPrefix + ".quant_state.bitsandbytes__" + key_suffix] = {
      DType::U8, {static_cast<int64_t>(js.size())}, std::vector<uint8_t>(js.begin(), js.end())};
}

void expect_one_line(const std::string& err, const std::vector<std::string>& needles) {
  EXPECT_EQ(err.find('\n'), std::string::npos) << err;
  EXPECT_NE(err.find("bad.safetensors"), std::string::npos) << err;
  for (const auto& s : needles) EXPECT_NE(err.find(s), std::string::npos) << "'" << s << "' not in: " << err;
}

TEST(Nf4Checkpoint, WriteReadRoundTripWithoutFixtures) {
  for (bool nested : {true, false}) {
    Rng r(3);
    std::vector<float> w(33 * 65);  // odd numel, partial last block
    for (float& v : w) v = r.normal();
    Nf4Tensor t = nf4_quantize(w.data(), {33, 65}, 128, nested);
    SafetensorsWriter wr;
    add_bnb_nf4(wr, "a.weight", t);
    testing::TempDir dir("nf4-rt");
    wr.write(dir / "m.safetensors");
    const auto f = SafetensorsFile::open(dir / "m.safetensors");
    const Nf4Tensor u = read_bnb_nf4(f, "a.weight", {33, 65});
    EXPECT_EQ(u.packed, t.packed);
    EXPECT_EQ(u.absmax, t.absmax);
    EXPECT_EQ(u.absmax_q, t.absmax_q);
    EXPECT_EQ(u.absmax2, t.absmax2);
    EXPECT_EQ(bits(u.offset), bits(t.offset));
    EXPECT_EQ(u.dtype, "float32");
    EXPECT_EQ(u.blocksize, 128);
  }
}

TEST(Nf4Checkpoint, QuantStateJsonIsPythonJsonDumps) {
  Nf4Tensor t;
  t.shape = {4096, 11008};
  t.numel = 4096 * 11008;
  t.dtype = "bfloat16";
  t.offset = 0.05086517333984375f;
  EXPECT_EQ(bnb_quant_state_json(t),
            R"({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [4096, 11008], )"
            R"("nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.05086517333984375})");
  t.offset = 2.0f;  // Python prints integral floats with ".0"
  EXPECT_NE(bnb_quant_state_json(t).find(R"("nested_offset": 2.0})"), std::string::npos);
  t.offset = 1.5e-05f;  // and switches to exponent form below 1e-4
  EXPECT_NE(bnb_quant_state_json(t).find(R"("nested_offset": 1.4999999621068127e-05})"), std::string::npos);
  t.nested = false;
  EXPECT_EQ(bnb_quant_state_json(t),
            R"({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [4096, 11008]})");
}

TEST(Nf4Checkpoint, BadInputsGiveOneLineNamingTheKey) {
  const Entries good = good_entries(true);
  EXPECT_EQ(load_error(good), "<no error>");
  {
    Entries e = good;
    e.erase(kPrefix + ".absmax");
    expect_one_line(load_error(e), {kPrefix + ".absmax'", "missing"});
  }
  {
    Entries e = good;
    e.erase(kPrefix + ".nested_absmax");
    expect_one_line(load_error(e), {kPrefix + ".nested_absmax'", "missing"});
  }
  {
    Entries e = good;
    e.erase(kPrefix);
    expect_one_line(load_error(e), {"'" + kPrefix + "'", "missing"});
  }
  {  // the fp4 key
    Entries e = good;
    set_state(e, R"({"quant_type": "fp4", "blocksize": 64, "dtype": "bfloat16", "shape": [40, 72]})", "fp4");
    expect_one_line(load_error(e), {"bitsandbytes__fp4", "fp4", "NF4 only"});
  }
  {  // fp4 inside an nf4-named state
    Entries e = good;
    set_state(e, R"({"quant_type": "fp4", "blocksize": 64, "dtype": "bfloat16", "shape": [40, 72], )"
                 R"("nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.01})");
    expect_one_line(load_error(e), {"bitsandbytes__nf4", "quant_type is \"fp4\""});
  }
  {  // truncated packed tensor
    Entries e = good;
    auto& p = e[kPrefix];
    p.bytes.resize(p.bytes.size() - 10);
    p.shape = {static_cast<int64_t>(p.bytes.size()), 1};
    expect_one_line(load_error(e), {"'" + kPrefix + "'", "U8 [1440, 1]"});
  }
  {  // wrong absmax size
    Entries e = good;
    auto& a = e[kPrefix + ".absmax"];
    a.bytes.resize(a.bytes.size() - 1);
    a.shape = {static_cast<int64_t>(a.bytes.size())};
    expect_one_line(load_error(e), {kPrefix + ".absmax'", "expected U8 [45]"});
  }
  {  // absmax stored as F32 although the state is nested
    Entries e = good;
    e[kPrefix + ".absmax"] = {DType::F32, {45}, std::vector<uint8_t>(180, 0)};
    expect_one_line(load_error(e), {kPrefix + ".absmax'", "F32 [45]", "expected U8 [45]"});
  }
  {  // a corrupted quant_map
    Entries e = good;
    e[kPrefix + ".quant_map"].bytes[4 * 3] ^= 1;
    expect_one_line(load_error(e), {kPrefix + ".quant_map'", "entry 3"});
  }
  {  // shape disagreeing with the model's [out, in]
    expect_one_line(load_error(good, {72, 40}), {"quant_state", "[40, 72]", "expected [72, 40]"});
  }
  {  // broken JSON and a bad blocksize
    Entries e = good;
    set_state(e, R"({"quant_type": "nf4", "blocksize": 64,)");
    expect_one_line(load_error(e), {"bitsandbytes__nf4", "not valid JSON"});
    set_state(e, R"({"quant_type": "nf4", "blocksize": 48, "dtype": "bfloat16", "shape": [40, 72]})");
    expect_one_line(load_error(e), {"blocksize is 48"});
  }
  {  // missing quant_state
    Entries e = good;
    e.erase(kPrefix + ".quant_state.bitsandbytes__nf4");
    expect_one_line(load_error(e), {kPrefix + ".quant_state.bitsandbytes__nf4'", "missing"});
  }
  {  // a non-nested state with the nested tensors left in
    const Entries plain = good_entries(false);
    EXPECT_EQ(load_error(plain), "<no error>");
    Entries e = plain;
    e[kPrefix + ".nested_absmax"] = {DType::F32, {1}, std::vector<uint8_t>(4, 0)};
    expect_one_line(load_error(e), {kPrefix + ".nested_absmax'", "no nested_* fields"});
    Entries f = plain;
    f[kPrefix + ".absmax"].bytes.resize(4 * 44);
    f[kPrefix + ".absmax"].shape = {44};
    expect_one_line(load_error(f), {kPrefix + ".absmax'", "expected F32 [45]"});
  }
}

}  // namespace
}  // namespace ftune

// safetensors: dtype tables and half/bfloat conversions, writer conventions, round trips of
// every dtype, sharded checkpoints, and each validation error (one line naming file and tensor).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace ftune {
namespace {

namespace fs = std::filesystem;

constexpr DType kAll[] = {DType::BOOL, DType::U8,  DType::I8,  DType::I16, DType::U16,
                          DType::F16,  DType::BF16, DType::I32, DType::U32, DType::F32,
                          DType::F64,  DType::I64, DType::U64, DType::F8_E4M3, DType::F8_E5M2};

std::vector<uint8_t> slurp(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), {}};
}

// A file image from a header text (used as is, no padding) and a data section.
std::vector<uint8_t> image(const std::string& header, const std::vector<uint8_t>& data) {
  std::vector<uint8_t> out(8 + header.size() + data.size());
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(n >> (8 * i));
  std::copy(header.begin(), header.end(), out.begin() + 8);
  std::copy(data.begin(), data.end(), out.begin() + 8 + static_cast<long>(n));
  return out;
}

// The message of the ftune::Error that `f` throws, or "" when it returns; any other exception
// fails the test.
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "not an ftune::Error: " << e.what();
  }
  return "";
}

std::string load_error(const std::vector<uint8_t>& img, const std::string& label = "t.safetensors") {
  return error_of([&] { SafetensorsFile::from_bytes(img.data(), img.size(), label); });
}

#define EXPECT_HAS(msg, needle)                                                       \
  do {                                                                                \
    const std::string m_ = (msg);                                                     \
    EXPECT_NE(m_.find(needle), std::string::npos) << "got: " << m_ << "\nwanted: " << (needle); \
    EXPECT_EQ(m_.find('\n'), std::string::npos) << m_;                                \
  } while (0)

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

TEST(Dtype, NamesAndSizes) {
  std::set<std::string> names;
  for (DType t : kAll) {
    EXPECT_EQ(dtype_from_name(dtype_name(t)), t) << dtype_name(t);
    names.insert(dtype_name(t));
  }
  EXPECT_EQ(names.size(), std::size(kAll));
  const std::pair<DType, size_t> sizes[] = {
      {DType::BOOL, 1}, {DType::U8, 1},   {DType::I8, 1},   {DType::F8_E4M3, 1}, {DType::F8_E5M2, 1},
      {DType::I16, 2},  {DType::U16, 2},  {DType::F16, 2},  {DType::BF16, 2},    {DType::I32, 4},
      {DType::U32, 4},  {DType::F32, 4},  {DType::F64, 8},  {DType::I64, 8},     {DType::U64, 8}};
  for (const auto& [t, size] : sizes) EXPECT_EQ(dtype_size(t), size) << dtype_name(t);
  EXPECT_STREQ(dtype_name(DType::BF16), "BF16");
  EXPECT_STREQ(dtype_name(DType::F8_E4M3), "F8_E4M3");
  for (const char* s : {"f32", "F33", "", "F32 ", "C64", "bfloat16", "FLOAT"}) EXPECT_FALSE(dtype_from_name(s)) << s;
}

TEST(Dtype, F16HandComputedValues) {
  struct Case {
    float f;
    uint16_t h;
  } cases[] = {
      {1.0f, 0x3c00}, {-2.0f, 0xc000}, {0.5f, 0x3800}, {65504.0f, 0x7bff}, {0.1f, 0x2e66}, {1.0f / 3, 0x3555},
      {0.0f, 0x0000}, {-0.0f, 0x8000}, {INFINITY, 0x7c00}, {-INFINITY, 0xfc00}, {1e6f, 0x7c00}, {-1e6f, 0xfc00},
      // Smallest normal, smallest and largest subnormal; float subnormals are far below half's range.
      {std::ldexp(1.0f, -14), 0x0400}, {std::ldexp(1.0f, -24), 0x0001}, {std::ldexp(1023.0f, -24), 0x03ff},
      {std::ldexp(1.0f, -15), 0x0200}, {1e-40f, 0x0000}, {-1e-40f, 0x8000},
      // Ties round to the even neighbour.
      {1.0f + std::ldexp(1.0f, -11), 0x3c00},      // between 0x3c00 and 0x3c01
      {1.0f + 3 * std::ldexp(1.0f, -11), 0x3c02},  // between 0x3c01 and 0x3c02
      {65520.0f, 0x7c00},                          // between 65504 (odd) and the overflow: inf
      {std::nextafter(65520.0f, 0.0f), 0x7bff},
      {std::ldexp(1.0f, -25), 0x0000},             // between 0 and 0x0001
      {std::nextafter(std::ldexp(1.0f, -25), 1.0f), 0x0001},
      {std::ldexp(3.0f, -25), 0x0002},             // between 0x0001 and 0x0002
      {std::ldexp(2047.0f, -25), 0x0400},          // between 0x03ff and 0x0400 (subnormal -> normal)
      {-std::ldexp(3.0f, -25), 0x8002},
  };
  for (const auto& c : cases) EXPECT_EQ(f32_to_f16(c.f), c.h) << c.f;
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(f16_to_f32(0x03ff), std::ldexp(1023.0f, -24));
  EXPECT_EQ(f16_to_f32(0x3555), 0.333251953125f);
  EXPECT_EQ(f16_to_f32(0x7c00), INFINITY);
  EXPECT_EQ(f16_to_f32(0xfc00), -INFINITY);
  EXPECT_EQ(bits(f16_to_f32(0x8000)), 0x80000000u);
  // NaN stays NaN both ways, keeps its sign, and a signalling half NaN comes back quiet.
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7c01)));
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7e00)));
  EXPECT_TRUE(bits(f16_to_f32(0x7c01)) & 0x400000u);
  EXPECT_TRUE(std::signbit(f16_to_f32(0xfe00)));
  for (uint32_t nan : {0x7fc00000u, 0x7f800001u, 0xffc00000u, 0x7fffffffu}) {
    const uint16_t h = f32_to_f16(from_bits(nan));
    EXPECT_EQ(h & 0x7c00, 0x7c00) << std::hex << nan;
    EXPECT_NE(h & 0x03ff, 0) << std::hex << nan;
    EXPECT_EQ(h >> 15, nan >> 31);
  }
}

TEST(Dtype, F16RoundsEveryMidpointToEven) {
  for (uint32_t h = 0; h < 0x7c00; ++h) {
    const double lo = f16_to_f32(static_cast<uint16_t>(h));
    const double hi = h == 0x7bff ? 65536.0 : static_cast<double>(f16_to_f32(static_cast<uint16_t>(h + 1)));
    const float mid = static_cast<float>((lo + hi) / 2);  // 12 significant bits: exact in fp32
    ASSERT_EQ(static_cast<double>(mid), (lo + hi) / 2);
    const uint32_t even = (h & 1) ? h + 1 : h;
    for (uint32_t sign : {0u, 0x8000u}) {
      const float s = sign ? -1.0f : 1.0f;
      ASSERT_EQ(f32_to_f16(s * static_cast<float>(lo)), h | sign) << std::hex << h;
      ASSERT_EQ(f32_to_f16(s * mid), even | sign) << std::hex << h;
      ASSERT_EQ(f32_to_f16(s * std::nextafter(mid, 0.0f)), h | sign) << std::hex << h;
      ASSERT_EQ(f32_to_f16(s * std::nextafter(mid, INFINITY)), (h + 1) | sign) << std::hex << h;
    }
    ASSERT_EQ(bits(f16_to_f32(static_cast<uint16_t>(h | 0x8000))), bits(static_cast<float>(lo)) | 0x80000000u);
  }
}

TEST(Dtype, Bf16RoundsEveryMidpointToEven) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(f32_to_bf16(-2.0f), 0xc000);
  EXPECT_EQ(f32_to_bf16(1.00390625f), 0x3f80);  // 1 + 2^-8: tie, down to even
  EXPECT_EQ(f32_to_bf16(1.01171875f), 0x3f82);  // 1 + 3*2^-8: tie, up to even
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::max()), 0x7f80);  // beyond the largest bf16 + half ulp
  EXPECT_EQ(f32_to_bf16(INFINITY), 0x7f80);
  EXPECT_EQ(f32_to_bf16(-INFINITY), 0xff80);
  EXPECT_EQ(f32_to_bf16(from_bits(0x00000001u)), 0x0000);  // float subnormals round like any value
  EXPECT_EQ(f32_to_bf16(from_bits(0x00018000u)), 0x0002);
  EXPECT_EQ(bf16_to_f32(0x3f80), 1.0f);
  EXPECT_EQ(bf16_to_f32(0x0001), from_bits(0x00010000u));
  for (uint32_t nan : {0x7fc00000u, 0x7f800001u, 0xff800001u}) {
    const uint16_t b = f32_to_bf16(from_bits(nan));
    EXPECT_TRUE(std::isnan(bf16_to_f32(b))) << std::hex << nan;
    EXPECT_EQ(b >> 15, nan >> 31);
  }
  for (uint32_t b = 0; b < 0x7f80; ++b) {
    const double lo = bf16_to_f32(static_cast<uint16_t>(b));
    const double hi = b == 0x7f7f ? std::ldexp(1.0, 128) : static_cast<double>(bf16_to_f32(static_cast<uint16_t>(b + 1)));
    const float mid = static_cast<float>((lo + hi) / 2);
    ASSERT_EQ(static_cast<double>(mid), (lo + hi) / 2);
    const uint32_t even = (b & 1) ? b + 1 : b;
    ASSERT_EQ(f32_to_bf16(static_cast<float>(lo)), b);
    ASSERT_EQ(f32_to_bf16(mid), even) << std::hex << b;
    ASSERT_EQ(f32_to_bf16(-mid), even | 0x8000) << std::hex << b;
    ASSERT_EQ(f32_to_bf16(std::nextafter(mid, 0.0f)), b) << std::hex << b;
    ASSERT_EQ(f32_to_bf16(std::nextafter(mid, INFINITY)), b + 1) << std::hex << b;
  }
}

#ifdef __FLT16_MANT_DIG__
// The compiler's own _Float16 conversions are an independent reference.
TEST(Dtype, F16MatchesCompilerHalfType) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    _Float16 x;
    const auto h16 = static_cast<uint16_t>(h);
    std::memcpy(&x, &h16, 2);
    const float ref = static_cast<float>(x);
    if (std::isnan(ref)) {
      ASSERT_TRUE(std::isnan(f16_to_f32(h16)));
    } else {
      ASSERT_EQ(bits(f16_to_f32(h16)), bits(ref)) << std::hex << h;
    }
  }
  Rng r(7);
  for (int i = 0; i < 400000; ++i) {
    const float f = from_bits(static_cast<uint32_t>(r.next_u64()));
    if (std::isnan(f)) continue;
    const _Float16 ref = static_cast<_Float16>(f);
    uint16_t want;
    std::memcpy(&want, &ref, 2);
    ASSERT_EQ(f32_to_f16(f), want) << std::hex << bits(f);
  }
}
#endif

TEST(Safetensors, EveryDtypeRoundTripsAligned) {
  testing::TempDir dir("st-dtypes");
  Rng r(11);
  SafetensorsWriter w;
  std::map<std::string, std::vector<uint8_t>> want;
  for (DType t : kAll) {
    for (const std::vector<int64_t>& shape : {std::vector<int64_t>{3, 5}, std::vector<int64_t>{}}) {
      std::vector<uint8_t> bytes(static_cast<size_t>(Tensor::count(shape)) * dtype_size(t));
      for (auto& b : bytes) b = static_cast<uint8_t>(r.next_u64());
      const std::string name = std::string(dtype_name(t)) + (shape.empty() ? ".scalar" : ".mat");
      want[name] = bytes;
      w.add(name, t, shape, bytes);
    }
  }
  w.write(dir / "all.safetensors");
  const SafetensorsFile f = SafetensorsFile::open(dir / "all.safetensors");
  ASSERT_EQ(f.tensors().size(), want.size());
  const auto raw = slurp(dir / "all.safetensors");
  uint64_t n;
  std::memcpy(&n, raw.data(), 8);
  EXPECT_EQ((8 + n) % 8, 0u);
  for (DType t : kAll) {
    for (const char* suffix : {".mat", ".scalar"}) {
      const std::string name = std::string(dtype_name(t)) + suffix;
      const TensorInfo* info = f.find(name);
      ASSERT_NE(info, nullptr) << name;
      EXPECT_EQ(info->dtype, t);
      EXPECT_EQ(info->shape, std::string(suffix) == ".mat" ? std::vector<int64_t>({3, 5}) : std::vector<int64_t>{});
      EXPECT_EQ(info->begin % dtype_size(t), 0u) << name;  // the writer keeps every tensor aligned
      const auto b = f.bytes(*info);
      EXPECT_EQ(std::vector<uint8_t>(b.begin(), b.end()), want[name]) << name;
    }
  }
  EXPECT_EQ(f.find("nope"), nullptr);
  EXPECT_HAS(error_of([&] { f.read_f32("I32.mat"); }), "all.safetensors: tensor 'I32.mat' has dtype I32, expected a floating type");
  EXPECT_HAS(error_of([&] { f.read_f32("nope"); }), "all.safetensors: tensor 'nope' is missing");
  // Known values through each floating dtype.
  const auto le = [](auto... v) {  // little-endian bytes of the arguments, concatenated
    std::vector<uint8_t> out(sizeof...(v) * 8);
    size_t at = 0;
    ((std::memcpy(out.data() + at, &v, sizeof(v)), at += sizeof(v)), ...);
    out.resize(at);
    return out;
  };
  SafetensorsWriter k;
  k.add("f64", DType::F64, {4}, le(1.5, -2.25, 1e-3, 3.0e38));
  k.add("f16", DType::F16, {4}, le(uint16_t{0x3c00}, uint16_t{0xc000}, uint16_t{0x0001}, uint16_t{0x7c00}));
  k.add("bf16", DType::BF16, {2, 2}, le(uint16_t{0x3f80}, uint16_t{0xc040}, uint16_t{0x0001}, uint16_t{0xff80}));
  k.add("f32", DType::F32, {2}, le(0.25f, -7.0f));
  k.write(dir / "known.safetensors");
  const SafetensorsFile kf = SafetensorsFile::open(dir / "known.safetensors");
  EXPECT_EQ(kf.read_f32("f64").data, (std::vector<float>{1.5f, -2.25f, 1e-3f, 3.0e38f}));
  EXPECT_EQ(kf.read_f32("f16").data, (std::vector<float>{1.0f, -2.0f, std::ldexp(1.0f, -24), INFINITY}));
  EXPECT_EQ(kf.read_f32("bf16").data, (std::vector<float>{1.0f, -3.0f, from_bits(0x00010000u), -INFINITY}));
  EXPECT_EQ(kf.read_f32("bf16").shape, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(kf.read_f32("f32").data, (std::vector<float>{0.25f, -7.0f}));
}

TEST(Safetensors, AddF32ConvertsLikeTheScalarFunctions) {
  testing::TempDir dir("st-f32");
  Tensor a({4, 8});
  testing::fill_normal(a, 1, 3.0f);
  const float specials[] = {0.0f, -0.0f, INFINITY, -INFINITY, 65520.0f, 1e-8f, std::ldexp(3.0f, -25), 1.00390625f};
  std::copy(std::begin(specials), std::end(specials), a.data.begin());
  SafetensorsWriter w;
  w.add_f32("w.bf16", a, DType::BF16);
  w.add_f32("w.f16", a, DType::F16);
  w.add_f32("w.f32", a);
  w.add_f32("empty", Tensor({0, 3}), DType::BF16);
  w.write(dir / "x.safetensors");
  const SafetensorsFile f = SafetensorsFile::open(dir / "x.safetensors");
  const Tensor b = f.read_f32("w.bf16"), h = f.read_f32("w.f16"), s = f.read_f32("w.f32");
  EXPECT_EQ(s.data, a.data);
  EXPECT_EQ(b.shape, a.shape);
  for (size_t i = 0; i < a.data.size(); ++i) {
    EXPECT_EQ(bits(b.data[i]), bits(bf16_to_f32(f32_to_bf16(a.data[i])))) << i;
    EXPECT_EQ(bits(h.data[i]), bits(f16_to_f32(f32_to_f16(a.data[i])))) << i;
  }
  const std::vector<float> tail(a.data.begin() + 8, a.data.end());
  EXPECT_LT(testing::rel_err(std::vector<float>(b.data.begin() + 8, b.data.end()), tail), 4e-3);
  EXPECT_LT(testing::rel_err(std::vector<float>(h.data.begin() + 8, h.data.end()), tail), 5e-4);
  EXPECT_EQ(f.read_f32("empty").numel(), 0);
  EXPECT_EQ(f.read_f32("empty").shape, (std::vector<int64_t>{0, 3}));
}

TEST(Safetensors, WriterMatchesReferenceBytes) {
  testing::TempDir dir("st-bytes");
  const float values[] = {0.0f, 1.0f, 2.0f, 3.0f, 4.0f, 5.0f};
  std::vector<uint8_t> data(sizeof(values));
  std::memcpy(data.data(), values, sizeof(values));
  // 64 header bytes need no padding; the 65-byte one gets 7 spaces.
  SafetensorsWriter a;
  a.add("attn.0", DType::F32, {1, 2, 3}, data);
  a.write(dir / "a.safetensors");
  EXPECT_EQ(slurp(dir / "a.safetensors"), image(R"({"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}})", data));
  SafetensorsWriter b;
  b.add("attn0", DType::F32, {1, 1, 2, 3}, data);
  b.write(dir / "b.safetensors");
  EXPECT_EQ(slurp(dir / "b.safetensors"),
            image(R"({"attn0":{"dtype":"F32","shape":[1,1,2,3],"data_offsets":[0,24]}})" + std::string(7, ' '), data));
  SafetensorsWriter empty;
  empty.write(dir / "e.safetensors");
  EXPECT_EQ(slurp(dir / "e.safetensors"), image("{}      ", {}));
  empty.write(dir / "m.safetensors", {{"framework", "pt"}});
  EXPECT_EQ(slurp(dir / "m.safetensors"), image(R"({"__metadata__":{"framework":"pt"}})" + std::string(5, ' '), {}));
}

TEST(Safetensors, WriterOrdersByDescendingAlignmentThenName) {
  testing::TempDir dir("st-order");
  SafetensorsWriter w;
  // Added in a scrambled order; names chosen so that name order alone would differ.
  const std::vector<std::pair<std::string, DType>> added = {
      {"a.bool", DType::BOOL}, {"b.u8", DType::U8},   {"c.f16", DType::F16},  {"d.i64", DType::I64},
      {"e.f64", DType::F64},   {"f.u64", DType::U64}, {"g.i32", DType::I32},  {"h.f32", DType::F32},
      {"i.u32", DType::U32},   {"j.bf16", DType::BF16}, {"k.i16", DType::I16}, {"l.u16", DType::U16},
      {"m.i8", DType::I8},     {"n.e4m3", DType::F8_E4M3}, {"o.e5m2", DType::F8_E5M2}, {"a.f32", DType::F32},
      {"z.f32", DType::F32},
  };
  for (const auto& [name, t] : added) w.add(name, t, {3}, std::vector<uint8_t>(3 * dtype_size(t), 1));
  w.write(dir / "o.safetensors", {{"z", "last"}, {"format", "pt"}, {"a", "line\nbreak \"quoted\" \xc3\xa9"}});
  const auto raw = slurp(dir / "o.safetensors");
  uint64_t n;
  std::memcpy(&n, raw.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  const std::string header(raw.begin() + 8, raw.begin() + 8 + static_cast<long>(n));
  EXPECT_EQ(header.rfind(R"({"__metadata__":{"a":"line\nbreak \"quoted\" )" "\xc3\xa9" R"(","format":"pt","z":"last"},)", 0), 0u)
      << header;
  EXPECT_EQ(header.find(": "), std::string::npos) << "compact JSON expected: " << header;
  std::vector<std::string> order;
  const auto parsed = nlohmann::ordered_json::parse(header);
  for (const auto& [k, v] : parsed.items())
    if (k != "__metadata__") order.push_back(k);
  // The reference sorts by its dtype enum, declared in increasing alignment, descending.
  const std::vector<std::string> expect = {"f.u64", "d.i64", "e.f64", "a.f32", "h.f32", "z.f32",
                                           "i.u32", "g.i32", "j.bf16", "c.f16", "l.u16", "k.i16",
                                           "n.e4m3", "o.e5m2", "m.i8", "b.u8", "a.bool"};
  EXPECT_EQ(order, expect);
  const SafetensorsFile f = SafetensorsFile::open(dir / "o.safetensors");
  EXPECT_EQ(f.metadata().at("a"), "line\nbreak \"quoted\" \xc3\xa9");
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.metadata().size(), 3u);
  ASSERT_EQ(f.tensors().size(), expect.size());
  for (size_t i = 0; i < expect.size(); ++i) EXPECT_EQ(f.tensors()[i].name, expect[i]);  // header order
}

TEST(Safetensors, WriterIsAtomicAndReportsErrors) {
  testing::TempDir dir("st-writer");
  SafetensorsWriter w;
  w.add("x", DType::F32, {1}, {0, 0, 128, 63});
  std::ofstream(dir / "x.safetensors") << "old contents";
  w.write(dir / "x.safetensors");
  EXPECT_FALSE(fs::exists(dir / "x.safetensors.tmp"));
  EXPECT_EQ(SafetensorsFile::open(dir / "x.safetensors").read_f32("x").data, std::vector<float>{1.0f});
  std::vector<std::string> entries;
  for (const auto& e : fs::directory_iterator(dir.str())) entries.push_back(e.path().filename().string());
  EXPECT_EQ(entries, std::vector<std::string>{"x.safetensors"});

  const std::string missing = dir / "no/such/dir/y.safetensors";
  EXPECT_HAS(error_of([&] { w.write(missing); }), missing + ": cannot create");
  EXPECT_FALSE(fs::exists(missing));

  SafetensorsWriter bad;
  EXPECT_HAS(error_of([&] { bad.add("t", DType::F32, {3}, {1, 2, 3}); }), "tensor 't' is F32 [3], which needs 12 bytes, but 3 were given");
  EXPECT_HAS(error_of([&] { bad.add("t", DType::F32, {-1}, {}); }), "tensor 't' has invalid shape [-1]");
  EXPECT_HAS(error_of([&] { bad.add("__metadata__", DType::U8, {1}, {1}); }), "'__metadata__' is reserved");
  EXPECT_HAS(error_of([&] { bad.add_f32("t", Tensor({2}), DType::I32); }), "tensor 't' cannot be stored from fp32 as I32");
  bad.add("t", DType::U8, {1}, {1});
  EXPECT_HAS(error_of([&] { bad.add("t", DType::U8, {1}, {1}); }), "tensor 't' was added twice");
  bad.add("bad\xff", DType::U8, {1}, {1});
  EXPECT_HAS(error_of([&] { bad.write(dir / "bad.safetensors"); }), "bad.safetensors: tensor name 'bad\xff' is not valid UTF-8");
  EXPECT_FALSE(fs::exists(dir / "bad.safetensors"));
  SafetensorsWriter nul;
  nul.add(std::string("a\0b", 3), DType::U8, {1}, {7});
  nul.write(dir / "nul.safetensors");  // NUL is legal inside a JSON string (escaped)
  EXPECT_EQ(SafetensorsFile::open(dir / "nul.safetensors").tensors().at(0).name, std::string("a\0b", 3));
}

TEST(Safetensors, ReadsUnalignedAndUnusualButValidFiles) {
  // An odd-length header puts the data at an odd address: reads must not assume alignment.
  std::vector<uint8_t> data(4 + 8 + 2 + 1);
  const float f = -1.5f;
  const double d = 0.125;
  const uint16_t h = 0x3c00;
  std::memcpy(data.data(), &f, 4);
  std::memcpy(data.data() + 4, &d, 8);
  std::memcpy(data.data() + 12, &h, 2);
  data[14] = 9;
  // Out of offset order, zero-size tensors in between and at the end, a unicode name.
  const std::string header =
      R"({"d":{"dtype":"F64","shape":[1],"data_offsets":[4,12]},"z0":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},)"
      R"("f":{"dtype":"F32","shape":[],"data_offsets":[0,4]},"\u00e9\n":{"dtype":"F16","shape":[1,1],"data_offsets":[12,14]},)"
      R"("u":{"dtype":"U8","shape":[1],"data_offsets":[14,15]},"z1":{"dtype":"I64","shape":[2,0],"data_offsets":[15,15]}})";
  auto img = image(header, data);
  ASSERT_EQ(header.size() % 2, 1u) << "the test needs an odd header length";
  std::vector<uint8_t> shifted(img.size() + 1);
  std::memcpy(shifted.data() + 1, img.data(), img.size());
  for (const uint8_t* base : {static_cast<const uint8_t*>(img.data()), static_cast<const uint8_t*>(shifted.data() + 1)}) {
    const SafetensorsFile s = SafetensorsFile::from_bytes(base, img.size(), "odd.safetensors");
    ASSERT_EQ(s.tensors().size(), 6u);
    EXPECT_EQ(s.tensors()[0].name, "d");  // header order is kept
    EXPECT_EQ(s.read_f32("f").data, std::vector<float>{-1.5f});
    EXPECT_TRUE(s.read_f32("f").shape.empty());
    EXPECT_EQ(s.read_f32("d").data, std::vector<float>{0.125f});
    EXPECT_EQ(s.read_f32("\xc3\xa9\n").data, std::vector<float>{1.0f});
    EXPECT_EQ(s.read_f32("z0").numel(), 0);
    EXPECT_EQ(s.bytes(*s.find("u"))[0], 9);
    EXPECT_EQ(s.bytes(*s.find("z1")).size(), 0u);
  }
  EXPECT_EQ(load_error(image("{}", {})), "");
  EXPECT_EQ(load_error(image(R"({"__metadata__":{}})", {})), "");
  EXPECT_EQ(load_error(image(R"({"__metadata__":{"a":"b"}}    )", {})), "");
  EXPECT_EQ(load_error(image("{ }\t\r\n ", {})), "");
}

TEST(Safetensors, OpenErrorsNameThePath) {
  testing::TempDir dir("st-open");
  EXPECT_HAS(error_of([&] { SafetensorsFile::open(dir / "absent.safetensors"); }), "absent.safetensors: cannot open");
  EXPECT_HAS(error_of([&] { SafetensorsFile::open(dir.str()); }), dir.str() + ": not a regular file");
  std::ofstream(dir / "empty.safetensors").close();
  EXPECT_HAS(error_of([&] { SafetensorsFile::open(dir / "empty.safetensors"); }), "empty.safetensors: file is 0 bytes");
  SafetensorsWriter w;
  w.add("model.norm.weight", DType::F32, {4}, std::vector<uint8_t>(16, 0));
  w.write(dir / "m.safetensors");
  fs::resize_file(dir / "m.safetensors", fs::file_size(dir / "m.safetensors") - 3);
  EXPECT_HAS(error_of([&] { SafetensorsFile::open(dir / "m.safetensors"); }), "m.safetensors: file is");
  EXPECT_HAS(error_of([&] { SafetensorsFile::open(dir / "m.safetensors"); }), "(truncated file?)");
}

TEST(Safetensors, EveryValidationErrorIsOneLineNamingFileAndTensor) {
  const std::vector<uint8_t> d8(8, 0);
  const auto h = [](const std::string& body) { return "{" + body + "}"; };
  const auto one = [&](const std::string& entry) { return image(h(R"("a":)" + entry), d8); };
  const auto len_field = [](uint64_t n, size_t total) {
    std::vector<uint8_t> v(total, ' ');
    for (int i = 0; i < 8; ++i) v[i] = static_cast<uint8_t>(n >> (8 * i));
    return v;
  };
  struct Case {
    std::vector<uint8_t> img;
    std::string needle;
  } cases[] = {
      {{1, 2, 3}, "t.safetensors: file is 3 bytes, too short"},
      {len_field(100'000'001, 16), "header length 100000001 exceeds the limit of 100000000 bytes"},
      {len_field(~0ull, 16), "header length 18446744073709551615 exceeds the limit"},
      {len_field(100, 16), "header length 100 exceeds the 8 bytes after the length field (truncated file?)"},
      {image("", {}), "header does not start with '{'"},
      {image("[1,2]   ", {}), "header does not start with '{'"},
      {image(" {}", {}), "header does not start with '{'"},
      {image("{\"\xc3\x28\":1}", {}), "header is not valid UTF-8 (byte 2 of the header is 0xc3)"},
      {image("{\"\xed\xa0\x80\":1}", {}), "not valid UTF-8"},  // encoded surrogate
      {image(std::string("{}\0\0", 4), {}), "header has a NUL byte at byte 2"},
      {image("{\"a\":", {}), "header is not valid JSON ("},
      {image("{} x", {}), "header is not valid JSON ("},
      {image(R"({"a":1e400})", {}), "header is not valid JSON ("},
      {image(h(R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})"), d8),
       "tensor 'a' appears twice in the header"},
      {image(h(R"("__metadata__":{},"__metadata__":{})"), {}), "header has '__metadata__' twice"},
      {one(R"({"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]})"), "tensor 'a' has the key 'dtype' twice"},
      {image(h(R"("__metadata__":{"k":"1","k":"2"})"), {}), "t.safetensors: __metadata__ has the key 'k' twice"},
      {one(R"({"dtype":"F32","shape":[[2]],"data_offsets":[0,8]})"), "tensor 'a' nests deeper than a safetensors header can"},
      {image(h(R"("a":"x")"), {}), "tensor 'a' is \"x\", expected an object"},
      {one(R"({"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1})"), "tensor 'a' has the unexpected key 'x'"},
      {one(R"({"dtype":"F32","data_offsets":[0,8]})"), "tensor 'a' has no 'shape'"},
      {one(R"({"dtype":5,"shape":[2],"data_offsets":[0,8]})"), "tensor 'a' has dtype 5, expected a string"},
      {one(R"({"dtype":"F33","shape":[2],"data_offsets":[0,8]})"), "tensor 'a' has unknown dtype 'F33'"},
      {one(R"({"dtype":"f32","shape":[2],"data_offsets":[0,8]})"), "tensor 'a' has unknown dtype 'f32'"},
      {one(R"({"dtype":"C64","shape":[1],"data_offsets":[0,8]})"), "tensor 'a' has dtype C64, which ftune does not support"},
      {one(R"({"dtype":"F32","shape":2,"data_offsets":[0,8]})"), "tensor 'a' has shape 2, expected an array"},
      {one(R"({"dtype":"F32","shape":[-2],"data_offsets":[0,8]})"), "tensor 'a' has shape [-2]: -2 is not a non-negative integer"},
      {one(R"({"dtype":"F32","shape":[2.0],"data_offsets":[0,8]})"), "is not a non-negative integer"},
      {one(R"({"dtype":"F32","shape":["2"],"data_offsets":[0,8]})"), "is not a non-negative integer"},
      {one(R"({"dtype":"F32","shape":[9223372036854775808],"data_offsets":[0,8]})"), "is not a non-negative integer"},
      {one(R"({"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]})"), "overflows a 64-bit integer"},
      {one(R"({"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,8]})"), "whose byte size overflows"},
      {one(R"({"dtype":"F32","shape":[2],"data_offsets":[0]})"), "tensor 'a' has data_offsets [0], expected [begin, end]"},
      {one(R"({"dtype":"F32","shape":[2],"data_offsets":[0,8,8]})"), "expected [begin, end]"},
      {one(R"({"dtype":"F32","shape":[2],"data_offsets":[-8,0]})"), "expected [begin, end]"},
      {one(R"({"dtype":"F32","shape":[2],"data_offsets":{"0":8}})"), "expected [begin, end]"},
      {one(R"({"dtype":"F32","shape":[2],"data_offsets":[8,0]})"), "tensor 'a' has data_offsets [8, 0], which end before they begin"},
      {one(R"({"dtype":"F32","shape":[3],"data_offsets":[0,8]})"), "tensor 'a' has data_offsets [0, 8] but F32 [3] needs 12 bytes"},
      {one(R"({"dtype":"F32","shape":[1],"data_offsets":[4,8]})"), "tensor 'a' has data_offsets [4, 8] but the bytes from 0 are covered by no tensor"},
      {image(h(R"("a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[2],"data_offsets":[6,8]})"), d8),
       "tensor 'b' has data_offsets [6, 8] but the bytes from 4 are covered by no tensor (a hole"},
      {image(h(R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]})"), d8),
       "tensor 'b' has data_offsets [4, 8], which overlap tensor 'a' at [0, 8]"},
      {image(h(R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"z":{"dtype":"F32","shape":[0],"data_offsets":[4,4]})"), d8),
       "tensor 'z' has data_offsets [4, 4], which overlap tensor 'a'"},
      {image(h(R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})"), std::vector<uint8_t>(6)),
       "file is 68 bytes but its header describes 70 (8 + 54-byte header + 8 data bytes) (truncated file?)"},
      {image(h(R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})"), std::vector<uint8_t>(9)), "(trailing bytes after the last tensor)"},
      {image("{}", {1}), "(trailing bytes after the last tensor)"},
      {image(h(R"("__metadata__":[])"), {}), "__metadata__ is [], expected an object of strings"},
      {image(h(R"("__metadata__":{"x":1})"), {}), "__metadata__ value of 'x' is 1, expected a string"},
      {image(h(R"("__metadata__":{"x":null})"), {}), "__metadata__ value of 'x' is null"},
      {image(h(R"("a\nb":{"dtype":"F33","shape":[2],"data_offsets":[0,8]})"), d8), "tensor 'a\\nb' has unknown dtype"},
      {image(h(R"("a":{"dtype":"F\u0000\t","shape":[2],"data_offsets":[0,8]})"), d8), "unknown dtype 'F\\x00\\t'"},
      {image(h("\"" + std::string(1000, 'n') + R"(":{"dtype":"F33","shape":[2],"data_offsets":[0,8]})"), d8), "nnn...' has unknown dtype"},
  };
  for (const auto& c : cases) {
    const std::string m = load_error(c.img);
    EXPECT_HAS(m, c.needle);
    EXPECT_EQ(m.rfind("t.safetensors: ", 0), 0u) << m;
    EXPECT_LT(m.size(), 400u) << m;
  }
  // The example from the format notes, verbatim.
  EXPECT_EQ(load_error(image(R"({"model.norm.weight":{"dtype":"F32","shape":[4],"data_offsets":[0,10]}})",
                             std::vector<uint8_t>(10)),
                       "model.safetensors"),
            "model.safetensors: tensor 'model.norm.weight' has data_offsets [0, 10] but F32 [4] needs 16 bytes");
}

// Writes `tensors` (name -> values) as one shard.
void write_shard(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                 DType dtype = DType::F32) {
  SafetensorsWriter w;
  for (const auto& [name, t] : tensors) w.add_f32(name, t, dtype);
  w.write(path, {{"format", "pt"}});
}

Tensor random_tensor(std::vector<int64_t> shape, uint64_t seed) {
  Tensor t(std::move(shape));
  testing::fill_normal(t, seed);
  return t;
}

TEST(Checkpoint, SingleFile) {
  testing::TempDir dir("ckpt-single");
  const Tensor a = random_tensor({3, 4}, 1), b = random_tensor({5}, 2);
  write_shard(dir / "model.safetensors", {{"model.a", a}, {"model.b", b}});
  const CheckpointReader ck(dir.str());
  EXPECT_EQ(ck.dir(), dir.str());
  EXPECT_EQ(ck.shard_files(), std::vector<std::string>{dir / "model.safetensors"});
  EXPECT_EQ(ck.names(), (std::vector<std::string>{"model.a", "model.b"}));
  EXPECT_TRUE(ck.has("model.a"));
  EXPECT_FALSE(ck.has("model.c"));
  EXPECT_EQ(ck.info("model.a").shape, a.shape);
  EXPECT_EQ(ck.read_f32("model.b").data, b.data);
  EXPECT_EQ(ck.file_of("model.a"), dir / "model.safetensors");
}

TEST(Checkpoint, ShardedDirectory) {
  testing::TempDir dir("ckpt-sharded");
  const Tensor a = random_tensor({4}, 3), b = random_tensor({2, 3}, 4), c = random_tensor({7}, 5);
  write_shard(dir / "model-00001-of-00002.safetensors", {{"model.a", a}, {"model.c", c}});
  write_shard(dir / "model-00002-of-00002.safetensors", {{"lm_head.weight", b}}, DType::BF16);
  std::ofstream(dir / "model.safetensors.index.json")
      << R"({"metadata":{"total_size":68},"weight_map":{"lm_head.weight":"model-00002-of-00002.safetensors",)"
      << R"("model.a":"model-00001-of-00002.safetensors","model.c":"model-00001-of-00002.safetensors"}})";
  const CheckpointReader ck(dir.str());
  EXPECT_EQ(ck.shard_files(), (std::vector<std::string>{dir / "model-00001-of-00002.safetensors",
                                                        dir / "model-00002-of-00002.safetensors"}));
  EXPECT_EQ(ck.names(), (std::vector<std::string>{"lm_head.weight", "model.a", "model.c"}));
  EXPECT_EQ(ck.file_of("lm_head.weight"), dir / "model-00002-of-00002.safetensors");
  EXPECT_EQ(ck.file_of("model.c"), dir / "model-00001-of-00002.safetensors");
  EXPECT_EQ(ck.info("lm_head.weight").dtype, DType::BF16);
  EXPECT_EQ(ck.read_f32("model.a").data, a.data);
  EXPECT_EQ(ck.read_f32("model.c").data, c.data);
  const Tensor lb = ck.read_f32("lm_head.weight");
  EXPECT_EQ(lb.shape, b.shape);
  EXPECT_LT(testing::rel_err(lb.data, b.data), 4e-3);
}

TEST(Checkpoint, ErrorsNameTheFile) {
  testing::TempDir dir("ckpt-errors");
  const std::string index = dir / "model.safetensors.index.json";
  const std::string s1 = "model-00001-of-00002.safetensors", s2 = "model-00002-of-00002.safetensors";
  const auto open_error = [&](const std::string& d) { return error_of([&] { CheckpointReader c(d); }); };
  const auto write_index = [&](const std::string& weight_map) {
    std::ofstream(index) << R"({"metadata":{"total_size":32},"weight_map":)" << weight_map << "}";
  };
  EXPECT_HAS(open_error(dir.str()), dir.str() + ": no model.safetensors or model.safetensors.index.json");
  EXPECT_HAS(open_error(dir / "absent"), dir / "absent" + ": not a directory");

  write_shard(dir / s1, {{"model.a", random_tensor({4}, 1)}});
  write_shard(dir / s2, {{"model.b", random_tensor({2, 2}, 2)}});
  write_index(R"({"model.a":")" + s1 + R"(","model.b":")" + s2 + R"("})");
  const CheckpointReader ok(dir.str());
  EXPECT_HAS(error_of([&] { ok.read_f32("model.zzz"); }), dir.str() + ": tensor 'model.zzz' is missing from the checkpoint");
  EXPECT_HAS(error_of([&] { ok.info("model.zzz"); }), "tensor 'model.zzz' is missing");
  EXPECT_HAS(error_of([&] { ok.file_of("model.zzz"); }), "tensor 'model.zzz' is missing");

  std::ofstream(index) << R"({"weight_map":{"model.a":)";
  EXPECT_HAS(open_error(dir.str()), index + ": invalid JSON (");
  std::ofstream(index) << R"({"metadata":{}})";
  EXPECT_HAS(open_error(dir.str()), index + ": expected an object with a 'weight_map' object");
  write_index("{}");
  EXPECT_HAS(open_error(dir.str()), index + ": weight_map is empty");
  write_index(R"({"model.a":1})");
  EXPECT_HAS(open_error(dir.str()), index + ": weight_map entry for tensor 'model.a' is not a file name string");
  write_index(R"({"model.a":"../etc/passwd"})");
  EXPECT_HAS(open_error(dir.str()), index + ": weight_map places tensor 'model.a' in '../etc/passwd', which is not a file name of this directory");
  write_index(R"({"model.a":")" + s1 + R"(","model.a":")" + s2 + R"("})");
  EXPECT_HAS(open_error(dir.str()), index + ": weight_map lists tensor 'model.a' twice");
  write_index(R"({"model.a":")" + s1 + R"(","model.b":"model-00003-of-00003.safetensors"})");
  EXPECT_HAS(open_error(dir.str()), dir / "model-00003-of-00003.safetensors" + ": missing, but model.safetensors.index.json places 1 tensor(s) in it");
  write_index(R"({"model.a":")" + s2 + R"(","model.b":")" + s2 + R"("})");
  EXPECT_HAS(open_error(dir.str()), index + ": weight_map places tensor 'model.a' in " + s2 + ", which does not hold it");
  write_index(R"({"model.a":")" + s1 + R"(","model.q":")" + s2 + R"("})");
  EXPECT_HAS(open_error(dir.str()), index + ": weight_map places tensor 'model.q' in " + s2 + ", which does not hold it (no shard does)");

  write_shard(dir / s2, {{"model.b", random_tensor({2, 2}, 2)}, {"model.a", random_tensor({4}, 1)}});
  write_index(R"({"model.a":")" + s1 + R"(","model.b":")" + s2 + R"("})");
  EXPECT_HAS(open_error(dir.str()), dir.str() + ": tensor 'model.a' is in both " + s1 + " and " + s2);

  std::ofstream(dir / s2, std::ios::binary | std::ios::trunc) << "XXXXXXXXjunk";
  const std::string m = open_error(dir.str());
  EXPECT_HAS(m, dir / s2 + ": ");
  EXPECT_HAS(m, "exceeds the limit");

  // Like transformers, a single model.safetensors wins over an index beside it.
  write_shard(dir / "model.safetensors", {{"model.only", random_tensor({2}, 9)}});
  const CheckpointReader single(dir.str());
  EXPECT_EQ(single.names(), std::vector<std::string>{"model.only"});
}

}  // namespace
}  // namespace ftune

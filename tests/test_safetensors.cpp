// safetensors: dtype conversions, writer conventions, round trips, sharded checkpoints, and
// each validation error (one line, naming the file and tensor).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstring>
#include <fstream>

#include "core/error.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace ftune {
namespace {

std::vector<uint8_t> slurp(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), {}};
}

// A file image from a header JSON text and a data section.
std::vector<uint8_t> image(const std::string& header, const std::vector<uint8_t>& data) {
  std::vector<uint8_t> out(8);
  const uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

std::string error_of(const std::vector<uint8_t>& img) {
  try {
    SafetensorsFile::from_bytes(img.data(), img.size(), "t.safetensors");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Dtype, Bf16AndF16Conversions) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(bf16_to_f32(0x3f80), 1.0f);
  // Ties round to even: 1 + 2^-8 lies halfway between bf16 1.0 and 1.0078125.
  EXPECT_EQ(f32_to_bf16(1.00390625f), 0x3f80);
  EXPECT_EQ(f32_to_bf16(1.01171875f), 0x3f82);  // halfway between 0x3f81 and 0x3f82 -> even
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
  EXPECT_EQ(f32_to_f16(1.0f), 0x3c00);
  EXPECT_EQ(f32_to_f16(-2.0f), 0xc000);
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7bff);
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);  // rounds to inf
  EXPECT_EQ(f32_to_f16(1.0f + 1.0f / 2048), 0x3c00);  // tie -> even
  EXPECT_EQ(f32_to_f16(1.0f + 3.0f / 2048), 0x3c02);  // tie -> even (up)
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25)), 0x0000);  // tie -> even (zero)
  EXPECT_EQ(f32_to_f16(std::ldexp(3.0f, -25)), 0x0002);
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(f16_to_f32(0x03ff), std::ldexp(1023.0f, -24));
  EXPECT_EQ(f16_to_f32(0x7c00), INFINITY);
  EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(NAN))));
  // Every finite half survives f16 -> f32 -> f16.
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if ((h & 0x7c00) == 0x7c00) continue;
    ASSERT_EQ(f32_to_f16(f16_to_f32(static_cast<uint16_t>(h))), h) << std::hex << h;
  }
}

TEST(Safetensors, WriterConventionsAndRoundTrip) {
  testing::TempDir dir("st");
  Tensor a({3, 5}), b({7});
  testing::fill_normal(a, 1);
  testing::fill_normal(b, 2);
  SafetensorsWriter w;
  w.add_f32("z.bf16", a, DType::BF16);
  w.add_f32("a.f16", b, DType::F16);
  w.add_f32("m.f32", a, DType::F32);
  w.add("i.u8", DType::U8, {2, 2}, {1, 2, 3, 4});
  w.add("e.empty", DType::F32, {0, 4}, {});
  w.write(dir / "x.safetensors", {{"format", "pt"}});
  EXPECT_FALSE(std::filesystem::exists(dir / "x.safetensors.tmp"));

  const auto raw = slurp(dir / "x.safetensors");
  uint64_t n;
  std::memcpy(&n, raw.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  const std::string header(raw.begin() + 8, raw.begin() + 8 + static_cast<long>(n));
  EXPECT_EQ(header.rfind("{\"__metadata__\":{\"format\":\"pt\"}", 0), 0u) << header;
  // Descending alignment, then name: F32 (e, m), then F16/BF16 (a, z), then U8.
  const auto pos = [&](const char* k) { return header.find(k); };
  EXPECT_LT(pos("e.empty"), pos("m.f32"));
  EXPECT_LT(pos("m.f32"), pos("a.f16"));
  EXPECT_LT(pos("a.f16"), pos("z.bf16"));
  EXPECT_LT(pos("z.bf16"), pos("i.u8"));

  const SafetensorsFile f = SafetensorsFile::open(dir / "x.safetensors");
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.read_f32("m.f32").data, a.data);
  const Tensor zb = f.read_f32("z.bf16");
  EXPECT_LT(testing::rel_err(zb.data, a.data), 4e-3);  // bf16 keeps 8 bits of mantissa
  const Tensor af = f.read_f32("a.f16");
  EXPECT_LT(testing::rel_err(af.data, b.data), 5e-4);
  EXPECT_EQ(f.find("i.u8")->shape, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(f.bytes(*f.find("i.u8"))[3], 4);
  EXPECT_EQ(f.read_f32("e.empty").numel(), 0);
  try {
    f.read_f32("i.u8");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'i.u8' has dtype U8"), std::string::npos) << e.what();
  }
}

TEST(Safetensors, EveryValidationError) {
  const std::vector<uint8_t> d8(8, 0);
  const auto hdr = [](const std::string& body) { return "{" + body + "}"; };
  struct Case {
    std::vector<uint8_t> img;
    std::string needle;
  } cases[] = {
      {{1, 2, 3}, "too short"},
      {[] { std::vector<uint8_t> v(16, 0); v[7] = 0x10; return v; }(), "exceeds the 100000000-byte limit"},
      {[] { std::vector<uint8_t> v(16, 0); v[0] = 100; return v; }(), "exceeds the file size"},
      {image("[1,2]   ", {}), "does not start with"},
      {image("{\"a\":", {}), "not valid JSON"},
      {image(hdr(R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})"), d8), "key 'a' twice"},
      {image(hdr(R"("a":{"dtype":"F33","shape":[2],"data_offsets":[0,8]})"), d8), "tensor 'a': unknown dtype 'F33'"},
      {image(hdr(R"("a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]})"), d8), "tensor 'a': shape"},
      {image(hdr(R"("a":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]})"), d8), "tensor 'a': shape"},
      {image(hdr(R"("a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]})"), d8), "'a' has data_offsets [0, 8] but F32 [3] needs 12 bytes"},
      {image(hdr(R"("a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]})"), d8), "end before they begin"},
      {image(hdr(R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0]})"), d8), "data_offsets must be two"},
      {image(hdr(R"("a":{"dtype":"F32","shape":[2]})"), d8), "exactly dtype, shape and data_offsets"},
      {image(hdr(R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]})"), d8), "'a' starts at byte 4 but the previous tensor ends at 0 (a hole)"},
      {image(hdr(R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]})"), d8), "an overlap"},
      {image(hdr(R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})"), std::vector<uint8_t>(6)), "truncated file?"},
      {image(hdr(R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})"), std::vector<uint8_t>(9)), "trailing bytes"},
      {image(hdr(R"("__metadata__":{"x":1})"), {}), "__metadata__ value of 'x' is not a string"},
      {image(hdr(R"("a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]})"), d8), "overflows"},
      {image(hdr(R"("a":"x")"), {}), "tensor 'a': entry is not an object"},
      {image(std::string("{\"\xff\":1}"), {}), "not valid JSON"},
  };
  for (const auto& c : cases) {
    const std::string m = error_of(c.img);
    EXPECT_NE(m.find(c.needle), std::string::npos) << "got: " << m << "\nwanted: " << c.needle;
    EXPECT_EQ(m.rfind("t.safetensors: ", 0), 0u) << m;
    EXPECT_EQ(m.find('\n'), std::string::npos) << m;
  }
  // An empty header and zero tensors is a valid (empty) file.
  const auto ok = image("{}      ", {});
  EXPECT_EQ(error_of(ok), "");
}

TEST(Checkpoint, ShardedDirectoryAndItsErrors) {
  testing::TempDir dir("ckpt");
  Tensor a({4}), b({2, 2});
  testing::fill_normal(a, 3);
  testing::fill_normal(b, 4);
  SafetensorsWriter s1, s2;
  s1.add_f32("model.a", a);
  s2.add_f32("model.b", b);
  s1.write(dir / "model-00001-of-00002.safetensors");
  s2.write(dir / "model-00002-of-00002.safetensors");
  const auto write_index = [&](const std::string& map) {
    std::ofstream(dir / "model.safetensors.index.json") << R"({"metadata":{"total_size":32},"weight_map":)" << map << "}";
  };
  write_index(R"({"model.a":"model-00001-of-00002.safetensors","model.b":"model-00002-of-00002.safetensors"})");
  const CheckpointReader ck(dir.str());
  EXPECT_EQ(ck.shard_files().size(), 2u);
  EXPECT_EQ(ck.read_f32("model.b").data, b.data);
  EXPECT_EQ(ck.names(), (std::vector<std::string>{"model.a", "model.b"}));
  auto err = [&]() -> std::string {
    try {
      CheckpointReader c(dir.str());
      c.read_f32("model.zzz");
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_NE(err().find("tensor 'model.zzz' is missing"), std::string::npos);
  write_index(R"({"model.a":"model-00001-of-00002.safetensors","model.b":"model-00003-of-00002.safetensors"})");
  EXPECT_NE(err().find("shard 'model-00003-of-00002.safetensors' named by model.safetensors.index.json is missing"),
            std::string::npos) << err();
  write_index(R"({"model.a":"model-00002-of-00002.safetensors","model.b":"model-00002-of-00002.safetensors"})");
  EXPECT_NE(err().find("places tensor 'model.a' in model-00002-of-00002.safetensors"), std::string::npos) << err();
  write_index(R"({"model.a":"../etc/passwd"})");
  EXPECT_NE(err().find("not a file of this directory"), std::string::npos) << err();
  std::ofstream(dir / "model.safetensors.index.json") << "{";
  EXPECT_NE(err().find("model.safetensors.index.json: invalid JSON"), std::string::npos) << err();
  std::filesystem::remove(dir / "model.safetensors.index.json");
  EXPECT_NE(err().find("no model.safetensors or model.safetensors.index.json"), std::string::npos) << err();
}

}  // namespace
}  // namespace ftune

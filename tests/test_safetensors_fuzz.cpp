// Mutation fuzzing of the safetensors reader: thousands of damaged images, each in a buffer of
// exactly its size (so the sanitizers catch any read past the end). Every input must either
// parse, with every tensor then readable in bounds, or fail with ftune::Error.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <memory>

#include "core/error.h"
#include "core/rng.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace ftune {
namespace {

std::vector<uint8_t> valid_image(int variant) {
  testing::TempDir dir("fuzz");
  SafetensorsWriter w;
  Tensor a({3, 4}), b({5});
  testing::fill_normal(a, 10 + variant);
  testing::fill_normal(b, 20 + variant);
  w.add_f32("model.layers.0.weight", a, variant % 2 ? DType::BF16 : DType::F32);
  w.add_f32("model.norm.weight", b, DType::F16);
  w.add("ids", DType::I64, {2}, std::vector<uint8_t>(16, static_cast<uint8_t>(variant)));
  if (variant == 2) w.add("empty", DType::F32, {0}, {});
  w.write(dir / "v.safetensors", variant == 1 ? std::map<std::string, std::string>{} : std::map<std::string, std::string>{{"format", "pt"}});
  std::ifstream f(dir / "v.safetensors", std::ios::binary);
  return {std::istreambuf_iterator<char>(f), {}};
}

// Parses `img` from an exactly-sized heap copy; returns false on a clean ftune::Error.
bool exercise(const std::vector<uint8_t>& img) {
  auto buf = std::make_unique<uint8_t[]>(img.size() + (img.empty() ? 1 : 0));
  std::memcpy(buf.get(), img.data(), img.size());
  try {
    const SafetensorsFile f = SafetensorsFile::from_bytes(buf.get(), img.size(), "fuzz.safetensors");
    volatile uint32_t sink = 0;
    for (const auto& t : f.tensors()) {
      for (uint8_t byte : f.bytes(t)) sink = sink + byte;
      if (t.dtype == DType::F32 || t.dtype == DType::F16 || t.dtype == DType::BF16 || t.dtype == DType::F64)
        sink = sink + static_cast<uint32_t>(f.read_f32(t.name).numel());
    }
    return true;
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
    return false;
  }
}

std::string header_of(const std::vector<uint8_t>& img) {
  uint64_t n;
  std::memcpy(&n, img.data(), 8);
  return std::string(img.begin() + 8, img.begin() + 8 + static_cast<long>(n));
}

std::vector<uint8_t> with_header(const std::vector<uint8_t>& img, const std::string& h) {
  uint64_t n;
  std::memcpy(&n, img.data(), 8);
  std::vector<uint8_t> out(8);
  const uint64_t m = h.size();
  std::memcpy(out.data(), &m, 8);
  out.insert(out.end(), h.begin(), h.end());
  out.insert(out.end(), img.begin() + 8 + static_cast<long>(n), img.end());
  return out;
}

TEST(SafetensorsFuzz, ValidImagesParse) {
  for (int v = 0; v < 3; ++v) EXPECT_TRUE(exercise(valid_image(v)));
}

TEST(SafetensorsFuzz, EveryTruncation) {
  const auto img = valid_image(0);
  for (size_t len = 0; len < img.size(); ++len) {
    std::vector<uint8_t> cut(img.begin(), img.begin() + static_cast<long>(len));
    EXPECT_FALSE(exercise(cut)) << "truncated to " << len << " of " << img.size();
  }
}

TEST(SafetensorsFuzz, RandomByteFlips) {
  int parsed = 0, rejected = 0;
  for (int v = 0; v < 3; ++v) {
    const auto img = valid_image(v);
    Rng rng(1000 + v);
    for (int i = 0; i < 4000; ++i) {
      auto m = img;
      const int flips = 1 + static_cast<int>(rng.below(4));
      for (int k = 0; k < flips; ++k) {
        // Mostly inside the header, where the structure is.
        const size_t at = rng.below(4) ? rng.below(std::min<size_t>(m.size(), 8 + header_of(img).size())) : rng.below(m.size());
        m[at] = static_cast<uint8_t>(rng.below(4) == 0 ? m[at] ^ (1u << rng.below(8)) : rng.below(256));
      }
      (exercise(m) ? parsed : rejected) += 1;
    }
  }
  EXPECT_GT(rejected, 1000);
  std::printf("[ measured ] byte flips: %d parsed, %d rejected\n", parsed, rejected);
}

TEST(SafetensorsFuzz, HeaderLengthField) {
  const auto img = valid_image(0);
  for (uint64_t n : {0ull, 1ull, 7ull, 99'999'999ull, 100'000'001ull, ~0ull, 1ull << 63, static_cast<unsigned long long>(img.size())}) {
    auto m = img;
    std::memcpy(m.data(), &n, 8);
    EXPECT_FALSE(exercise(m)) << n;
  }
}

TEST(SafetensorsFuzz, StructuredHeaderEdits) {
  const auto img = valid_image(0);
  const std::string h = header_of(img);
  Rng rng(77);
  const std::vector<std::pair<std::string, std::string>> edits = {
      {"\"F32\"", "\"F16\""},       {"\"F16\"", "\"I64\""},     {"\"F16\"", "\"XX\""},    {"[3,4]", "[4,3]"},
      {"[3,4]", "[3,5]"},           {"[3,4]", "[]"},            {"[3,4]", "[-3,4]"},      {"[5]", "[5,0]"},
      {"[5]", "[1e3]"},             {"[5]", "[\"5\"]"},         {"\"format\":\"pt\"", "\"format\":1"},
      {"data_offsets", "data_offset"}, {"\"dtype\"", "\"dtype\":\"F32\",\"dtype\""}, {"{", "["},
      {",", ",,"},                  {":", "::"},                {"model.norm.weight", "ids"},
      {"}", "}}"},                  {"\"shape\"", "\"shape\":[1],\"extra\""},
  };
  int rejected = 0;
  for (const auto& [from, to] : edits) {
    size_t at = h.find(from);
    if (at == std::string::npos) continue;
    std::string e = h;
    e.replace(at, from.size(), to);
    rejected += !exercise(with_header(img, e));
  }
  EXPECT_GE(rejected, 15);
  // Offsets rewritten at random: overlaps, holes, past the end.
  for (int i = 0; i < 3000; ++i) {
    std::string e = h;
    size_t at = e.find("data_offsets\":[");
    for (size_t skip = rng.below(3); skip-- && at != std::string::npos;) at = e.find("data_offsets\":[", at + 1);
    if (at == std::string::npos) continue;
    const size_t open = at + 15, close = e.find(']', open);
    const uint64_t b = rng.below(200), len = rng.below(4) ? rng.below(64) : rng.next_u64();
    e.replace(open, close - open, std::to_string(b) + "," + std::to_string(b + len));
    exercise(with_header(img, e));
  }
}

}  // namespace
}  // namespace ftune

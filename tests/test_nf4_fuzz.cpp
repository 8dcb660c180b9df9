// Mutation fuzzing of the bitsandbytes NF4 checkpoint reader: every mutated image of the fixture
// checkpoint must either read (and then dequantize in bounds) or throw ftune::Error. Images are
// copied into allocations of exactly their size, so the address sanitizer reports any read past
// the end. Mutations: the quant-state JSON (shape, blocksize, types, missing keys, garbage),
// tensor dtypes and shapes in the header, and random bytes in every tensor's data.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/rng.h"
#include "io/safetensors.h"
#include "quant/nf4.h"
#include "quant/nf4_checkpoint.h"

namespace ftune {
namespace {

using Bytes = std::vector<uint8_t>;
using ojson = nlohmann::ordered_json;

struct Entry {
  std::string dtype;
  std::vector<int64_t> shape;
  Bytes data;
};
using Model = std::map<std::string, Entry>;  // name -> tensor

Model parse(const Bytes& img) {
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | img[i];
  const auto hdr = ojson::parse(img.begin() + 8, img.begin() + 8 + static_cast<long>(n));
  Model m;
  for (const auto& [k, v] : hdr.items()) {
    if (k == "__metadata__") continue;
    const auto off = v.at("data_offsets");
    const auto b = img.begin() + 8 + static_cast<long>(n) + off[0].get<long>();
    m[k] = {v.at("dtype"), v.at("shape").get<std::vector<int64_t>>(), Bytes(b, b + (off[1].get<long>() - off[0].get<long>()))};
  }
  return m;
}

// Header offsets follow the data as laid out; dtype/shape are written as given (they may lie).
Bytes assemble(const Model& m) {
  ojson hdr = ojson::object();
  Bytes data;
  for (const auto& [k, e] : m) {
    hdr[k] = {{"dtype", e.dtype}, {"shape", e.shape}, {"data_offsets", {data.size(), data.size() + e.data.size()}}};
    data.insert(data.end(), e.data.begin(), e.data.end());
  }
  std::string h = hdr.dump();
  h.append((8 - h.size() % 8) % 8, ' ');
  Bytes out(8);
  for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(static_cast<uint64_t>(h.size()) >> (8 * i));
  out.insert(out.end(), h.begin(), h.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

struct Stats {
  int read = 0, rejected = 0, unreadable = 0;
};

// Opens the image from an exact-size copy and reads both weights; every failure must be an Error.
void check(const Bytes& img, Stats& st) {
  const auto buf = std::make_unique<uint8_t[]>(img.size());
  std::memcpy(buf.get(), img.data(), img.size());
  std::unique_ptr<SafetensorsFile> f;
  try {
    f = std::make_unique<SafetensorsFile>(SafetensorsFile::from_bytes(buf.get(), img.size(), "fuzz.safetensors"));
  } catch (const Error&) {
    ++st.unreadable;
    return;
  }
  for (const char* prefix : {"model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight"}) {
    try {
      const Nf4Tensor t = read_bnb_nf4(*f, prefix);
      std::vector<float> out(static_cast<size_t>(t.numel));
      nf4_dequantize(t, out.data());
      ++st.read;
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
      ++st.rejected;
    }
  }
}

Bytes fixture() {
  std::ifstream in(std::string(FTUNE_SOURCE_DIR) + "/tests/fixtures/nf4/model.safetensors", std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

TEST(Nf4Fuzz, MutatedQuantStatesNeverCrash) {
  const Bytes base = fixture();
  ASSERT_FALSE(base.empty()) << "tests/fixtures/nf4/model.safetensors is missing";
  const Model good = parse(base);
  Stats st;
  check(base, st);
  ASSERT_EQ(st.read, 2) << "the fixture itself must read";
  Rng r(99);
  const std::vector<ojson> odd = {ojson(-1), ojson(0), ojson(3), ojson(int64_t{1} << 40), ojson(int64_t{1} << 62),
                                  ojson(1.5), ojson("64"), ojson(nullptr), ojson::array(), ojson::object()};
  std::vector<std::string> states;
  for (const auto& [k, e] : good)
    if (k.find(".quant_state.") != std::string::npos) states.push_back(k);
  ASSERT_EQ(states.size(), 2u);
  for (int it = 0; it < 1500; ++it) {
    Model m = good;
    const std::string& key = states[r.below(states.size())];
    Entry& e = m[key];
    ojson js = ojson::parse(e.data.begin(), e.data.end());
    switch (r.below(6)) {
      case 0: {  // a field replaced by an odd value
        auto items = js.items();
        const size_t n = static_cast<size_t>(std::distance(items.begin(), items.end()));
        auto f = items.begin();
        std::advance(f, static_cast<long>(r.below(n)));
        js[f.key()] = odd[r.below(odd.size())];
        break;
      }
      case 1: {  // a shape dimension changed
        auto& shape = js["shape"];
        if (shape.is_array() && !shape.empty()) shape[r.below(shape.size())] = odd[r.below(odd.size())];
        break;
      }
      case 2: {  // a field removed
        auto items = js.items();
        const size_t n = static_cast<size_t>(std::distance(items.begin(), items.end()));
        auto f = items.begin();
        std::advance(f, static_cast<long>(r.below(n)));
        js.erase(f.key());
        break;
      }
      case 3:  // another quant type or dtype string
        js[r.below(2) ? "quant_type" : "dtype"] = r.below(2) ? "fp4" : "int3";
        break;
      default:
        break;
    }
    std::string text = js.dump();
    if (r.below(8) == 0) text.resize(r.below(text.size() + 1));  // truncated JSON
    e.data.assign(text.begin(), text.end());
    e.shape = {static_cast<int64_t>(e.data.size())};
    // Sometimes also a lying header entry or random bytes in another tensor.
    auto other = m.begin();
    std::advance(other, static_cast<long>(r.below(m.size())));
    switch (r.below(5)) {
      case 0:
        other->second.dtype = r.below(2) ? "F32" : "U8";
        break;
      case 1:
        if (!other->second.shape.empty()) other->second.shape[0] = static_cast<int64_t>(r.below(64));
        break;
      case 2:
        for (int k = 0; k < 4 && !other->second.data.empty(); ++k)
          other->second.data[r.below(other->second.data.size())] = static_cast<uint8_t>(r.below(256));
        break;
      case 3:
        other->second.data.resize(other->second.data.size() / 2);
        other->second.shape = {static_cast<int64_t>(other->second.data.size())};
        break;
      default:
        break;
    }
    check(assemble(m), st);
  }
  // Most images must get as far as the NF4 reader (the fuzzing is of it, not of safetensors), and a
  // good share of the mutated weights must be caught by it. Each image has two weights and only
  // one mutated quant state, so about half the reads succeed.
  EXPECT_GT(st.read + st.rejected, 1500);
  EXPECT_GT(st.rejected, 500);
  std::printf("[ measured ] %d reads, %d rejected by the NF4 reader, %d unreadable as safetensors\n", st.read,
              st.rejected, st.unreadable);
}

}  // namespace
}  // namespace ftune

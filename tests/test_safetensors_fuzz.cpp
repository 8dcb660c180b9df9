// Mutation fuzzing of the safetensors reader: every mutated image of a valid file must either
// load (and then every tensor reads in bounds) or throw ftune::Error. Each image is copied into
// an allocation of exactly its size, so the address sanitizer reports any read past the end.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <typeinfo>

#include "core/error.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace ftune {
namespace {

using ojson = nlohmann::ordered_json;
using Bytes = std::vector<uint8_t>;
constexpr const char* kLabel = "fuzz.safetensors";

struct Stats {
  int loaded = 0, rejected = 0;
};

Bytes slurp(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), {}};
}

uint64_t header_len(const Bytes& img) {
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | img[i];
  return n;
}

void set_header_len(Bytes& img, uint64_t n) {
  for (int i = 0; i < 8; ++i) img[i] = static_cast<uint8_t>(n >> (8 * i));
}

Bytes assemble(const std::string& header, const Bytes& data) {
  Bytes out(8 + header.size() + data.size());
  set_header_len(out, header.size());
  std::copy(header.begin(), header.end(), out.begin() + 8);
  std::copy(data.begin(), data.end(), out.begin() + 8 + static_cast<long>(header.size()));
  return out;
}

// Loads `img` from an exact-size copy; a load must either succeed with every tensor readable
// in bounds or throw ftune::Error with a one-line message. Returns true when it loaded.
bool check(const Bytes& img, Stats& st, const std::string& what) {
  const size_t n = img.size();
  const auto buf = std::make_unique<uint8_t[]>(n);
  if (n) std::memcpy(buf.get(), img.data(), n);
  try {
    const SafetensorsFile f = SafetensorsFile::from_bytes(buf.get(), n, kLabel);
    uint64_t covered = 0, sink = 0;
    for (const TensorInfo& t : f.tensors()) {
      const auto b = f.bytes(t);
      const uint64_t numel = static_cast<uint64_t>(Tensor::count(t.shape));
      EXPECT_EQ(b.size(), numel * dtype_size(t.dtype)) << what;
      if (!b.empty()) {
        EXPECT_GE(b.data(), buf.get()) << what;
        EXPECT_LE(b.data() + b.size(), buf.get() + n) << what;
      }
      for (uint8_t c : b) sink += c;  // touches every byte: out-of-bounds would trip ASan
      covered += b.size();
      EXPECT_EQ(f.find(t.name), &t) << what;
      if (t.dtype == DType::F32 || t.dtype == DType::F16 || t.dtype == DType::BF16 || t.dtype == DType::F64) {
        const Tensor x = f.read_f32(t.name);
        EXPECT_EQ(x.shape, t.shape) << what;
        EXPECT_EQ(static_cast<uint64_t>(x.numel()), numel) << what;
      }
    }
    EXPECT_EQ(8 + header_len(img) + covered, n) << what;  // the tensors tile the data section
    volatile uint64_t keep = sink;  // the byte loop must not be optimized away
    (void)keep;
    ++st.loaded;
    return true;
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_EQ(m.rfind(std::string(kLabel) + ": ", 0), 0u) << what << ": " << m;
    EXPECT_EQ(m.find('\n'), std::string::npos) << what << ": " << m;
    ++st.rejected;
  } catch (const std::exception& e) {
    ADD_FAILURE() << what << ": threw " << typeid(e).name() << " instead of ftune::Error: " << e.what();
  } catch (...) {
    ADD_FAILURE() << what << ": threw a non-std exception";
  }
  return false;
}

// Valid images: written by SafetensorsWriter, plus hand-made ones the writer never produces
// (odd header length, out-of-order offsets, zero-size tensors in between, escapes in names).
std::vector<Bytes> base_images() {
  testing::TempDir dir("st-fuzz");
  std::vector<Bytes> out;
  Rng r(99);
  const auto fill = [&](size_t n) {
    Bytes b(n);
    for (auto& x : b) x = static_cast<uint8_t>(r.next_u64());
    return b;
  };
  {
    SafetensorsWriter w;
    const std::vector<std::pair<DType, std::vector<int64_t>>> specs = {
        {DType::F32, {2, 3}}, {DType::BF16, {4}},   {DType::F16, {3, 1}},   {DType::F64, {2}},
        {DType::I64, {1}},    {DType::U8, {5}},     {DType::BOOL, {2}},     {DType::I32, {}},
        {DType::F32, {0, 3}}, {DType::I16, {2}},    {DType::U16, {1}},      {DType::U32, {1}},
        {DType::U64, {1}},    {DType::I8, {3}},     {DType::F8_E4M3, {2}},  {DType::F8_E5M2, {2}}};
    int i = 0;
    for (const auto& [t, shape] : specs)
      w.add(fmt::format("t{}.{}", i++, dtype_name(t)), t, shape, fill(static_cast<size_t>(Tensor::count(shape)) * dtype_size(t)));
    w.write(dir / "mixed.safetensors", {{"format", "pt"}, {"note", "x"}});
    out.push_back(slurp(dir / "mixed.safetensors"));
  }
  {
    SafetensorsWriter w;
    w.add("w", DType::F32, {2}, fill(8));
    w.write(dir / "small.safetensors");
    out.push_back(slurp(dir / "small.safetensors"));  // index 1: truncated at every length
  }
  {
    SafetensorsWriter w;
    w.write(dir / "meta.safetensors", {{"format", "pt"}});
    out.push_back(slurp(dir / "meta.safetensors"));
    w.write(dir / "empty.safetensors");
    out.push_back(slurp(dir / "empty.safetensors"));
  }
  {
    SafetensorsWriter w;
    for (int i = 0; i < 40; ++i) {
      const std::vector<int64_t> shape = {1 + static_cast<int64_t>(r.below(4)), 1 + static_cast<int64_t>(r.below(5))};
      w.add(fmt::format("model.layers.{}.w", i), i % 2 ? DType::BF16 : DType::F16, shape,
            fill(static_cast<size_t>(Tensor::count(shape)) * 2));
    }
    w.write(dir / "many.safetensors", {{"format", "pt"}});
    out.push_back(slurp(dir / "many.safetensors"));
  }
  out.push_back(assemble(
      R"({"d":{"dtype":"F64","shape":[1],"data_offsets":[4,12]},"z0":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},)"
      R"("f":{"dtype":"F32","shape":[],"data_offsets":[0,4]},"\u00e9\n\"":{"dtype":"F16","shape":[1,1],"data_offsets":[12,14]},)"
      R"("__metadata__":{"k\t":"v\u0001"},"u":{"dtype":"U8","shape":[1],"data_offsets":[14,15]},"z1":{"dtype":"I64","shape":[2,0],"data_offsets":[15,15]}})",
      fill(15)));
  for (const auto& img : out) {
    Stats st;
    EXPECT_TRUE(check(img, st, "base image"));
  }
  return out;
}

// Structured edits of the header JSON; the result is re-serialized with random padding.
class Mutator {
 public:
  explicit Mutator(uint64_t seed) : r_(seed) {}

  uint64_t below(uint64_t n) { return r_.below(n); }

  Bytes flip_bytes(const Bytes& img, size_t lo, size_t hi) {
    Bytes m = img;
    if (hi <= lo) return m;
    const int k = 1 + static_cast<int>(below(4));
    for (int i = 0; i < k; ++i) {
      const size_t pos = lo + below(hi - lo);
      if (below(2)) m[pos] ^= static_cast<uint8_t>(1u << below(8));
      else m[pos] = interesting_byte();
    }
    return m;
  }

  Bytes splice_header(const Bytes& img) {
    Bytes m = img;
    const uint64_t n = header_len(img);
    const size_t pos = 8 + below(n + 1);
    if (below(2) && n > 0) {
      const size_t len = std::min<size_t>(1 + below(8), 8 + n - pos);
      m.erase(m.begin() + static_cast<long>(pos), m.begin() + static_cast<long>(pos + len));
      if (below(2)) set_header_len(m, n - len);
    } else {
      const size_t len = 1 + below(8);
      for (size_t i = 0; i < len; ++i) m.insert(m.begin() + static_cast<long>(pos), interesting_byte());
      if (below(2)) set_header_len(m, n + len);
    }
    return m;
  }

  Bytes set_length(const Bytes& img) {
    Bytes m = img;
    const uint64_t n = header_len(img), size = img.size();
    const uint64_t choices[] = {0, 1, 2, 7, 8, n - 1, n + 1, n + 8, size - 8, size - 7, size, size + 1, 1ull << 32,
                                100'000'000, 100'000'001, 1ull << 63, ~0ull, r_.next_u64(), below(size + 16)};
    set_header_len(m, choices[below(std::size(choices))]);
    return m;
  }

  Bytes resize(const Bytes& img) {
    Bytes m = img;
    if (below(2)) m.resize(below(img.size() + 1));
    else for (uint64_t i = 0, k = 1 + below(16); i < k; ++i) m.push_back(interesting_byte());
    return m;
  }

  Bytes edit_json(const Bytes& img) {
    const uint64_t n = header_len(img);
    ojson j = ojson::parse(img.begin() + 8, img.begin() + 8 + static_cast<long>(n));
    Bytes data(img.begin() + 8 + static_cast<long>(n), img.end());
    std::vector<std::string> names;
    for (auto& [k, v] : j.items())
      if (k != "__metadata__") names.push_back(k);
    std::string inject_at, inject;  // raw text spliced into one entry (duplicate keys, deep nesting)
    const auto pick = [&]() -> ojson& { return j[names[below(names.size())]]; };
    const int kind = static_cast<int>(below(names.empty() ? 3 : 14));
    switch (kind) {
      case 0: {  // metadata: non-string values, wrong type, duplicate keys
        ojson& m = j["__metadata__"];
        const int how = static_cast<int>(below(4));
        if (how == 0) m = odd_value();
        else if (how == 1 && m.is_object()) m["k" + std::to_string(below(3))] = odd_value();
        else if (how == 2) j.erase("__metadata__");
        else { inject_at = "__metadata__"; inject = R"("dup":"a","dup":"b",)"; if (!m.is_object()) m = ojson::object(); }
        break;
      }
      case 1:  // add a tensor somewhere
        j[names.empty() ? "new" : names[below(names.size())] + "x"] = random_entry(data.size());
        break;
      case 2:  // trailing junk inside the header
        return with_junk(j.dump(), data);
      case 3: {  // swap or shift offsets
        ojson& e = pick();
        if (!e.contains("data_offsets") || !e["data_offsets"].is_array() || e["data_offsets"].size() != 2) break;
        ojson& off = e["data_offsets"];
        if (below(2)) std::swap(off[0], off[1]);
        else off[below(2)] = off[below(2)].get<int64_t>() + static_cast<int64_t>(below(33)) - 16;
        break;
      }
      case 4: {  // exchange offsets of two tensors
        ojson& a = pick();
        ojson& b = pick();
        if (a.contains("data_offsets") && b.contains("data_offsets")) std::swap(a["data_offsets"], b["data_offsets"]);
        break;
      }
      case 5:  // absurd offsets
        pick()["data_offsets"][below(2)] = huge_or_odd();
        break;
      case 6: {  // shape: change, add or drop a dimension, or the wrong type
        ojson& s = pick()["shape"];
        const int how = static_cast<int>(below(4));
        if (how == 0 || !s.is_array() || s.empty()) s = below(2) ? odd_value() : ojson::array({huge_or_odd()});
        else if (how == 1) s[below(s.size())] = s[0].is_number() ? ojson(s[0].get<int64_t>() + (below(2) ? 1 : -1)) : huge_or_odd();
        else if (how == 2) s.push_back(below(3));
        else s.erase(s.size() - 1);
        break;
      }
      case 7: {  // dtype: another known one, an unknown one, or not a string
        static constexpr const char* kNames[] = {"F32", "F16", "BF16", "F64", "I64", "U8", "BOOL", "I32",
                                                 "F8_E4M3", "C64", "F4", "f32", "", "F32 "};
        pick()["dtype"] = below(8) ? ojson(kNames[below(std::size(kNames))]) : odd_value();
        break;
      }
      case 8:  // duplicate tensor name
        inject_at = "";
        inject = ojson(names[below(names.size())]).dump() + ":" + pick().dump() + ",";
        break;
      case 9:  // duplicate key inside an entry
        inject_at = names[below(names.size())];
        inject = below(2) ? R"("dtype":"U8",)" : R"("shape":[1],)";
        break;
      case 10: {  // remove or add a field, or make the entry the wrong type
        ojson& e = pick();
        const int how = static_cast<int>(below(3));
        if (how == 0 && e.is_object() && !e.empty()) e.erase(e.begin().key());
        else if (how == 1 && e.is_object()) e["extra"] = 1;
        else e = odd_value();
        break;
      }
      case 11:  // remove a tensor (leaves a hole unless it was empty or last)
        j.erase(names[below(names.size())]);
        break;
      case 12: {  // rename to something unusual
        const std::string old = names[below(names.size())];
        ojson v = j[old];
        j.erase(old);
        static const std::string kOdd[] = {"", "__metadata__", std::string("a\0b", 3), "\n", "\xc3\xa9", std::string(3000, 'x')};
        j[kOdd[below(std::size(kOdd))]] = v;
        break;
      }
      default:  // deep nesting
        inject_at = names[below(names.size())];
        inject = "\"shape\":" + std::string(1 + below(300), '[') + "1" + std::string(below(2) ? 0 : 300, ']') + ",";
        break;
    }
    std::string text = render(j, inject_at, inject);
    text.append(below(9), ' ');
    Bytes m = assemble(text, data);
    if (below(4) == 0) m = flip_bytes(m, 8, 8 + text.size());
    return m;
  }

 private:
  uint8_t interesting_byte() {
    static constexpr uint8_t kBytes[] = {'{', '}', '[', ']', '"', ',', ':', '\\', '0', '9', '-', 'e', '.', ' ',
                                         0, 0x7f, 0x80, 0xbf, 0xc0, 0xc3, 0xed, 0xf4, 0xff, '\n'};
    return below(2) ? kBytes[below(std::size(kBytes))] : static_cast<uint8_t>(r_.next_u64());
  }
  ojson odd_value() {
    switch (below(7)) {
      case 0: return nullptr;
      case 1: return 1.5;
      case 2: return -1;
      case 3: return "str";
      case 4: return ojson::array({1, "a"});
      case 5: return ojson::object({{"a", 1}});
      default: return true;
    }
  }
  ojson huge_or_odd() {
    switch (below(8)) {
      case 0: return uint64_t{1} << 62;
      case 1: return INT64_MAX;
      case 2: return uint64_t{1} << 63;
      case 3: return ~uint64_t{0};
      case 4: return -1;
      case 5: return 1e30;
      case 6: return below(64);
      default: return odd_value();
    }
  }
  ojson random_entry(size_t data_size) {
    static constexpr const char* kNames[] = {"F32", "F16", "BF16", "U8", "I64", "F64"};
    ojson e = ojson::object();
    e["dtype"] = kNames[below(std::size(kNames))];
    e["shape"] = ojson::array({below(3), below(3)});
    const uint64_t b = below(data_size + 2);
    e["data_offsets"] = ojson::array({b, b + below(9)});
    return e;
  }
  Bytes with_junk(const std::string& text, const Bytes& data) {
    static const std::string kJunk[] = {"x", std::string(1, '\0'), "\n\t", "}", ",", "{}", "\xff", "//"};
    return assemble(text + kJunk[below(std::size(kJunk))], data);
  }
  // Compact JSON with `inject` spliced in as raw text: at the start of the top-level object
  // when `at` is empty, else at the start of entry `at`'s object.
  static std::string render(const ojson& j, const std::string& at, const std::string& inject) {
    if (inject.empty()) return j.dump();
    std::string out = "{";
    if (at.empty()) out += inject;
    bool first = true;
    for (const auto& [k, v] : j.items()) {
      if (!first) out += ',';
      first = false;
      out += ojson(k).dump() + ":";
      if (k == at && v.is_object()) {
        std::string body = v.dump();
        body.insert(1, v.empty() ? inject.substr(0, inject.size() - 1) : inject);
        out += body;
      } else {
        out += v.dump();
      }
    }
    if (at.empty() && first && !inject.empty()) out.pop_back();  // no entries: drop the trailing comma
    return out + "}";
  }

  Rng r_;
};

TEST(SafetensorsFuzz, TruncationAtEveryLengthIsRejected) {
  const auto images = base_images();
  for (size_t which : {size_t{1}, size_t{2}, size_t{3}, images.size() - 1}) {
    const Bytes& img = images[which];
    Stats st;
    for (size_t len = 0; len < img.size(); ++len) {
      EXPECT_FALSE(check(Bytes(img.begin(), img.begin() + static_cast<long>(len)), st, fmt::format("truncated to {}", len)))
          << "image " << which << " truncated to " << len << " bytes loaded";
      if (HasFailure()) return;
    }
    Bytes longer = img;
    longer.push_back(0);
    EXPECT_FALSE(check(longer, st, "one trailing byte"));
  }
}

TEST(SafetensorsFuzz, DataBytesNeverMatter) {
  const auto images = base_images();
  Mutator mut(5);
  for (int i = 0; i < 2000 && !HasFailure(); ++i) {
    const Bytes& img = images[mut.below(images.size())];
    const size_t data_start = 8 + header_len(img);
    Stats st;
    EXPECT_TRUE(check(mut.flip_bytes(img, data_start, img.size()), st, "data flip")) << i;
  }
}

TEST(SafetensorsFuzz, MutatedImagesLoadOrThrowError) {
  const auto images = base_images();
  Stats total;
  for (uint64_t seed : {1, 2, 3, 4, 5}) {
    Mutator mut(seed);
    Stats st;
    for (int i = 0; i < 6000 && !HasFailure(); ++i) {
      const Bytes& img = images[mut.below(images.size())];
      const uint64_t n = header_len(img);
      const int kind = static_cast<int>(mut.below(8));
      Bytes m;
      switch (kind) {
        case 0: m = mut.flip_bytes(img, 8, 8 + n); break;
        case 1: m = mut.flip_bytes(img, 0, img.size()); break;
        case 2: m = mut.set_length(img); break;
        case 3: m = mut.resize(img); break;
        case 4: m = mut.splice_header(img); break;
        default: m = mut.edit_json(img); break;
      }
      check(m, st, fmt::format("seed {} iteration {} kind {}", seed, i, kind));
    }
    total.loaded += st.loaded;
    total.rejected += st.rejected;
  }
  // Both outcomes must occur, or the mutations are not exercising the validator.
  EXPECT_GT(total.loaded, 500);
  EXPECT_GT(total.rejected, 20000);
  std::printf("fuzz: %d mutated images loaded, %d rejected\n", total.loaded, total.rejected);
}

}  // namespace
}  // namespace ftune

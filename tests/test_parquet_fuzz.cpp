// Mutation fuzzing of the Parquet reader: byte flips, truncations and footer-length edits of valid
// images must either read or throw ftune::Error. Each image is copied into an allocation of
// exactly its size, so the address sanitizer reports any read past the end.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/rng.h"
#include "data/parquet/compression.h"
#include "data/parquet/reader.h"

namespace ftune {
namespace {

using namespace ftune::parquet;
using Bytes = std::vector<uint8_t>;

// ---- a small image builder (PLAIN values, bit-packed levels, one row group, v1 or v2 pages) ----

struct W {
  Bytes b;
  std::vector<int16_t> last{0};
  void varint(uint64_t v) {
    for (; v >= 0x80; v >>= 7) b.push_back(static_cast<uint8_t>(v | 0x80));
    b.push_back(static_cast<uint8_t>(v));
  }
  void zz(int64_t v) { varint((static_cast<uint64_t>(v) << 1) ^ static_cast<uint64_t>(v >> 63)); }
  void field(int16_t id, uint8_t t) {
    const int d = id - last.back();
    if (d > 0 && d <= 15) b.push_back(static_cast<uint8_t>(d << 4 | t));
    else b.push_back(t), zz(id);
    last.back() = id;
  }
  void i32(int16_t id, int64_t v) { field(id, 5), zz(v); }
  void str(int16_t id, const std::string& s) { field(id, 8), varint(s.size()), b.insert(b.end(), s.begin(), s.end()); }
  void list(int16_t id, uint8_t e, size_t n) { field(id, 9), b.push_back(static_cast<uint8_t>(n << 4 | e)); }
  void begin(int16_t id) { field(id, 12), last.push_back(0); }
  void elem() { last.push_back(0); }
  void end() { b.push_back(0), last.pop_back(); }
};

void le32(Bytes& b, uint32_t v) {
  for (int i = 0; i < 4; ++i) b.push_back(static_cast<uint8_t>(v >> (8 * i)));
}

Bytes levels(const std::vector<int>& v, int bw) {
  W w;
  const size_t g = (v.size() + 7) / 8;
  w.varint(g << 1 | 1);
  Bytes p(g * static_cast<size_t>(bw), 0);
  for (size_t i = 0; i < v.size(); ++i)
    for (int k = 0; k < bw; ++k)
      if (v[i] >> k & 1) p[(i * bw + k) / 8] |= static_cast<uint8_t>(1u << ((i * bw + k) % 8));
  w.b.insert(w.b.end(), p.begin(), p.end());
  return w.b;
}

struct Leaf {
  int type;
  std::string path0, path1;  // path1 empty: top-level leaf
  int max_def, max_rep, bw_def, bw_rep;
  std::vector<int> def, rep;
  Bytes values;
};

// Schema: id optional int32; text optional string; ids list<int64> (three-level).
Bytes build(int codec, bool v2, uint64_t seed) {
  Rng r(seed);
  const int rows = 6 + static_cast<int>(r.next_u64() % 10);
  Leaf id{1, "id", "", 1, 0, 1, 0, {}, {}, {}}, text{6, "text", "", 1, 0, 1, 0, {}, {}, {}},
      ids{2, "ids", "list", 3, 1, 2, 1, {}, {}, {}};
  for (int i = 0; i < rows; ++i) {
    const bool null_id = r.next_u64() % 4 == 0, null_text = r.next_u64() % 5 == 0;
    id.def.push_back(!null_id);
    if (!null_id) le32(id.values, static_cast<uint32_t>(r.next_u64()));
    text.def.push_back(!null_text);
    if (!null_text) {
      const std::string s = "txt" + std::to_string(r.next_u64() % 1000) + "é";
      le32(text.values, static_cast<uint32_t>(s.size())), text.values.insert(text.values.end(), s.begin(), s.end());
    }
    const int n = static_cast<int>(r.next_u64() % 4) - 1;  // -1: null list
    if (n <= 0) {
      ids.def.push_back(n < 0 ? 0 : 1), ids.rep.push_back(0);
    }
    for (int k = 0; k < n; ++k) {
      ids.def.push_back(3), ids.rep.push_back(k > 0);
      const uint64_t v = r.next_u64();
      le32(ids.values, static_cast<uint32_t>(v)), le32(ids.values, static_cast<uint32_t>(v >> 32));
    }
  }
  Bytes file = {'P', 'A', 'R', '1'};
  std::vector<std::array<int64_t, 3>> chunks;
  for (const Leaf* l : {&id, &text, &ids}) {
    const Bytes rp = l->max_rep ? levels(l->rep, l->bw_rep) : Bytes{};
    const Bytes df = levels(l->def, l->bw_def);
    Bytes body;
    if (!v2) {
      if (l->max_rep) le32(body, static_cast<uint32_t>(rp.size())), body.insert(body.end(), rp.begin(), rp.end());
      le32(body, static_cast<uint32_t>(df.size())), body.insert(body.end(), df.begin(), df.end());
    }
    body.insert(body.end(), l->values.begin(), l->values.end());
    const Bytes z = compress(static_cast<Codec>(codec), body.data(), body.size());
    const size_t lv = v2 ? rp.size() + df.size() : 0;
    W h;
    h.i32(1, v2 ? 3 : 0), h.i32(2, static_cast<int64_t>(body.size() + lv)), h.i32(3, static_cast<int64_t>(z.size() + lv));
    h.begin(v2 ? 8 : 5);
    h.i32(1, static_cast<int64_t>(l->def.size()));
    if (v2) h.i32(2, 0), h.i32(3, rows), h.i32(4, 0), h.i32(5, static_cast<int64_t>(df.size())), h.i32(6, static_cast<int64_t>(rp.size()));
    else h.i32(2, 0), h.i32(3, 3), h.i32(4, 3);
    h.end();
    h.b.push_back(0);
    const int64_t off = static_cast<int64_t>(file.size());
    file.insert(file.end(), h.b.begin(), h.b.end());
    if (v2) file.insert(file.end(), rp.begin(), rp.end()), file.insert(file.end(), df.begin(), df.end());
    file.insert(file.end(), z.begin(), z.end());
    chunks.push_back({off, static_cast<int64_t>(file.size()) - off, static_cast<int64_t>(l->def.size())});
  }
  W m;
  m.i32(1, 1);
  m.list(2, 12, 6);
  auto se = [&](int type, int rep, const std::string& name, int children, int conv) {
    m.elem();
    if (type >= 0) m.i32(1, type);
    if (rep >= 0) m.i32(3, rep);
    m.str(4, name);
    if (children) m.i32(5, children);
    if (conv >= 0) m.i32(6, conv);
    m.end();
  };
  se(-1, -1, "schema", 3, -1), se(1, 1, "id", 0, -1), se(6, 1, "text", 0, 0);
  se(-1, 1, "ids", 1, 3), se(-1, 2, "list", 1, -1), se(2, 1, "element", 0, -1);
  m.field(3, 6), m.zz(rows);
  m.list(4, 12, 1);
  m.elem();
  m.list(1, 12, 3);
  const Leaf* ls[3] = {&id, &text, &ids};
  for (int c = 0; c < 3; ++c) {
    m.elem();
    m.field(2, 6), m.zz(chunks[c][0]);
    m.begin(3);
    m.i32(1, ls[c]->type);
    m.list(2, 5, 1), m.zz(0);
    const bool nested = !ls[c]->path1.empty();
    m.list(3, 8, nested ? 3 : 1);
    for (const std::string& p : nested ? std::vector<std::string>{"ids", "list", "element"} : std::vector<std::string>{ls[c]->path0})
      m.varint(p.size()), m.b.insert(m.b.end(), p.begin(), p.end());
    m.i32(4, codec);
    m.field(5, 6), m.zz(chunks[c][2]);
    m.field(6, 6), m.zz(chunks[c][1]);
    m.field(7, 6), m.zz(chunks[c][1]);
    m.field(9, 6), m.zz(chunks[c][0]);
    m.end();
    m.end();
  }
  m.field(3, 6), m.zz(rows);
  m.end();
  m.b.push_back(0);
  file.insert(file.end(), m.b.begin(), m.b.end());
  le32(file, static_cast<uint32_t>(m.b.size()));
  file.insert(file.end(), {'P', 'A', 'R', '1'});
  return file;
}

struct Stats {
  int read = 0, rejected = 0;
};

// Returns true when the image read; a failure must be a one-line ftune::Error.
bool check(const Bytes& img, Stats& st, int64_t* rows = nullptr) {
  const size_t n = img.size();
  const auto buf = std::make_unique<uint8_t[]>(n ? n : 1);
  if (n) std::memcpy(buf.get(), img.data(), n);
  try {
    const ParquetReader r = ParquetReader::from_bytes(buf.get(), n, "fuzz.parquet");
    int64_t count = 0;
    size_t chars = 0;
    r.for_each_row({}, [&](int64_t, const nlohmann::json& o) {
      ++count;
      chars += o.size();
    });
    if (rows) *rows = count;
    ++st.read;
    return true;
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    EXPECT_NE(msg.find("fuzz.parquet"), std::string::npos) << msg;
    ++st.rejected;
    return false;
  }
}

std::vector<Bytes> seeds() {
  std::vector<Bytes> out;
  uint64_t s = 11;
  for (int codec : {0, 1, 2, 6})
    for (bool v2 : {false, true}) out.push_back(build(codec, v2, s++));
  // Fixture files, when they exist, widen the corpus (dictionary pages, many row groups).
  const std::filesystem::path dir = std::filesystem::path(FTUNE_SOURCE_DIR) / "tests/fixtures/parquet";
  if (std::filesystem::is_directory(dir))
    for (const auto& e : std::filesystem::directory_iterator(dir))
      if (e.path().extension() == ".parquet" && e.file_size() < 64 * 1024) {
        std::ifstream f(e.path(), std::ios::binary);
        out.emplace_back(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
      }
  return out;
}

TEST(ParquetFuzz, SeedsRead) {
  Stats st;
  for (const Bytes& img : seeds()) {
    int64_t rows = 0;
    EXPECT_TRUE(check(img, st, &rows));
    EXPECT_GT(rows, 0);
  }
}

TEST(ParquetFuzz, ByteFlips) {
  Stats st;
  Rng r(1234);
  const std::vector<Bytes> corpus = seeds();
  for (int it = 0; it < 15000; ++it) {
    Bytes img = corpus[it % corpus.size()];
    const int flips = 1 + static_cast<int>(r.next_u64() % 3);
    for (int k = 0; k < flips; ++k) {
      const size_t pos = r.next_u64() % img.size();
      switch (r.next_u64() % 3) {
        case 0: img[pos] ^= static_cast<uint8_t>(1u << (r.next_u64() % 8)); break;
        case 1: img[pos] = static_cast<uint8_t>(r.next_u64()); break;
        default: img[pos] = static_cast<uint8_t>(img[pos] + 1); break;
      }
    }
    check(img, st);
  }
  EXPECT_GT(st.rejected, 0);
  EXPECT_GT(st.read, 0);  // some flips land in values and still read
}

TEST(ParquetFuzz, TruncationsAndFooterLengths) {
  Stats st;
  Rng r(99);
  for (const Bytes& seed : seeds()) {
    for (size_t len = 0; len < seed.size(); len += 1 + seed.size() / 300) check(Bytes(seed.begin(), seed.begin() + static_cast<long>(len)), st);
    for (int it = 0; it < 300; ++it) {
      Bytes img = seed;
      uint32_t flen = 0;
      for (int i = 0; i < 4; ++i) flen |= static_cast<uint32_t>(img[img.size() - 8 + i]) << (8 * i);
      const uint32_t edits[] = {0, flen - 1, flen + 1, static_cast<uint32_t>(img.size()), static_cast<uint32_t>(img.size() - 12),
                                UINT32_MAX, static_cast<uint32_t>(r.next_u64() % img.size())};
      const uint32_t v = edits[it % 7];
      for (int i = 0; i < 4; ++i) img[img.size() - 8 + i] = static_cast<uint8_t>(v >> (8 * i));
      check(img, st);
    }
    // Chop bytes from the middle of the data section, keeping the footer intact.
    for (int it = 0; it < 100; ++it) {
      Bytes img = seed;
      const size_t at = 4 + r.next_u64() % (img.size() / 2);
      img.erase(img.begin() + static_cast<long>(at), img.begin() + static_cast<long>(at + 1 + r.next_u64() % 8));
      check(img, st);
    }
  }
  EXPECT_GT(st.rejected, 0);
}

}  // namespace
}  // namespace ftune

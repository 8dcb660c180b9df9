// Parquet reader: decoders against hand-computed bytes, byte-exact files built here with a tiny
// Thrift compact encoder, every error path, and the pyarrow-written fixtures when present.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "data/parquet/compression.h"
#include "data/parquet/decode.h"
#include "data/parquet/reader.h"
#include "data/parquet/thrift_compact.h"
#include "data/parquet_dataset.h"
#include "test_util.h"

namespace ftune {
namespace {

using namespace ftune::parquet;
using Bytes = std::vector<uint8_t>;
using json = nlohmann::json;

// ---- a minimal Parquet writer for tests: PLAIN values, RLE levels, one row group ----

struct ThriftWriter {
  Bytes b;
  std::vector<int16_t> last{0};
  void varint(uint64_t v) {
    while (v >= 0x80) {
      b.push_back(static_cast<uint8_t>(v | 0x80));
      v >>= 7;
    }
    b.push_back(static_cast<uint8_t>(v));
  }
  void zz(int64_t v) { varint((static_cast<uint64_t>(v) << 1) ^ static_cast<uint64_t>(v >> 63)); }
  void field(int16_t id, uint8_t type) {
    const int d = id - last.back();
    if (d > 0 && d <= 15) {
      b.push_back(static_cast<uint8_t>(d << 4 | type));
    } else {
      b.push_back(type);
      zz(id);
    }
    last.back() = id;
  }
  void i32(int16_t id, int64_t v) { field(id, 5), zz(v); }
  void i64(int16_t id, int64_t v) { field(id, 6), zz(v); }
  void str(int16_t id, const std::string& s) {
    field(id, 8);
    varint(s.size());
    b.insert(b.end(), s.begin(), s.end());
  }
  void list(int16_t id, uint8_t elem, size_t n) {
    field(id, 9);
    if (n < 15) b.push_back(static_cast<uint8_t>(n << 4 | elem));
    else b.push_back(static_cast<uint8_t>(0xf0 | elem)), varint(n);
  }
  void begin(int16_t id) { field(id, 12), last.push_back(0); }
  void begin_elem() { last.push_back(0); }  // a struct inside a list has no field header
  void end() { b.push_back(0), last.pop_back(); }
};

// One bit-packed run holding all values (the format lets a writer always choose this form).
Bytes encode_levels(const std::vector<int>& v, int bw) {
  ThriftWriter w;
  const size_t groups = (v.size() + 7) / 8;
  w.varint(groups << 1 | 1);
  Bytes packed(groups * static_cast<size_t>(bw), 0);
  for (size_t i = 0; i < v.size(); ++i)
    for (int k = 0; k < bw; ++k)
      if (v[i] >> k & 1) {
        const size_t bit = i * static_cast<size_t>(bw) + static_cast<size_t>(k);
        packed[bit / 8] |= static_cast<uint8_t>(1u << (bit % 8));
      }
  w.b.insert(w.b.end(), packed.begin(), packed.end());
  return w.b;
}

void put_le32(Bytes& b, uint32_t v) {
  for (int i = 0; i < 4; ++i) b.push_back(static_cast<uint8_t>(v >> (8 * i)));
}

Bytes plain_strings(const std::vector<std::string>& v) {
  Bytes b;
  for (const auto& s : v) put_le32(b, static_cast<uint32_t>(s.size())), b.insert(b.end(), s.begin(), s.end());
  return b;
}

Bytes plain_i32(const std::vector<int32_t>& v) {
  Bytes b;
  for (int32_t x : v) put_le32(b, static_cast<uint32_t>(x));
  return b;
}

Bytes plain_i64(const std::vector<int64_t>& v) {
  Bytes b;
  for (int64_t x : v) put_le32(b, static_cast<uint32_t>(x)), put_le32(b, static_cast<uint32_t>(static_cast<uint64_t>(x) >> 32));
  return b;
}

struct TElem {
  std::string name;
  int type = -1, rep = -1, children = 0, converted = -1;
};

struct TLeaf {
  int type;
  std::vector<std::string> path;
  int max_def, max_rep;
  std::vector<int> def, rep;
  Bytes values;        // PLAIN
  int encoding = 0;    // of the values
};

struct BuildOptions {
  int codec = 0;
  bool v2 = false;
};

Bytes build_file(const std::vector<TElem>& schema, const std::vector<TLeaf>& leaves, int64_t rows,
                 const BuildOptions& o = {}) {
  Bytes file = {'P', 'A', 'R', '1'};
  struct Chunk { int64_t offset, size, raw; };
  std::vector<Chunk> chunks;
  for (const TLeaf& l : leaves) {
    Bytes levels, values = l.values;
    Bytes rep = l.max_rep ? encode_levels(l.rep, bit_width(static_cast<uint64_t>(l.max_rep))) : Bytes{};
    Bytes def = l.max_def ? encode_levels(l.def, bit_width(static_cast<uint64_t>(l.max_def))) : Bytes{};
    Bytes body;
    if (!o.v2) {
      if (l.max_rep) put_le32(body, static_cast<uint32_t>(rep.size())), body.insert(body.end(), rep.begin(), rep.end());
      if (l.max_def) put_le32(body, static_cast<uint32_t>(def.size())), body.insert(body.end(), def.begin(), def.end());
      body.insert(body.end(), values.begin(), values.end());
    }
    const Bytes payload = o.v2 ? values : body;
    const Bytes packed = compress(static_cast<Codec>(o.codec), payload.data(), payload.size());
    ThriftWriter h;
    h.i32(1, o.v2 ? 3 : 0);
    const size_t lv = rep.size() + def.size();
    h.i32(2, static_cast<int64_t>(payload.size() + (o.v2 ? lv : 0)));
    h.i32(3, static_cast<int64_t>(packed.size() + (o.v2 ? lv : 0)));
    if (!o.v2) {
      h.begin(5);
      h.i32(1, static_cast<int64_t>(l.def.size())), h.i32(2, l.encoding), h.i32(3, 3), h.i32(4, 3);
      h.end();
    } else {
      h.begin(8);
      h.i32(1, static_cast<int64_t>(l.def.size())), h.i32(2, 0), h.i32(3, rows), h.i32(4, l.encoding);
      h.i32(5, static_cast<int64_t>(def.size())), h.i32(6, static_cast<int64_t>(rep.size()));
      h.end();
    }
    h.b.push_back(0);
    const int64_t off = static_cast<int64_t>(file.size());
    file.insert(file.end(), h.b.begin(), h.b.end());
    if (o.v2) file.insert(file.end(), rep.begin(), rep.end()), file.insert(file.end(), def.begin(), def.end());
    file.insert(file.end(), packed.begin(), packed.end());
    chunks.push_back({off, static_cast<int64_t>(file.size()) - off, static_cast<int64_t>(h.b.size() + payload.size() + lv)});
  }
  ThriftWriter m;
  m.i32(1, 1);
  m.list(2, 12, schema.size());
  for (const TElem& e : schema) {
    m.begin_elem();
    if (e.type >= 0) m.i32(1, e.type);
    if (e.rep >= 0) m.i32(3, e.rep);
    m.str(4, e.name);
    if (e.children) m.i32(5, e.children);
    if (e.converted >= 0) m.i32(6, e.converted);
    m.end();
  }
  m.i64(3, rows);
  m.list(4, 12, 1);
  m.begin_elem();
  m.list(1, 12, leaves.size());
  for (size_t i = 0; i < leaves.size(); ++i) {
    m.begin_elem();
    m.i64(2, chunks[i].offset);
    m.begin(3);
    m.i32(1, leaves[i].type);
    m.list(2, 5, 2), m.zz(0), m.zz(3);
    m.list(3, 8, leaves[i].path.size());
    for (const auto& p : leaves[i].path) m.varint(p.size()), m.b.insert(m.b.end(), p.begin(), p.end());
    m.i32(4, o.codec);
    m.i64(5, static_cast<int64_t>(leaves[i].def.size()));
    m.i64(6, chunks[i].raw), m.i64(7, chunks[i].size), m.i64(9, chunks[i].offset);
    m.end();
    m.end();
  }
  m.i64(2, 100), m.i64(3, rows);
  m.end();
  m.b.push_back(0);
  file.insert(file.end(), m.b.begin(), m.b.end());
  put_le32(file, static_cast<uint32_t>(m.b.size()));
  file.insert(file.end(), {'P', 'A', 'R', '1'});
  return file;
}

// id: optional int32, text: optional string; rows {1,"héllo"}, {null,"b"}, {3,null}, {-4,""}.
Bytes flat_file(const BuildOptions& o = {}) {
  std::vector<TElem> schema = {{"schema", -1, -1, 2}, {"id", 1, 1}, {"text", 6, 1, 0, 0}};
  std::vector<TLeaf> leaves = {
      {1, {"id"}, 1, 0, {1, 0, 1, 1}, {}, plain_i32({1, 3, -4})},
      {6, {"text"}, 1, 0, {1, 1, 0, 1}, {}, plain_strings({"h\xc3\xa9llo", "b", ""})},
  };
  return build_file(schema, leaves, 4, o);
}

const json kFlatRows = json::parse(R"([{"id":1,"text":"héllo"},{"id":null,"text":"b"},{"id":3,"text":null},{"id":-4,"text":""}])");

// messages: list<struct<role, content>>, input_ids: list<int64> (three-level LIST groups).
Bytes nested_file() {
  std::vector<TElem> schema = {
      {"schema", -1, -1, 2},
      {"messages", -1, 1, 1, 3}, {"list", -1, 2, 1}, {"element", -1, 1, 2},
      {"role", 6, 1, 0, 0}, {"content", 6, 1, 0, 0},
      {"input_ids", -1, 1, 1, 3}, {"list", -1, 2, 1}, {"element", 2, 1},
  };
  std::vector<TLeaf> leaves = {
      {6, {"messages", "list", "element", "role"}, 4, 1, {4, 4, 0, 1, 4}, {0, 1, 0, 0, 0}, plain_strings({"user", "assistant", "system"})},
      {6, {"messages", "list", "element", "content"}, 4, 1, {4, 4, 0, 1, 3}, {0, 1, 0, 0, 0}, plain_strings({"hi", "yo"})},
      {2, {"input_ids", "list", "element"}, 3, 1, {3, 3, 3, 0, 1, 3, 2}, {0, 1, 1, 0, 0, 0, 1}, plain_i64({5, -6, 1LL << 40, 9})},
  };
  return build_file(schema, leaves, 4);
}

const json kNestedRows = json::parse(R"([
  {"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"yo"}],"input_ids":[5,-6,1099511627776]},
  {"messages":null,"input_ids":null},
  {"messages":[],"input_ids":[]},
  {"messages":[{"role":"system","content":null}],"input_ids":[9,null]}])");

json read_all(const Bytes& img, const std::vector<std::string>& cols = {}) {
  const ParquetReader r = ParquetReader::from_bytes(img.data(), img.size(), "t.parquet");
  json rows = json::array();
  r.for_each_row(cols, [&](int64_t i, const json& o) {
    EXPECT_EQ(i, static_cast<int64_t>(rows.size()));
    rows.push_back(o);
  });
  return rows;
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

#define EXPECT_FAILS_WITH(stmt, text) EXPECT_NE(error_of([&] { stmt; }).find(text), std::string::npos) << error_of([&] { stmt; })

// ---- decoders ----

TEST(ParquetThrift, VarintsZigzagAndFieldDeltas) {
  ThriftWriter w;
  w.begin_elem();
  w.i32(1, -3), w.i64(20, 1LL << 40), w.str(21, "ok"), w.field(22, 1);
  w.end();
  ThriftReader r(w.b.data(), w.b.size(), "x");
  r.struct_begin();
  FieldHeader h;
  ASSERT_TRUE(r.next_field(h));
  EXPECT_EQ(h.id, 1);
  EXPECT_EQ(r.field_i32(h), -3);
  ASSERT_TRUE(r.next_field(h));
  EXPECT_EQ(h.id, 20);  // a delta of 19 needs the long form
  EXPECT_EQ(r.field_i64(h), 1LL << 40);
  ASSERT_TRUE(r.next_field(h));
  EXPECT_EQ(r.field_string(h), "ok");
  ASSERT_TRUE(r.next_field(h));
  EXPECT_TRUE(r.field_bool(h));
  EXPECT_FALSE(r.next_field(h));
  r.struct_end();
  const Bytes zz = {0x01, 0x02, 0xff, 0xff, 0xff, 0xff, 0x0f};
  ThriftReader z(zz.data(), zz.size(), "z");
  EXPECT_EQ(z.read_zigzag(), -1);
  EXPECT_EQ(z.read_zigzag(), 1);
  EXPECT_EQ(z.read_zigzag(), INT32_MIN);
}

TEST(ParquetThrift, BoundsAndSkips) {
  const Bytes deep(100, 0x1c);  // struct field id 1 nested forever
  ThriftReader r(deep.data(), deep.size(), "deep");
  EXPECT_FAILS_WITH(r.skip(TType::kStruct), "nesting deeper");
  const Bytes longstr = {0x28, 0x7f, 'a'};
  ThriftReader s(longstr.data(), longstr.size(), "s");
  s.struct_begin();
  FieldHeader h;
  ASSERT_TRUE(s.next_field(h));
  EXPECT_FAILS_WITH(s.field_string(h), "past the end");
  const Bytes biglist = {0xf5, 0xff, 0x7f};
  ThriftReader l(biglist.data(), biglist.size(), "l");
  EXPECT_FAILS_WITH(l.list_begin(), "past the end");
}

TEST(ParquetDecode, RleHybridSpecExampleAndRuns) {
  // Encodings.md: 0..7 bit-packed at width 3 is 10001000 11000110 11111010.
  const Bytes packed = {0x03, 0x88, 0xc6, 0xfa, 0x06, 0x05};
  std::vector<uint32_t> out;
  decode_rle_hybrid(packed.data(), packed.size(), 3, 11, out, "t");
  EXPECT_EQ(out, (std::vector<uint32_t>{0, 1, 2, 3, 4, 5, 6, 7, 5, 5, 5}));
  out.clear();
  EXPECT_FAILS_WITH(decode_rle_hybrid(packed.data(), packed.size(), 3, 12, out, "t"), "truncated");
  std::vector<int> lv(37);
  for (size_t i = 0; i < lv.size(); ++i) lv[i] = static_cast<int>((i * 7 + 3) % 5);
  const Bytes enc = encode_levels(lv, 3);
  out.clear();
  decode_rle_hybrid(enc.data(), enc.size(), 3, lv.size(), out, "t");
  EXPECT_TRUE(std::equal(lv.begin(), lv.end(), out.begin()));
  EXPECT_EQ(bit_width(0), 0);
  EXPECT_EQ(bit_width(1), 1);
  EXPECT_EQ(bit_width(4), 3);
}

TEST(ParquetDecode, PlainDictionaryAndDelta) {
  ColumnValues dict;
  const Bytes d = plain_strings({"a", "bb", "ccc"});
  decode_plain(PhysicalType::kByteArray, 0, d.data(), d.size(), 3, dict, "t");
  const Bytes idx = {0x02, 0x03, 0b11100100, 0x00};  // width 2, one group: 0,1,2,3(bad)...
  ColumnValues v;
  LeafSpec spec{PhysicalType::kByteArray, 0, 1, 0};
  decode_values(8, idx.data(), idx.size(), 3, spec, &dict, v, "t");
  ASSERT_EQ(v.size(PhysicalType::kByteArray), 3u);
  EXPECT_EQ(v.bytes, "abbccc");
  ColumnValues w;
  EXPECT_FAILS_WITH(decode_values(8, idx.data(), idx.size(), 4, spec, &dict, w, "t"), "outside the dictionary");
  EXPECT_FAILS_WITH(decode_values(7, idx.data(), idx.size(), 1, spec, &dict, w, "t"), "DELTA_BYTE_ARRAY");
  // 1,2,3,4,5: block 128, 4 miniblocks, 5 values, first 1; min delta 1, all widths 0.
  const Bytes delta = {0x80, 0x01, 0x04, 0x05, 0x02, 0x02, 0, 0, 0, 0};
  ColumnValues dv;
  decode_delta_binary_packed(PhysicalType::kInt64, delta.data(), delta.size(), 5, dv, "t");
  EXPECT_EQ(dv.ints, (std::vector<int64_t>{1, 2, 3, 4, 5}));
  const Bytes bools = {0b00000101};
  ColumnValues bv;
  decode_plain(PhysicalType::kBoolean, 0, bools.data(), bools.size(), 3, bv, "t");
  EXPECT_EQ(bv.ints, (std::vector<int64_t>{1, 0, 1}));
}

TEST(ParquetCompression, RoundTripsAndSizeChecks) {
  std::string text;
  for (int i = 0; i < 500; ++i) text += "row " + std::to_string(i * 7919 % 1000) + " ünïcode ";
  const auto* src = reinterpret_cast<const uint8_t*>(text.data());
  for (Codec c : {Codec::kUncompressed, Codec::kSnappy, Codec::kGzip, Codec::kZstd}) {
    const Bytes z = compress(c, src, text.size());
    const Bytes back = decompress(c, z.data(), z.size(), text.size(), "p");
    EXPECT_EQ(std::string(back.begin(), back.end()), text) << codec_name(c);
    EXPECT_FAILS_WITH(decompress(c, z.data(), z.size(), text.size() + 1, "p"), "decompresses to");
  }
  const Bytes junk = {1, 2, 3, 4, 5};
  EXPECT_FAILS_WITH(decompress(Codec::kZstd, junk.data(), junk.size(), 10, "p"), "ZSTD");
  EXPECT_FAILS_WITH(decompress(Codec::kLzo, junk.data(), junk.size(), 10, "p"), "LZO");
}

// ---- whole files ----

TEST(ParquetReader, FlatPlainFileEveryCodecAndPageVersion) {
  EXPECT_EQ(read_all(flat_file()), kFlatRows);
  for (int codec : {1, 2, 6})
    for (bool v2 : {false, true}) EXPECT_EQ(read_all(flat_file({codec, v2})), kFlatRows) << codec << v2;
  const Bytes img = flat_file();
  const ParquetReader r = ParquetReader::from_bytes(img.data(), img.size(), "t.parquet");
  EXPECT_EQ(r.columns(), (std::vector<std::string>{"id", "text"}));
  EXPECT_EQ(r.num_rows(), 4);
  EXPECT_EQ(read_all(img, {"text"})[1], json::parse(R"({"text":"b"})"));
}

TEST(ParquetReader, NestedListsAndListOfStruct) {
  EXPECT_EQ(read_all(nested_file()), kNestedRows);
  const json ids = read_all(nested_file(), {"input_ids"});
  EXPECT_EQ(ids[3], json::parse(R"({"input_ids":[9,null]})"));
}

TEST(ParquetReader, DirectoryOfShardsInNameOrder) {
  testing::TempDir dir("pq");
  std::filesystem::create_directories(dir / "data");
  const Bytes img = flat_file({1, false});
  for (const char* name : {"data/train-00001-of-00002.parquet", "data/train-00000-of-00002.parquet"}) {
    std::ofstream(dir / name, std::ios::binary).write(reinterpret_cast<const char*>(img.data()), static_cast<std::streamsize>(img.size()));
  }
  std::ofstream(dir / "README.md") << "not data";
  std::vector<int64_t> seen;
  for_each_parquet_row(dir.str(), {"id"}, [&](int64_t row, const json& o) {
    seen.push_back(row);
    EXPECT_EQ(o, json::object({{"id", kFlatRows[static_cast<size_t>(row % 4)]["id"]}}));
  });
  EXPECT_EQ(seen, (std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7}));
  EXPECT_EQ(list_parquet_files(dir.str())[0], dir / "data/train-00000-of-00002.parquet");
  EXPECT_FAILS_WITH(for_each_parquet_row(dir.str(), {"nope"}, [](int64_t, const json&) {}), "columns: id, text");
  testing::TempDir empty("pq-empty");
  EXPECT_FAILS_WITH(for_each_parquet_row(empty.str(), {}, [](int64_t, const json&) {}), "no *.parquet");
}

// ---- errors ----

Bytes with_footer_len(Bytes img, uint32_t n) {
  for (int i = 0; i < 4; ++i) img[img.size() - 8 + static_cast<size_t>(i)] = static_cast<uint8_t>(n >> (8 * i));
  return img;
}

// Offset of the first page header's compressed-size field (field 3, right after type and size).
size_t page_header_field(const Bytes& img, int id) {
  size_t p = 4;
  ThriftReader r(img.data() + p, img.size() - p, "x");
  r.struct_begin();
  FieldHeader h;
  while (r.next_field(h)) {
    if (h.id == id) return p + r.position();
    r.skip(h.type);
  }
  return 0;
}

TEST(ParquetErrors, FramingAndFooter) {
  const Bytes good = flat_file();
  Bytes bad = good;
  bad[0] = 'X';
  EXPECT_FAILS_WITH(read_all(bad), "not a Parquet file");
  EXPECT_FAILS_WITH(read_all(Bytes(good.begin(), good.begin() + 10)), "truncated");
  EXPECT_FAILS_WITH(read_all(Bytes(good.begin(), good.end() - 3)), "truncated");
  EXPECT_FAILS_WITH(read_all(with_footer_len(good, 1u << 30)), "footer length");
  const uint32_t flen = static_cast<uint32_t>(good[good.size() - 8]) | static_cast<uint32_t>(good[good.size() - 7]) << 8;
  bad = good;
  std::fill(bad.end() - 8 - flen, bad.end() - 8, 0xff);
  EXPECT_FAILS_WITH(read_all(bad), "corrupt Thrift");
  EXPECT_FAILS_WITH(read_all(good, {"id", "label"}), "no column 'label' (columns: id, text)");
  EXPECT_FAILS_WITH(ParquetReader::open("/nonexistent/x.parquet"), "cannot open");
}

TEST(ParquetErrors, PagesThatLie) {
  const Bytes good = flat_file();
  // compressed_page_size (field 3) larger than the chunk: it is one byte zigzag in these files.
  Bytes bad = good;
  const size_t cfield = page_header_field(good, 3);
  ASSERT_GT(cfield, 0u);
  bad[cfield] = 0x7e;  // 63
  EXPECT_FAILS_WITH(read_all(bad), "past the end of the column chunk");
  EXPECT_NE(error_of([&] { read_all(bad); }).find("row group 0, column 'id', page 0"), std::string::npos);
  bad = good;
  const size_t ufield = page_header_field(good, 2);
  bad[ufield] = static_cast<uint8_t>(bad[ufield] + 2);  // uncompressed size + 1
  EXPECT_FAILS_WITH(read_all(bad), "decompresses to");
  const Bytes snappy = flat_file({1, false});
  bad = snappy;
  const size_t sfield = page_header_field(snappy, 2);
  bad[sfield] = static_cast<uint8_t>(bad[sfield] + 2);
  EXPECT_FAILS_WITH(read_all(bad), "decompresses to");
  std::vector<TElem> schema = {{"schema", -1, -1, 1}, {"id", 1, 1}};
  TLeaf leaf{1, {"id"}, 1, 0, {1}, {}, plain_i32({1})};
  leaf.encoding = 7;
  EXPECT_FAILS_WITH(read_all(build_file(schema, {leaf}, 1)), "unsupported encoding DELTA_BYTE_ARRAY");
  std::vector<TElem> i96 = {{"schema", -1, -1, 1}, {"ts", 3, 1}};
  EXPECT_FAILS_WITH(read_all(build_file(i96, {{3, {"ts"}, 1, 0, {0}, {}, {}}}, 1)), "INT96");
}

TEST(ParquetErrors, UnsupportedCodecIsNamed) {
  Bytes img = flat_file();
  // Patch codec 0 -> 3 (LZO) in both column metadata entries: field 4 follows the path list.
  size_t patched = 0;
  for (size_t i = img.size() - 8; i-- > 4 && patched < 2;) {
    if (img[i] == 0x15 && img[i + 1] == 0x00 && img[i + 2] == 0x16) {  // delta-1 i32 codec=0, then num_values
      img[i + 1] = 0x06;
      ++patched;
    }
  }
  ASSERT_EQ(patched, 2u);
  EXPECT_FAILS_WITH(read_all(img), "LZO");
}

// ---- fixtures written by pyarrow ----

TEST(ParquetFixtures, MatchPyarrow) {
  const std::filesystem::path dir = std::filesystem::path(FTUNE_SOURCE_DIR) / "tests/fixtures/parquet";
  std::vector<std::filesystem::path> files;
  if (std::filesystem::is_directory(dir))
    for (const auto& e : std::filesystem::directory_iterator(dir))
      if (e.path().extension() == ".parquet") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  ASSERT_FALSE(files.empty()) << "no Parquet fixtures in " << dir.string()
                              << ": run `python3 tools/make_parquet_fixtures.py --out tests/fixtures/parquet` "
                                 "on a machine with pyarrow";
  for (const auto& f : files) {
    std::filesystem::path exp = f;
    exp.replace_extension(".expected.jsonl");
    std::ifstream in(exp);
    ASSERT_TRUE(in) << "missing " << exp.string();
    std::vector<json> want;
    for (std::string line; std::getline(in, line);)
      if (!line.empty()) want.push_back(json::parse(line));
    size_t n = 0;
    for_each_parquet_row(f.string(), {}, [&](int64_t row, const json& o) {
      ASSERT_LT(static_cast<size_t>(row), want.size()) << f.string();
      EXPECT_EQ(o, want[static_cast<size_t>(row)]) << f.string() << " row " << row;
      ++n;
    });
    EXPECT_EQ(n, want.size()) << f.string();
  }
}

}  // namespace
}  // namespace ftune

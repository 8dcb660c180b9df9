// Parquet file framing, column-chunk page walking and record assembly. Column chunk and page
// bounds are validated against the file before any byte of them is read.
#include "data/parquet/reader.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "data/parquet/compression.h"
#include "data/parquet/decode.h"

namespace ftune::parquet {

class MappedFile {
 public:
  explicit MappedFile(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail("{}: cannot open: {}", path, std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      fail("{}: not a regular file", path);
    }
    size_ = static_cast<size_t>(st.st_size);
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        ::close(fd);
        fail("{}: cannot map: {}", path, std::strerror(errno));
      }
      data_ = static_cast<const uint8_t*>(p);
    }
    ::close(fd);
  }
  ~MappedFile() {
    if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

namespace {

constexpr uint8_t kMagic[4] = {'P', 'A', 'R', '1'};

std::string join(const std::vector<std::string>& v, const char* sep) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? sep : "") + printable(v[i]);
  return s;
}

const SchemaNode& first_leaf(const SchemaNode& n) {
  const SchemaNode* p = &n;
  while (!p->children.empty()) p = &p->children[0];
  return *p;
}

// Walks the column chunks of one leaf in one row group and decodes every page.
void read_chunk(const uint8_t* file, size_t data_end, const ColumnChunk& cc, const SchemaNode& leaf,
                const std::string& where, LeafColumn& out) {
  const ColumnMetaData& m = cc.meta;
  int64_t start = m.data_page_offset;
  if (m.dictionary_page_offset > 0 && m.dictionary_page_offset < start) start = m.dictionary_page_offset;
  if (start < 4 || m.total_compressed_size < 0 || static_cast<uint64_t>(start) > data_end ||
      static_cast<uint64_t>(m.total_compressed_size) > data_end - static_cast<uint64_t>(start))
    fail("{}: column chunk [{}, +{}) lies outside the data section of {} bytes", where, start, m.total_compressed_size, data_end);
  if (m.num_values < 0) fail("{}: negative num_values", where);
  const auto codec = static_cast<Codec>(m.codec);
  LeafSpec spec{static_cast<PhysicalType>(leaf.type), leaf.type_length, leaf.max_def, leaf.max_rep};
  if (spec.type == PhysicalType::kInt96) fail("{}: unsupported physical type INT96", where);

  ColumnValues dict;
  bool have_dict = false;
  size_t pos = static_cast<size_t>(start);
  const size_t end = pos + static_cast<size_t>(m.total_compressed_size);
  int64_t seen = 0;
  for (int page = 0; seen < m.num_values; ++page) {
    const std::string pw = fmt::format("{}, page {}", where, page);
    if (pos >= end) fail("{}: column chunk ends after {} of its {} values", pw, seen, m.num_values);
    const PageHeader h = parse_page_header(file + pos, end - pos, pw);
    pos += h.header_size;
    if (static_cast<size_t>(h.compressed_page_size) > end - pos)
      fail("{}: compressed size {} runs past the end of the column chunk ({} bytes left)", pw, h.compressed_page_size, end - pos);
    const uint8_t* body = file + pos;
    const size_t body_n = static_cast<size_t>(h.compressed_page_size);
    const size_t raw_n = static_cast<size_t>(h.uncompressed_page_size);
    pos += body_n;
    switch (static_cast<PageType>(h.type)) {
      case PageType::kDictionaryPage: {
        if (!h.has_dict) fail("{}: dictionary page without its header", pw);
        if (have_dict || seen > 0) fail("{}: dictionary page after the first page", pw);
        if (h.dict.encoding != static_cast<int32_t>(Encoding::kPlain) &&
            h.dict.encoding != static_cast<int32_t>(Encoding::kPlainDictionary))
          fail("{}: unsupported dictionary encoding {} ({})", pw, encoding_name(h.dict.encoding), h.dict.encoding);
        if (h.dict.num_values < 0) fail("{}: negative dictionary size", pw);
        const std::vector<uint8_t> raw = decompress(codec, body, body_n, raw_n, pw);
        decode_plain(spec.type, spec.type_length, raw.data(), raw.size(), static_cast<size_t>(h.dict.num_values), dict, pw);
        have_dict = true;
        break;
      }
      case PageType::kDataPage: {
        if (!h.has_data) fail("{}: data page without its header", pw);
        if (h.data.num_values < 0 || h.data.num_values > m.num_values - seen)
          fail("{}: {} values, more than the {} left in the column chunk", pw, h.data.num_values, m.num_values - seen);
        const std::vector<uint8_t> raw = decompress(codec, body, body_n, raw_n, pw);
        decode_page_v1(h, raw.data(), raw.size(), spec, have_dict ? &dict : nullptr, out, pw);
        seen += h.data.num_values;
        break;
      }
      case PageType::kDataPageV2: {
        if (!h.has_v2) fail("{}: v2 data page without its header", pw);
        const DataPageHeaderV2& v = h.v2;
        if (v.num_values < 0 || v.num_values > m.num_values - seen)
          fail("{}: {} values, more than the {} left in the column chunk", pw, v.num_values, m.num_values - seen);
        if (v.repetition_levels_byte_length < 0 || v.definition_levels_byte_length < 0)
          fail("{}: negative level length", pw);
        const size_t lv = static_cast<size_t>(v.repetition_levels_byte_length) + static_cast<size_t>(v.definition_levels_byte_length);
        if (lv > body_n || lv > raw_n) fail("{}: level sections of {} bytes exceed the page", pw, lv);
        const uint8_t* vals = body + lv;
        std::vector<uint8_t> raw;
        if (v.is_compressed && codec != Codec::kUncompressed) {
          raw = decompress(codec, vals, body_n - lv, raw_n - lv, pw);
        } else {
          if (body_n != raw_n) fail("{}: uncompressed page of {} bytes, its header says {}", pw, body_n, raw_n);
        }
        const uint8_t* vp = raw.empty() ? vals : raw.data();
        const size_t vn = raw.empty() ? body_n - lv : raw.size();
        decode_page_v2(h, body, lv, vp, vn, spec, have_dict ? &dict : nullptr, out, pw);
        seen += v.num_values;
        break;
      }
      default:
        break;  // index pages and unknown kinds carry no values
    }
  }
  if (out.values.size(spec.type) != static_cast<size_t>(std::count(out.def.begin(), out.def.end(), static_cast<uint8_t>(leaf.max_def))))
    fail("{}: value count disagrees with the definition levels", where);
}

// Rebuilds nested values from the level streams (the record-shredding scheme of the format).
class Assembler {
 public:
  Assembler(const std::vector<LeafColumn>& cols, const std::string& where)
      : cols_(cols), e_(cols.size(), 0), v_(cols.size(), 0), where_(where) {}

  void start_row(const SchemaNode& top) {
    const SchemaNode& l = first_leaf(top);
    const LeafColumn& c = col(l);
    if (e_[li(l)] >= c.def.size()) fail("{}: column '{}' ends before the row group's rows", where_, printable(top.name));
    if (c.rep[e_[li(l)]] != 0) fail("{}: column '{}' does not start a row at entry {}", where_, printable(top.name), e_[li(l)]);
  }

  nlohmann::json read_field(const SchemaNode& n) {
    if (n.repetition != Repetition::kRepeated) return read_value(n);
    const SchemaNode& l = first_leaf(n);
    nlohmann::json arr = nlohmann::json::array();
    if (peek_def(l) < n.max_def) {
      skip_entry(n);
      return arr;
    }
    for (;;) {
      arr.push_back(read_instance(n));
      const size_t i = li(l);
      if (e_[i] >= col(l).rep.size() || col(l).rep[e_[i]] < n.max_rep) break;
      if (col(l).rep[e_[i]] > n.max_rep) fail("{}: column '{}' has a stray repetition level", where_, printable(l.name));
    }
    return arr;
  }

  void check_consumed(const SchemaNode& n) const {
    if (n.leaf_index >= 0) {
      if (e_[li(n)] != col(n).def.size())
        fail("{}: column '{}' holds {} level entries, the rows use {}", where_, printable(n.name), col(n).def.size(), e_[li(n)]);
      return;
    }
    for (const SchemaNode& c : n.children) check_consumed(c);
  }

 private:
  size_t li(const SchemaNode& l) const { return static_cast<size_t>(l.leaf_index); }
  const LeafColumn& col(const SchemaNode& l) const { return cols_[li(l)]; }

  int peek_def(const SchemaNode& l) const {
    if (e_[li(l)] >= col(l).def.size()) fail("{}: column '{}' ends in the middle of a row", where_, printable(l.name));
    return col(l).def[e_[li(l)]];
  }

  // A null or empty value at node n leaves exactly one entry in every leaf below it.
  void skip_entry(const SchemaNode& n) {
    if (n.leaf_index >= 0) {
      if (peek_def(n) == n.max_def) ++v_[li(n)];
      ++e_[li(n)];
      return;
    }
    for (const SchemaNode& c : n.children) skip_entry(c);
  }

  nlohmann::json read_value(const SchemaNode& n) {
    if (n.repetition == Repetition::kOptional && peek_def(first_leaf(n)) < n.max_def) {
      skip_entry(n);
      return nullptr;
    }
    return read_instance(n);
  }

  nlohmann::json read_instance(const SchemaNode& n) {
    if (n.leaf_index >= 0) return read_leaf(n);
    nlohmann::json obj = nlohmann::json::object();
    for (const SchemaNode& c : n.children) obj[c.name] = read_field(c);
    if (n.is_list && n.children.size() == 1 && n.children[0].repetition == Repetition::kRepeated) {
      const SchemaNode& r = n.children[0];
      nlohmann::json arr = std::move(obj[r.name]);
      // Three-level lists wrap each element in a one-field group; the legacy two-level forms
      // name the repeated group "array" or "<list>_tuple" and make it the element itself.
      const bool three_level = r.children.size() == 1 && r.name != "array" && r.name != n.name + "_tuple";
      if (three_level)
        for (auto& item : arr) item = nlohmann::json(std::move(item.begin().value()));
      return arr;
    }
    return obj;
  }

  nlohmann::json read_leaf(const SchemaNode& l) {
    const size_t i = li(l);
    const int d = peek_def(l);
    ++e_[i];
    if (d < l.max_def) return nullptr;
    const ColumnValues& vals = cols_[i].values;
    const auto t = static_cast<PhysicalType>(l.type);
    const size_t k = v_[i]++;
    if (k >= vals.size(t)) fail("{}: column '{}' has fewer values than its levels need", where_, printable(l.name));
    switch (t) {
      case PhysicalType::kBoolean: return vals.ints[k] != 0;
      case PhysicalType::kInt32:
        if (l.is_unsigned) return static_cast<uint32_t>(vals.ints[k]);
        return vals.ints[k];
      case PhysicalType::kInt64:
        if (l.is_unsigned) return static_cast<uint64_t>(vals.ints[k]);
        return vals.ints[k];
      case PhysicalType::kFloat:
      case PhysicalType::kDouble: return vals.reals[k];
      default: return std::string(vals.bytes, vals.offsets[k], vals.offsets[k + 1] - vals.offsets[k]);
    }
  }

  const std::vector<LeafColumn>& cols_;
  std::vector<size_t> e_, v_;  // entry and value cursor per leaf
  const std::string& where_;
};

}  // namespace

ParquetReader::ParquetReader(ParquetReader&&) noexcept = default;
ParquetReader& ParquetReader::operator=(ParquetReader&&) noexcept = default;
ParquetReader::~ParquetReader() = default;

ParquetReader ParquetReader::open(const std::string& path) {
  ParquetReader r;
  r.map_ = std::make_unique<MappedFile>(path);
  r.data_ = r.map_->data();
  r.size_ = r.map_->size();
  r.label_ = path;
  r.init();
  return r;
}

ParquetReader ParquetReader::from_bytes(const uint8_t* data, size_t size, std::string label) {
  ParquetReader r;
  r.data_ = data;
  r.size_ = size;
  r.label_ = std::move(label);
  r.init();
  return r;
}

void ParquetReader::init() {
  if (size_ >= 4 && std::memcmp(data_, kMagic, 4) != 0) fail("{}: not a Parquet file (bad magic at the start)", label_);
  if (size_ < 12) fail("{}: truncated Parquet file ({} bytes)", label_, size_);
  if (std::memcmp(data_ + size_ - 4, kMagic, 4) != 0)
    fail("{}: truncated Parquet file (no PAR1 magic at the end)", label_);
  const uint8_t* t = data_ + size_ - 8;
  const uint32_t footer = static_cast<uint32_t>(t[0]) | static_cast<uint32_t>(t[1]) << 8 |
                          static_cast<uint32_t>(t[2]) << 16 | static_cast<uint32_t>(t[3]) << 24;
  if (footer > size_ - 12) fail("{}: footer length {} beyond the file of {} bytes", label_, footer, size_);
  footer_start_ = size_ - 8 - footer;
  meta_ = parse_file_metadata(data_ + size_ - 8 - footer, footer, label_);
  schema_ = build_schema(meta_.schema, label_);
  int64_t rows = 0;
  for (size_t g = 0; g < meta_.row_groups.size(); ++g) {
    const RowGroup& rg = meta_.row_groups[g];
    if (rg.num_rows < 0 || rg.num_rows > meta_.num_rows - rows)
      fail("{}: row group {} claims {} rows, the file {}", label_, g, rg.num_rows, meta_.num_rows);
    rows += rg.num_rows;
    if (rg.columns.size() != schema_.leaves.size())
      fail("{}: row group {} has {} column chunks, the schema {} leaf columns", label_, g, rg.columns.size(), schema_.leaves.size());
    for (size_t c = 0; c < rg.columns.size(); ++c) {
      const ColumnChunk& cc = rg.columns[c];
      const std::string name = join(schema_.leaves[c].path, ".");
      if (!cc.file_path.empty()) fail("{}: row group {}, column '{}' lives in another file ({})", label_, g, name, printable(cc.file_path));
      if (!cc.has_meta) fail("{}: row group {}, column '{}' has no metadata", label_, g, name);
      if (cc.meta.type != schema_.leaves[c].node->type)
        fail("{}: row group {}, column '{}' has type {}, the schema {}", label_, g, name, cc.meta.type, schema_.leaves[c].node->type);
    }
  }
  if (rows != meta_.num_rows) fail("{}: row groups hold {} rows, the footer says {}", label_, rows, meta_.num_rows);
}

std::vector<std::string> ParquetReader::columns() const {
  std::vector<std::string> out;
  for (const SchemaNode& c : schema_.root.children) out.push_back(c.name);
  return out;
}

std::vector<int> ParquetReader::select(const std::vector<std::string>& columns) const {
  std::vector<int> out;
  const auto& kids = schema_.root.children;
  if (columns.empty()) {
    for (size_t i = 0; i < kids.size(); ++i) out.push_back(static_cast<int>(i));
    return out;
  }
  for (const std::string& want : columns) {
    int found = -1;
    for (size_t i = 0; i < kids.size() && found < 0; ++i)
      if (kids[i].name == want) found = static_cast<int>(i);
    if (found < 0) fail("{}: no column '{}' (columns: {})", label_, printable(want), join(this->columns(), ", "));
    out.push_back(found);
  }
  return out;
}

void ParquetReader::read_row_group(size_t g, const std::vector<std::string>& columns, int64_t first_row,
                                   const RowFn& f) const {
  FT_ASSERT(g < meta_.row_groups.size());
  const std::vector<int> sel = select(columns);
  const RowGroup& rg = meta_.row_groups[g];
  std::vector<LeafColumn> cols(schema_.leaves.size());
  for (size_t c = 0; c < schema_.leaves.size(); ++c) {
    const LeafInfo& leaf = schema_.leaves[c];
    if (std::find(sel.begin(), sel.end(), leaf.top_level) == sel.end()) continue;
    const std::string where = fmt::format("{}: row group {}, column '{}'", label_, g, join(leaf.path, "."));
    read_chunk(data_, footer_start_, rg.columns[c], *leaf.node, where, cols[c]);
  }
  const std::string where = fmt::format("{}: row group {}", label_, g);
  Assembler a(cols, where);
  for (int64_t r = 0; r < rg.num_rows; ++r) {
    nlohmann::json obj = nlohmann::json::object();
    for (int s : sel) {
      const SchemaNode& top = schema_.root.children[static_cast<size_t>(s)];
      a.start_row(top);
      obj[top.name] = a.read_field(top);
    }
    f(first_row + r, obj);
  }
  for (int s : sel) a.check_consumed(schema_.root.children[static_cast<size_t>(s)]);
}

void ParquetReader::for_each_row(const std::vector<std::string>& columns, const RowFn& f) const {
  select(columns);  // report a missing column before any row
  int64_t first = 0;
  for (size_t g = 0; g < meta_.row_groups.size(); ++g) {
    read_row_group(g, columns, first, f);
    first += meta_.row_groups[g].num_rows;
  }
}

}  // namespace ftune::parquet

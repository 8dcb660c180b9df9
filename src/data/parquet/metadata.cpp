// Parquet footer and page-header structures read from Thrift, and the schema tree built from the
// flattened SchemaElement list (definition and repetition levels per node).
#include "data/parquet/metadata.h"

#include "core/error.h"
#include "data/parquet/thrift_compact.h"

namespace ftune::parquet {

namespace {

// Deeper schemas than this are not produced by any writer and would overflow level storage.
constexpr int kMaxSchemaDepth = 64;

void read_logical_type(ThriftReader& r, SchemaElement& e) {
  r.struct_begin();
  FieldHeader h;
  while (r.next_field(h)) {
    if (h.id == 2 && h.type == TType::kStruct) {
      e.logical_map = true;
      r.skip(h.type);
    } else if (h.id == 3 && h.type == TType::kStruct) {
      e.logical_list = true;
      r.skip(h.type);
    } else if (h.id == 10 && h.type == TType::kStruct) {
      r.struct_begin();
      FieldHeader g;
      while (r.next_field(g)) {
        if (g.id == 2 && (g.type == TType::kTrue || g.type == TType::kFalse)) e.logical_unsigned = !r.field_bool(g);
        else r.skip(g.type);
      }
      r.struct_end();
    } else {
      r.skip(h.type);
    }
  }
  r.struct_end();
}

SchemaElement read_schema_element(ThriftReader& r) {
  SchemaElement e;
  r.struct_begin();
  FieldHeader h;
  while (r.next_field(h)) {
    switch (h.id) {
      case 1: e.type = r.field_i32(h); break;
      case 2: e.type_length = r.field_i32(h); break;
      case 3: e.repetition = r.field_i32(h); break;
      case 4: e.name = r.field_string(h); break;
      case 5: e.num_children = r.field_i32(h); break;
      case 6: e.converted_type = r.field_i32(h); break;
      case 10: r.expect(h, TType::kStruct); read_logical_type(r, e); break;
      default: r.skip(h.type);
    }
  }
  r.struct_end();
  return e;
}

ColumnMetaData read_column_meta(ThriftReader& r) {
  ColumnMetaData m;
  r.struct_begin();
  FieldHeader h;
  while (r.next_field(h)) {
    switch (h.id) {
      case 1: m.type = r.field_i32(h); break;
      case 2: m.encodings = r.field_i32_list(h); break;
      case 3: m.path_in_schema = r.field_string_list(h); break;
      case 4: m.codec = r.field_i32(h); break;
      case 5: m.num_values = r.field_i64(h); break;
      case 6: m.total_uncompressed_size = r.field_i64(h); break;
      case 7: m.total_compressed_size = r.field_i64(h); break;
      case 9: m.data_page_offset = r.field_i64(h); break;
      case 11: m.dictionary_page_offset = r.field_i64(h); break;
      default: r.skip(h.type);
    }
  }
  r.struct_end();
  return m;
}

ColumnChunk read_column_chunk(ThriftReader& r) {
  ColumnChunk c;
  r.struct_begin();
  FieldHeader h;
  while (r.next_field(h)) {
    switch (h.id) {
      case 1: c.file_path = r.field_string(h); break;
      case 2: c.file_offset = r.field_i64(h); break;
      case 3:
        r.expect(h, TType::kStruct);
        c.meta = read_column_meta(r);
        c.has_meta = true;
        break;
      default: r.skip(h.type);
    }
  }
  r.struct_end();
  return c;
}

RowGroup read_row_group(ThriftReader& r) {
  RowGroup g;
  r.struct_begin();
  FieldHeader h;
  while (r.next_field(h)) {
    switch (h.id) {
      case 1: {
        r.expect(h, TType::kList);
        const ListHeader l = r.list_begin();
        if (l.elem != TType::kStruct) r.corrupt("RowGroup.columns is not a list of structs");
        g.columns.reserve(l.size);
        for (uint32_t i = 0; i < l.size; ++i) g.columns.push_back(read_column_chunk(r));
        r.list_end();
        break;
      }
      case 2: g.total_byte_size = r.field_i64(h); break;
      case 3: g.num_rows = r.field_i64(h); break;
      default: r.skip(h.type);
    }
  }
  r.struct_end();
  return g;
}

DataPageHeader read_data_page_header(ThriftReader& r) {
  DataPageHeader d;
  r.struct_begin();
  FieldHeader h;
  while (r.next_field(h)) {
    switch (h.id) {
      case 1: d.num_values = r.field_i32(h); break;
      case 2: d.encoding = r.field_i32(h); break;
      case 3: d.definition_level_encoding = r.field_i32(h); break;
      case 4: d.repetition_level_encoding = r.field_i32(h); break;
      default: r.skip(h.type);
    }
  }
  r.struct_end();
  return d;
}

DataPageHeaderV2 read_data_page_header_v2(ThriftReader& r) {
  DataPageHeaderV2 d;
  r.struct_begin();
  FieldHeader h;
  while (r.next_field(h)) {
    switch (h.id) {
      case 1: d.num_values = r.field_i32(h); break;
      case 2: d.num_nulls = r.field_i32(h); break;
      case 3: d.num_rows = r.field_i32(h); break;
      case 4: d.encoding = r.field_i32(h); break;
      case 5: d.definition_levels_byte_length = r.field_i32(h); break;
      case 6: d.repetition_levels_byte_length = r.field_i32(h); break;
      case 7: d.is_compressed = r.field_bool(h); break;
      default: r.skip(h.type);
    }
  }
  r.struct_end();
  return d;
}

DictionaryPageHeader read_dictionary_page_header(ThriftReader& r) {
  DictionaryPageHeader d;
  r.struct_begin();
  FieldHeader h;
  while (r.next_field(h)) {
    switch (h.id) {
      case 1: d.num_values = r.field_i32(h); break;
      case 2: d.encoding = r.field_i32(h); break;
      default: r.skip(h.type);
    }
  }
  r.struct_end();
  return d;
}

}  // namespace

const char* type_name(PhysicalType t) {
  switch (t) {
    case PhysicalType::kBoolean: return "BOOLEAN";
    case PhysicalType::kInt32: return "INT32";
    case PhysicalType::kInt64: return "INT64";
    case PhysicalType::kInt96: return "INT96";
    case PhysicalType::kFloat: return "FLOAT";
    case PhysicalType::kDouble: return "DOUBLE";
    case PhysicalType::kByteArray: return "BYTE_ARRAY";
    case PhysicalType::kFixedLenByteArray: return "FIXED_LEN_BYTE_ARRAY";
  }
  return "unknown type";
}

const char* encoding_name(int32_t e) {
  static constexpr const char* kNames[] = {"PLAIN", "GROUP_VAR_INT", "PLAIN_DICTIONARY", "RLE", "BIT_PACKED",
                                           "DELTA_BINARY_PACKED", "DELTA_LENGTH_BYTE_ARRAY", "DELTA_BYTE_ARRAY",
                                           "RLE_DICTIONARY", "BYTE_STREAM_SPLIT"};
  return e >= 0 && e < 10 ? kNames[e] : "unknown encoding";
}

const char* codec_name(Codec c) {
  static constexpr const char* kNames[] = {"UNCOMPRESSED", "SNAPPY", "GZIP", "LZO", "BROTLI", "LZ4", "ZSTD", "LZ4_RAW"};
  const auto i = static_cast<int32_t>(c);
  return i >= 0 && i < 8 ? kNames[i] : "unknown codec";
}

std::string printable(const std::string& s) {
  std::string out = s;
  for (char& c : out)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
  return out;
}

FileMetaData parse_file_metadata(const uint8_t* data, size_t size, const std::string& label) {
  ThriftReader r(data, size, label);
  FileMetaData m;
  bool have_schema = false, have_rows = false, have_groups = false;
  r.struct_begin();
  FieldHeader h;
  while (r.next_field(h)) {
    switch (h.id) {
      case 1: m.version = r.field_i32(h); break;
      case 2: {
        r.expect(h, TType::kList);
        const ListHeader l = r.list_begin();
        if (l.elem != TType::kStruct) r.corrupt("schema is not a list of structs");
        m.schema.reserve(l.size);
        for (uint32_t i = 0; i < l.size; ++i) m.schema.push_back(read_schema_element(r));
        r.list_end();
        have_schema = true;
        break;
      }
      case 3: m.num_rows = r.field_i64(h); have_rows = true; break;
      case 4: {
        r.expect(h, TType::kList);
        const ListHeader l = r.list_begin();
        if (l.elem != TType::kStruct) r.corrupt("row_groups is not a list of structs");
        m.row_groups.reserve(l.size);
        for (uint32_t i = 0; i < l.size; ++i) m.row_groups.push_back(read_row_group(r));
        r.list_end();
        have_groups = true;
        break;
      }
      case 6: m.created_by = r.field_string(h); break;
      default: r.skip(h.type);
    }
  }
  r.struct_end();
  if (!have_schema || !have_rows || !have_groups) r.corrupt("FileMetaData lacks schema, num_rows or row_groups");
  if (m.num_rows < 0) r.corrupt("negative num_rows");
  return m;
}

PageHeader parse_page_header(const uint8_t* data, size_t size, const std::string& label) {
  ThriftReader r(data, size, label);
  PageHeader p;
  r.struct_begin();
  FieldHeader h;
  while (r.next_field(h)) {
    switch (h.id) {
      case 1: p.type = r.field_i32(h); break;
      case 2: p.uncompressed_page_size = r.field_i32(h); break;
      case 3: p.compressed_page_size = r.field_i32(h); break;
      case 5: r.expect(h, TType::kStruct); p.data = read_data_page_header(r); p.has_data = true; break;
      case 7: r.expect(h, TType::kStruct); p.dict = read_dictionary_page_header(r); p.has_dict = true; break;
      case 8: r.expect(h, TType::kStruct); p.v2 = read_data_page_header_v2(r); p.has_v2 = true; break;
      default: r.skip(h.type);
    }
  }
  r.struct_end();
  if (p.uncompressed_page_size < 0 || p.compressed_page_size < 0) r.corrupt("negative page size");
  p.header_size = r.position();
  return p;
}

namespace {

struct SchemaBuilder {
  const std::vector<SchemaElement>& elems;
  const std::string& label;
  size_t next = 0;
  Schema* out = nullptr;

  void build(SchemaNode& node, const SchemaElement& e, int depth, int def, int rep, int top) {
    if (depth > kMaxSchemaDepth) fail("{}: schema nested deeper than {}", label, kMaxSchemaDepth);
    node.name = e.name;
    node.converted_type = e.converted_type;
    node.is_list = e.logical_list || e.converted_type == kConvertedList;
    node.is_map = e.logical_map || e.converted_type == kConvertedMap || e.converted_type == kConvertedMapKeyValue;
    node.is_unsigned = e.logical_unsigned || (e.converted_type >= kConvertedUint8 && e.converted_type <= kConvertedUint64);
    if (depth > 0) {
      if (e.repetition < 0 || e.repetition > 2) fail("{}: schema field '{}' has bad repetition {}", label, printable(e.name), e.repetition);
      node.repetition = static_cast<Repetition>(e.repetition);
      if (node.repetition != Repetition::kRequired) ++def;
      if (node.repetition == Repetition::kRepeated) ++rep;
    }
    node.max_def = def;
    node.max_rep = rep;
    if (e.num_children < 0) fail("{}: schema field '{}' has {} children", label, printable(e.name), e.num_children);
    if (e.num_children == 0 && depth > 0) {
      if (e.type < 0 || e.type > 7) fail("{}: schema leaf '{}' has bad type {}", label, printable(e.name), e.type);
      if (e.type == static_cast<int32_t>(PhysicalType::kFixedLenByteArray) && e.type_length <= 0)
        fail("{}: schema leaf '{}' has bad type_length {}", label, printable(e.name), e.type_length);
      node.type = e.type;
      node.type_length = e.type_length;
      node.leaf_index = static_cast<int>(out->leaves.size());
      out->leaves.push_back(LeafInfo{{}, &node, top});
      return;
    }
    if (e.num_children == 0) fail("{}: schema has no columns", label);
    // Each child takes one element, so a count past what is left is a lie.
    if (static_cast<size_t>(e.num_children) > elems.size() - next)
      fail("{}: schema field '{}' claims {} children, only {} elements left", label, printable(e.name), e.num_children, elems.size() - next);
    node.children.resize(static_cast<size_t>(e.num_children));
    for (size_t i = 0; i < node.children.size(); ++i) {
      // Earlier siblings' subtrees may have used up the list, so check again per child.
      if (next >= elems.size()) fail("{}: schema field '{}' claims {} children, the schema ends first", label, printable(e.name), e.num_children);
      const SchemaElement& c = elems[next++];
      build(node.children[i], c, depth + 1, def, rep, depth == 0 ? static_cast<int>(i) : top);
    }
  }
};

void fill_paths(const SchemaNode& node, std::vector<std::string>& path, Schema& s) {
  for (const SchemaNode& c : node.children) {
    path.push_back(c.name);
    if (c.leaf_index >= 0) s.leaves[static_cast<size_t>(c.leaf_index)].path = path;
    else fill_paths(c, path, s);
    path.pop_back();
  }
}

}  // namespace

Schema build_schema(const std::vector<SchemaElement>& elems, const std::string& label) {
  if (elems.empty()) fail("{}: empty schema", label);
  Schema s;
  SchemaBuilder b{elems, label, 1, &s};
  b.build(s.root, elems[0], 0, 0, 0, 0);
  if (b.next != elems.size()) fail("{}: schema has {} elements, the tree uses {}", label, elems.size(), b.next);
  std::vector<std::string> path;
  fill_paths(s.root, path, s);
  return s;
}

}  // namespace ftune::parquet

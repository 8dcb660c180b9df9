// The Parquet footer (FileMetaData) and page headers as plain structs, plus the schema tree with
// the maximum definition/repetition level of every leaf column.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace ftune::parquet {

enum class PhysicalType : int32_t {
  kBoolean = 0, kInt32 = 1, kInt64 = 2, kInt96 = 3, kFloat = 4, kDouble = 5,
  kByteArray = 6, kFixedLenByteArray = 7,
};
enum class Repetition : int32_t { kRequired = 0, kOptional = 1, kRepeated = 2 };
enum class Encoding : int32_t {
  kPlain = 0, kPlainDictionary = 2, kRle = 3, kBitPacked = 4, kDeltaBinaryPacked = 5,
  kDeltaLengthByteArray = 6, kDeltaByteArray = 7, kRleDictionary = 8, kByteStreamSplit = 9,
};
enum class Codec : int32_t {
  kUncompressed = 0, kSnappy = 1, kGzip = 2, kLzo = 3, kBrotli = 4, kLz4 = 5, kZstd = 6, kLz4Raw = 7,
};
enum class PageType : int32_t { kDataPage = 0, kIndexPage = 1, kDictionaryPage = 2, kDataPageV2 = 3 };

// ConvertedType values this reader interprets.
constexpr int32_t kConvertedUtf8 = 0, kConvertedMap = 1, kConvertedMapKeyValue = 2, kConvertedList = 3;
constexpr int32_t kConvertedUint8 = 11, kConvertedUint16 = 12, kConvertedUint32 = 13, kConvertedUint64 = 14;

const char* type_name(PhysicalType t);
const char* encoding_name(int32_t e);
const char* codec_name(Codec c);
// `s` with control bytes replaced, so names from the file cannot break one-line errors.
std::string printable(const std::string& s);

struct SchemaElement {
  int32_t type = -1;  // PhysicalType for leaves, -1 for groups
  int32_t type_length = 0;
  int32_t repetition = -1;
  std::string name;
  int32_t num_children = 0;
  int32_t converted_type = -1;
  bool logical_list = false;  // LogicalType LIST
  bool logical_map = false;
  bool logical_unsigned = false;  // LogicalType INTEGER with isSigned false
};

struct ColumnMetaData {
  int32_t type = -1;
  std::vector<int32_t> encodings;
  std::vector<std::string> path_in_schema;
  int32_t codec = 0;
  int64_t num_values = 0;
  int64_t total_uncompressed_size = 0;
  int64_t total_compressed_size = 0;
  int64_t data_page_offset = -1;
  int64_t dictionary_page_offset = -1;  // -1: none
};

struct ColumnChunk {
  std::string file_path;  // non-empty: the data lives in another file (unsupported)
  int64_t file_offset = 0;
  bool has_meta = false;
  ColumnMetaData meta;
};

struct RowGroup {
  std::vector<ColumnChunk> columns;
  int64_t total_byte_size = 0;
  int64_t num_rows = 0;
};

struct FileMetaData {
  int32_t version = 0;
  std::vector<SchemaElement> schema;
  int64_t num_rows = 0;
  std::vector<RowGroup> row_groups;
  std::string created_by;
};

struct DataPageHeader {
  int32_t num_values = 0;
  int32_t encoding = 0;
  int32_t definition_level_encoding = 0;
  int32_t repetition_level_encoding = 0;
};

struct DataPageHeaderV2 {
  int32_t num_values = 0;
  int32_t num_nulls = 0;
  int32_t num_rows = 0;
  int32_t encoding = 0;
  int32_t definition_levels_byte_length = 0;
  int32_t repetition_levels_byte_length = 0;
  bool is_compressed = true;
};

struct DictionaryPageHeader {
  int32_t num_values = 0;
  int32_t encoding = 0;
};

struct PageHeader {
  int32_t type = -1;
  int32_t uncompressed_page_size = 0;
  int32_t compressed_page_size = 0;
  bool has_data = false, has_dict = false, has_v2 = false;
  DataPageHeader data;
  DictionaryPageHeader dict;
  DataPageHeaderV2 v2;
  size_t header_size = 0;  // bytes the Thrift header itself took
};

// Parses the footer; `label` names the file in errors.
FileMetaData parse_file_metadata(const uint8_t* data, size_t size, const std::string& label);
// Parses the page header at the start of [data, data+size).
PageHeader parse_page_header(const uint8_t* data, size_t size, const std::string& label);

// One node of the schema tree. Leaves index the row group's column chunks.
struct SchemaNode {
  std::string name;
  Repetition repetition = Repetition::kRequired;
  int32_t type = -1;  // PhysicalType for leaves
  int32_t type_length = 0;
  int32_t converted_type = -1;
  bool is_list = false, is_map = false, is_unsigned = false;
  int max_def = 0, max_rep = 0;  // levels at which this node is defined / repeats
  int leaf_index = -1;           // column chunk index for leaves
  std::vector<SchemaNode> children;
  bool is_leaf() const { return children.empty() && type >= 0; }
};

struct LeafInfo {
  std::vector<std::string> path;
  const SchemaNode* node = nullptr;
  int top_level = 0;  // index of the top-level field this leaf belongs to
};

struct Schema {
  Schema() = default;
  Schema(Schema&&) = default;
  Schema& operator=(Schema&&) = default;
  Schema(const Schema&) = delete;  // leaves point into the tree
  Schema& operator=(const Schema&) = delete;
  SchemaNode root;
  std::vector<LeafInfo> leaves;
};

// Builds the tree from the flattened depth-first list; rejects inconsistent child counts.
Schema build_schema(const std::vector<SchemaElement>& elems, const std::string& label);

}  // namespace ftune::parquet

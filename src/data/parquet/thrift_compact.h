// Decoder for the Thrift compact protocol, the encoding of every Parquet footer and page header.
// Every length and count is checked against the bytes left, so corrupt input only ever throws.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace ftune::parquet {

// Compact-protocol wire types (the low nibble of a field header).
enum class TType : uint8_t {
  kStop = 0, kTrue = 1, kFalse = 2, kByte = 3, kI16 = 4, kI32 = 5, kI64 = 6,
  kDouble = 7, kBinary = 8, kList = 9, kSet = 10, kMap = 11, kStruct = 12,
};

struct FieldHeader {
  TType type = TType::kStop;
  int16_t id = 0;
};

struct ListHeader {
  TType elem = TType::kStop;
  uint32_t size = 0;
};

class ThriftReader {
 public:
  // Nesting beyond this is treated as corruption: real footers nest about six levels deep.
  static constexpr int kMaxDepth = 32;

  ThriftReader(const uint8_t* data, size_t size, std::string label)
      : p_(data), begin_(data), end_(data + size), label_(std::move(label)) {}

  size_t position() const { return static_cast<size_t>(p_ - begin_); }
  size_t remaining() const { return static_cast<size_t>(end_ - p_); }
  const std::string& label() const { return label_; }

  void struct_begin();
  void struct_end();
  // Reads the next field header of the current struct; false at its STOP byte.
  bool next_field(FieldHeader& h);
  ListHeader list_begin();
  void list_end() { --depth_; }

  uint8_t read_byte();
  uint64_t read_varint();
  int64_t read_zigzag();
  int32_t read_i32();
  int64_t read_i64() { return read_zigzag(); }
  double read_double();
  std::string read_binary();
  // A bool field carries its value in the header type; a list element is a byte.
  bool field_bool(const FieldHeader& h);
  bool read_bool_elem() { return read_byte() == 1; }

  // Typed field readers that reject a wire type other than the schema's.
  int32_t field_i32(const FieldHeader& h);
  int64_t field_i64(const FieldHeader& h);
  std::string field_string(const FieldHeader& h);
  std::vector<int32_t> field_i32_list(const FieldHeader& h);
  std::vector<std::string> field_string_list(const FieldHeader& h);
  void expect(const FieldHeader& h, TType t);

  void skip(TType t);

  [[noreturn]] void corrupt(const std::string& what) const;

 private:
  void enter();

  const uint8_t* p_;
  const uint8_t* begin_;
  const uint8_t* end_;
  std::string label_;
  int depth_ = 0;
  std::vector<int16_t> last_id_;  // field id of the previous field, per open struct
};

}  // namespace ftune::parquet

// Value and level decoders for Parquet pages: PLAIN, RLE/bit-packed hybrid, dictionary indices,
// DELTA_BINARY_PACKED, and the level layouts of v1 and v2 data pages.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "data/parquet/metadata.h"

namespace ftune::parquet {

// Non-null values of one leaf column; which vector is used depends on the physical type.
struct ColumnValues {
  std::vector<int64_t> ints;      // BOOLEAN (0/1), INT32, INT64
  std::vector<double> reals;      // FLOAT, DOUBLE
  std::vector<uint64_t> offsets{0};  // BYTE_ARRAY, FIXED_LEN_BYTE_ARRAY: value i is bytes[offsets[i], offsets[i+1])
  std::string bytes;

  size_t size(PhysicalType t) const;
  void append_from(PhysicalType t, const ColumnValues& dict, size_t i);
  void clear();
};

// One leaf column of one row group: a level pair per entry, a value per entry with def == max_def.
struct LeafColumn {
  std::vector<uint8_t> def, rep;
  ColumnValues values;
};

struct LeafSpec {
  PhysicalType type = PhysicalType::kInt32;
  int32_t type_length = 0;
  int max_def = 0, max_rep = 0;
};

// Bits needed to store values up to `max_value`.
int bit_width(uint64_t max_value);

uint64_t read_uleb128(const uint8_t*& p, const uint8_t* end, const std::string& where);

// Decodes exactly `count` values of the RLE/bit-packed hybrid at [p, p+n), appending to `out`.
void decode_rle_hybrid(const uint8_t* p, size_t n, int bit_width, size_t count, std::vector<uint32_t>& out,
                       const std::string& where);

void decode_plain(PhysicalType t, int32_t type_length, const uint8_t* p, size_t n, size_t count, ColumnValues& out,
                  const std::string& where);

// DELTA_BINARY_PACKED for INT32/INT64; returns the bytes consumed.
size_t decode_delta_binary_packed(PhysicalType t, const uint8_t* p, size_t n, size_t count, ColumnValues& out,
                                  const std::string& where);

// Values section of a data page in `encoding`; `dict` is null when the chunk has no dictionary.
void decode_values(int32_t encoding, const uint8_t* p, size_t n, size_t count, const LeafSpec& spec,
                   const ColumnValues* dict, ColumnValues& out, const std::string& where);

// A whole v1 data page body (after decompression): [rep levels][def levels][values], each level
// section prefixed by its 4-byte length.
void decode_page_v1(const PageHeader& h, const uint8_t* body, size_t n, const LeafSpec& spec,
                    const ColumnValues* dict, LeafColumn& out, const std::string& where);

// A v2 data page: the uncompressed level sections (lengths from the header) and the values.
void decode_page_v2(const PageHeader& h, const uint8_t* levels, size_t levels_n, const uint8_t* values,
                    size_t values_n, const LeafSpec& spec, const ColumnValues* dict, LeafColumn& out,
                    const std::string& where);

}  // namespace ftune::parquet

// Parquet encodings, following the format's Encodings.md: every read is bounds-checked against the
// page, and every count is checked against the bytes that would have to hold it.
#include "data/parquet/decode.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"

namespace ftune::parquet {

namespace {

// Reads `w` (<= 64) bits LSB-first starting at bit `pos`; the caller has checked the bounds.
uint64_t get_bits(const uint8_t* p, uint64_t pos, int w) {
  uint64_t v = 0;
  int got = 0;
  while (got < w) {
    const int off = static_cast<int>(pos & 7);
    const int take = std::min(8 - off, w - got);
    const uint64_t bits = (static_cast<uint64_t>(p[pos >> 3]) >> off) & ((1u << take) - 1);
    v |= bits << got;
    got += take;
    pos += static_cast<uint64_t>(take);
  }
  return v;
}

uint32_t read_le32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 | static_cast<uint32_t>(p[2]) << 16 |
         static_cast<uint32_t>(p[3]) << 24;
}

int64_t unzigzag(uint64_t v) { return static_cast<int64_t>(v >> 1) ^ -static_cast<int64_t>(v & 1); }

void append_levels(const std::vector<uint32_t>& tmp, int max_level, std::vector<uint8_t>& out, const char* kind,
                   const std::string& where) {
  for (uint32_t v : tmp) {
    if (v > static_cast<uint32_t>(max_level)) fail("{}: {} level {} exceeds the maximum {}", where, kind, v, max_level);
    out.push_back(static_cast<uint8_t>(v));
  }
}

size_t count_non_null(const std::vector<uint8_t>& def, size_t from, int max_def) {
  return static_cast<size_t>(std::count(def.begin() + static_cast<long>(from), def.end(), static_cast<uint8_t>(max_def)));
}

}  // namespace

size_t ColumnValues::size(PhysicalType t) const {
  switch (t) {
    case PhysicalType::kFloat:
    case PhysicalType::kDouble: return reals.size();
    case PhysicalType::kByteArray:
    case PhysicalType::kFixedLenByteArray: return offsets.size() - 1;
    default: return ints.size();
  }
}

void ColumnValues::append_from(PhysicalType t, const ColumnValues& d, size_t i) {
  switch (t) {
    case PhysicalType::kFloat:
    case PhysicalType::kDouble: reals.push_back(d.reals[i]); return;
    case PhysicalType::kByteArray:
    case PhysicalType::kFixedLenByteArray:
      bytes.append(d.bytes, d.offsets[i], d.offsets[i + 1] - d.offsets[i]);
      offsets.push_back(bytes.size());
      return;
    default: ints.push_back(d.ints[i]);
  }
}

void ColumnValues::clear() {
  ints.clear();
  reals.clear();
  offsets.assign(1, 0);
  bytes.clear();
}

int bit_width(uint64_t max_value) {
  int w = 0;
  while (max_value) {
    ++w;
    max_value >>= 1;
  }
  return w;
}

uint64_t read_uleb128(const uint8_t*& p, const uint8_t* end, const std::string& where) {
  uint64_t v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (p >= end) fail("{}: truncated varint", where);
    const uint8_t b = *p++;
    v |= static_cast<uint64_t>(b & 0x7f) << shift;
    if (!(b & 0x80)) return v;
  }
  fail("{}: varint longer than 64 bits", where);
}

void decode_rle_hybrid(const uint8_t* p, size_t n, int bw, size_t count, std::vector<uint32_t>& out,
                       const std::string& where) {
  if (bw < 0 || bw > 32) fail("{}: bit width {} out of range", where, bw);
  const uint8_t* end = p + n;
  const size_t value_bytes = static_cast<size_t>((bw + 7) / 8);
  size_t left = count;
  while (left) {
    const uint64_t h = read_uleb128(p, end, where);
    if (h & 1) {
      // Bit-packed run of (h >> 1) groups of 8; only the bytes holding needed values must exist.
      const uint64_t groups = h >> 1;
      if (groups == 0) fail("{}: empty bit-packed run", where);
      const uint64_t avail_values = groups > (UINT64_MAX >> 4) ? UINT64_MAX : groups * 8;
      const size_t take = static_cast<size_t>(std::min<uint64_t>(avail_values, left));
      const uint64_t need_bytes = (static_cast<uint64_t>(take) * static_cast<uint64_t>(bw) + 7) / 8;
      if (need_bytes > static_cast<uint64_t>(end - p)) fail("{}: bit-packed run past the end of the data", where);
      for (size_t i = 0; i < take; ++i) out.push_back(static_cast<uint32_t>(get_bits(p, i * static_cast<uint64_t>(bw), bw)));
      left -= take;
      const uint64_t left_bytes = static_cast<uint64_t>(end - p);
      p += groups > left_bytes ? left_bytes : std::min<uint64_t>(groups * static_cast<uint64_t>(bw), left_bytes);
    } else {
      const uint64_t run = h >> 1;
      if (value_bytes > static_cast<size_t>(end - p)) fail("{}: RLE run past the end of the data", where);
      uint32_t v = 0;
      for (size_t i = 0; i < value_bytes; ++i) v |= static_cast<uint32_t>(p[i]) << (8 * i);
      p += value_bytes;
      const size_t take = static_cast<size_t>(std::min<uint64_t>(run, left));
      out.insert(out.end(), take, v);
      left -= take;
    }
  }
}

void decode_plain(PhysicalType t, int32_t type_length, const uint8_t* p, size_t n, size_t count, ColumnValues& out,
                  const std::string& where) {
  auto need_fixed = [&](size_t width) {
    if (count > n / width) fail("{}: {} PLAIN values of {} bytes need more than the {} bytes present", where, count, width, n);
  };
  switch (t) {
    case PhysicalType::kBoolean:
      if ((count + 7) / 8 > n) fail("{}: {} PLAIN booleans need more than the {} bytes present", where, count, n);
      for (size_t i = 0; i < count; ++i) out.ints.push_back((p[i >> 3] >> (i & 7)) & 1);
      return;
    case PhysicalType::kInt32:
      need_fixed(4);
      for (size_t i = 0; i < count; ++i) out.ints.push_back(static_cast<int32_t>(read_le32(p + 4 * i)));
      return;
    case PhysicalType::kInt64:
      need_fixed(8);
      for (size_t i = 0; i < count; ++i) {
        int64_t v;
        std::memcpy(&v, p + 8 * i, 8);
        out.ints.push_back(v);
      }
      return;
    case PhysicalType::kFloat:
      need_fixed(4);
      for (size_t i = 0; i < count; ++i) {
        float v;
        std::memcpy(&v, p + 4 * i, 4);
        out.reals.push_back(v);
      }
      return;
    case PhysicalType::kDouble:
      need_fixed(8);
      for (size_t i = 0; i < count; ++i) {
        double v;
        std::memcpy(&v, p + 8 * i, 8);
        out.reals.push_back(v);
      }
      return;
    case PhysicalType::kByteArray: {
      if (count > n / 4) fail("{}: {} PLAIN byte arrays need more than the {} bytes present", where, count, n);
      size_t pos = 0;
      for (size_t i = 0; i < count; ++i) {
        if (n - pos < 4) fail("{}: byte array {} truncated", where, i);
        const uint32_t len = read_le32(p + pos);
        pos += 4;
        if (len > n - pos) fail("{}: byte array {} of {} bytes past the end of the page", where, i, len);
        out.bytes.append(reinterpret_cast<const char*>(p + pos), len);
        out.offsets.push_back(out.bytes.size());
        pos += len;
      }
      return;
    }
    case PhysicalType::kFixedLenByteArray: {
      if (type_length <= 0) fail("{}: bad FIXED_LEN_BYTE_ARRAY length {}", where, type_length);
      need_fixed(static_cast<size_t>(type_length));
      for (size_t i = 0; i < count; ++i) {
        out.bytes.append(reinterpret_cast<const char*>(p + i * static_cast<size_t>(type_length)), static_cast<size_t>(type_length));
        out.offsets.push_back(out.bytes.size());
      }
      return;
    }
    case PhysicalType::kInt96:
      break;
  }
  fail("{}: unsupported physical type {}", where, type_name(t));
}

size_t decode_delta_binary_packed(PhysicalType t, const uint8_t* p, size_t n, size_t count, ColumnValues& out,
                                  const std::string& where) {
  if (t != PhysicalType::kInt32 && t != PhysicalType::kInt64)
    fail("{}: DELTA_BINARY_PACKED is not valid for {}", where, type_name(t));
  const uint8_t* const begin = p;
  const uint8_t* const end = p + n;
  const uint64_t block = read_uleb128(p, end, where);
  const uint64_t minis = read_uleb128(p, end, where);
  const uint64_t total = read_uleb128(p, end, where);
  uint64_t value = static_cast<uint64_t>(unzigzag(read_uleb128(p, end, where)));
  if (block == 0 || block % 128 != 0 || block > (1u << 20) || minis == 0 || block % minis != 0 || (block / minis) % 32 != 0)
    fail("{}: bad DELTA_BINARY_PACKED block header ({} values, {} miniblocks)", where, block, minis);
  if (total < count) fail("{}: DELTA_BINARY_PACKED holds {} values, the page needs {}", where, total, count);
  const bool narrow = t == PhysicalType::kInt32;
  auto emit = [&](uint64_t v) { out.ints.push_back(narrow ? static_cast<int64_t>(static_cast<int32_t>(v)) : static_cast<int64_t>(v)); };
  if (count == 0) return static_cast<size_t>(p - begin);
  emit(value);
  size_t got = 1;
  const uint64_t per_mini = block / minis;
  while (got < count) {
    const uint64_t min_delta = static_cast<uint64_t>(unzigzag(read_uleb128(p, end, where)));
    if (minis > static_cast<uint64_t>(end - p)) fail("{}: DELTA_BINARY_PACKED bit widths past the end", where);
    const uint8_t* widths = p;
    p += minis;
    for (uint64_t m = 0; m < minis && got < count; ++m) {
      const int w = widths[m];
      if (w > 64) fail("{}: DELTA_BINARY_PACKED bit width {} > 64", where, w);
      const size_t take = static_cast<size_t>(std::min<uint64_t>(per_mini, count - got));
      const uint64_t need = (static_cast<uint64_t>(take) * static_cast<uint64_t>(w) + 7) / 8;
      if (need > static_cast<uint64_t>(end - p)) fail("{}: DELTA_BINARY_PACKED miniblock past the end", where);
      for (size_t i = 0; i < take; ++i) {
        value += min_delta + get_bits(p, i * static_cast<uint64_t>(w), w);  // wraps, as the format intends
        emit(value);
      }
      got += take;
      p += std::min<uint64_t>(per_mini * static_cast<uint64_t>(w) / 8, static_cast<uint64_t>(end - p));
    }
  }
  return static_cast<size_t>(p - begin);
}

void decode_values(int32_t encoding, const uint8_t* p, size_t n, size_t count, const LeafSpec& spec,
                   const ColumnValues* dict, ColumnValues& out, const std::string& where) {
  switch (static_cast<Encoding>(encoding)) {
    case Encoding::kPlain:
      decode_plain(spec.type, spec.type_length, p, n, count, out, where);
      return;
    case Encoding::kPlainDictionary:
    case Encoding::kRleDictionary: {
      if (!dict) fail("{}: dictionary-encoded page without a dictionary page", where);
      if (count == 0) return;
      if (n < 1) fail("{}: dictionary indices truncated", where);
      std::vector<uint32_t> idx;
      idx.reserve(std::min<size_t>(count, n * 8 + 64));
      decode_rle_hybrid(p + 1, n - 1, p[0], count, idx, where);
      const size_t dict_size = dict->size(spec.type);
      for (uint32_t i : idx) {
        if (i >= dict_size) fail("{}: dictionary index {} outside the dictionary of {}", where, i, dict_size);
        out.append_from(spec.type, *dict, i);
      }
      return;
    }
    case Encoding::kRle: {
      if (spec.type != PhysicalType::kBoolean) fail("{}: RLE values are only valid for BOOLEAN", where);
      if (n < 4) fail("{}: RLE boolean length prefix truncated", where);
      const uint32_t len = read_le32(p);
      if (len > n - 4) fail("{}: RLE boolean section of {} bytes past the end of the page", where, len);
      std::vector<uint32_t> bits;
      decode_rle_hybrid(p + 4, len, 1, count, bits, where);
      for (uint32_t b : bits) out.ints.push_back(b != 0);
      return;
    }
    case Encoding::kDeltaBinaryPacked:
      decode_delta_binary_packed(spec.type, p, n, count, out, where);
      return;
    default:
      fail("{}: unsupported encoding {} ({})", where, encoding_name(encoding), encoding);
  }
}

void decode_page_v1(const PageHeader& h, const uint8_t* body, size_t n, const LeafSpec& spec,
                    const ColumnValues* dict, LeafColumn& out, const std::string& where) {
  const size_t num = static_cast<size_t>(h.data.num_values);
  const uint8_t* p = body;
  const uint8_t* const end = body + n;
  std::vector<uint32_t> tmp;
  auto levels = [&](int max_level, int32_t enc, std::vector<uint8_t>& dst, const char* kind) {
    if (max_level == 0) {
      dst.insert(dst.end(), num, 0);
      return;
    }
    if (enc != static_cast<int32_t>(Encoding::kRle))
      fail("{}: unsupported {} level encoding {} ({})", where, kind, encoding_name(enc), enc);
    if (end - p < 4) fail("{}: {} level length truncated", where, kind);
    const uint32_t len = read_le32(p);
    p += 4;
    if (len > static_cast<size_t>(end - p)) fail("{}: {} levels of {} bytes past the end of the page", where, kind, len);
    tmp.clear();
    decode_rle_hybrid(p, len, bit_width(static_cast<uint64_t>(max_level)), num, tmp, where);
    append_levels(tmp, max_level, dst, kind, where);
    p += len;
  };
  const size_t first = out.def.size();
  levels(spec.max_rep, h.data.repetition_level_encoding, out.rep, "repetition");
  levels(spec.max_def, h.data.definition_level_encoding, out.def, "definition");
  const size_t non_null = count_non_null(out.def, first, spec.max_def);
  decode_values(h.data.encoding, p, static_cast<size_t>(end - p), non_null, spec, dict, out.values, where);
}

void decode_page_v2(const PageHeader& h, const uint8_t* levels, size_t levels_n, const uint8_t* values,
                    size_t values_n, const LeafSpec& spec, const ColumnValues* dict, LeafColumn& out,
                    const std::string& where) {
  const size_t num = static_cast<size_t>(h.v2.num_values);
  const size_t rep_n = static_cast<size_t>(h.v2.repetition_levels_byte_length);
  const size_t def_n = static_cast<size_t>(h.v2.definition_levels_byte_length);
  if (rep_n + def_n != levels_n) fail("{}: level sections disagree with the page header", where);
  std::vector<uint32_t> tmp;
  auto section = [&](int max_level, const uint8_t* p, size_t len, std::vector<uint8_t>& dst, const char* kind) {
    if (max_level == 0) {
      dst.insert(dst.end(), num, 0);
      return;
    }
    tmp.clear();
    decode_rle_hybrid(p, len, bit_width(static_cast<uint64_t>(max_level)), num, tmp, where);
    append_levels(tmp, max_level, dst, kind, where);
  };
  const size_t first = out.def.size();
  section(spec.max_rep, levels, rep_n, out.rep, "repetition");
  section(spec.max_def, levels + rep_n, def_n, out.def, "definition");
  const size_t non_null = count_non_null(out.def, first, spec.max_def);
  decode_values(h.v2.encoding, values, values_n, non_null, spec, dict, out.values, where);
}

}  // namespace ftune::parquet

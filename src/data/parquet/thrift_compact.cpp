// Thrift compact protocol: ULEB128 varints, zigzag integers, field-id deltas, and bounded skipping
// of fields this reader does not know (statistics, encryption, indexes).
#include "data/parquet/thrift_compact.h"

#include <cstring>

#include "core/error.h"

namespace ftune::parquet {

void ThriftReader::corrupt(const std::string& what) const {
  fail("{}: corrupt Thrift metadata at byte {}: {}", label_, position(), what);
}

void ThriftReader::enter() {
  if (++depth_ > kMaxDepth) corrupt("nesting deeper than " + std::to_string(kMaxDepth));
}

uint8_t ThriftReader::read_byte() {
  if (p_ >= end_) corrupt("truncated");
  return *p_++;
}

uint64_t ThriftReader::read_varint() {
  uint64_t v = 0;
  for (int shift = 0; shift < 70; shift += 7) {
    const uint8_t b = read_byte();
    if (shift == 63 && (b & 0x7e)) corrupt("varint overflows 64 bits");
    v |= static_cast<uint64_t>(b & 0x7f) << shift;
    if (!(b & 0x80)) return v;
  }
  corrupt("varint longer than 10 bytes");
}

int64_t ThriftReader::read_zigzag() {
  const uint64_t v = read_varint();
  return static_cast<int64_t>(v >> 1) ^ -static_cast<int64_t>(v & 1);
}

int32_t ThriftReader::read_i32() {
  const int64_t v = read_zigzag();
  if (v < INT32_MIN || v > INT32_MAX) corrupt("i32 out of range");
  return static_cast<int32_t>(v);
}

double ThriftReader::read_double() {
  if (remaining() < 8) corrupt("truncated double");
  double d;
  std::memcpy(&d, p_, 8);  // little-endian host, as the wire format
  p_ += 8;
  return d;
}

std::string ThriftReader::read_binary() {
  const uint64_t n = read_varint();
  if (n > remaining()) corrupt("string length " + std::to_string(n) + " past the end");
  std::string s(reinterpret_cast<const char*>(p_), static_cast<size_t>(n));
  p_ += n;
  return s;
}

void ThriftReader::struct_begin() {
  enter();
  last_id_.push_back(0);
}

void ThriftReader::struct_end() {
  last_id_.pop_back();
  --depth_;
}

bool ThriftReader::next_field(FieldHeader& h) {
  const uint8_t b = read_byte();
  const uint8_t type = b & 0x0f;
  if (type == 0) {
    if (b != 0) corrupt("bad STOP byte");
    return false;
  }
  if (type > static_cast<uint8_t>(TType::kStruct)) corrupt("unknown field type " + std::to_string(type));
  const int delta = b >> 4;
  int64_t id;
  if (delta) {
    id = static_cast<int64_t>(last_id_.back()) + delta;
  } else {
    id = read_zigzag();
  }
  if (id < INT16_MIN || id > INT16_MAX) corrupt("field id out of range");
  h.id = static_cast<int16_t>(id);
  h.type = static_cast<TType>(type);
  last_id_.back() = h.id;
  return true;
}

ListHeader ThriftReader::list_begin() {
  enter();
  const uint8_t b = read_byte();
  ListHeader l;
  const uint8_t t = b & 0x0f;
  if (t == 0 || t > static_cast<uint8_t>(TType::kStruct)) corrupt("bad list element type");
  l.elem = static_cast<TType>(t);
  uint64_t n = b >> 4;
  if (n == 15) n = read_varint();
  // Every element takes at least one byte, so a count past the bytes left is a lie.
  if (n > remaining()) corrupt("list of " + std::to_string(n) + " elements past the end");
  l.size = static_cast<uint32_t>(n);
  return l;
}

bool ThriftReader::field_bool(const FieldHeader& h) {
  if (h.type == TType::kTrue) return true;
  if (h.type == TType::kFalse) return false;
  corrupt("field " + std::to_string(h.id) + " is not a bool");
}

void ThriftReader::expect(const FieldHeader& h, TType t) {
  if (h.type != t)
    corrupt("field " + std::to_string(h.id) + " has wire type " + std::to_string(static_cast<int>(h.type)) +
            ", expected " + std::to_string(static_cast<int>(t)));
}

int32_t ThriftReader::field_i32(const FieldHeader& h) {
  expect(h, TType::kI32);
  return read_i32();
}

int64_t ThriftReader::field_i64(const FieldHeader& h) {
  if (h.type != TType::kI64 && h.type != TType::kI32) expect(h, TType::kI64);
  return read_i64();
}

std::string ThriftReader::field_string(const FieldHeader& h) {
  expect(h, TType::kBinary);
  return read_binary();
}

std::vector<int32_t> ThriftReader::field_i32_list(const FieldHeader& h) {
  expect(h, TType::kList);
  const ListHeader l = list_begin();
  if (l.elem != TType::kI32) corrupt("expected a list of i32");
  std::vector<int32_t> out;
  out.reserve(l.size);
  for (uint32_t i = 0; i < l.size; ++i) out.push_back(read_i32());
  list_end();
  return out;
}

std::vector<std::string> ThriftReader::field_string_list(const FieldHeader& h) {
  expect(h, TType::kList);
  const ListHeader l = list_begin();
  if (l.elem != TType::kBinary) corrupt("expected a list of strings");
  std::vector<std::string> out;
  out.reserve(l.size);
  for (uint32_t i = 0; i < l.size; ++i) out.push_back(read_binary());
  list_end();
  return out;
}

void ThriftReader::skip(TType t) {
  switch (t) {
    case TType::kTrue:
    case TType::kFalse:
      return;  // a bool field's value lives in its header
    case TType::kByte:
      read_byte();
      return;
    case TType::kI16:
    case TType::kI32:
    case TType::kI64:
      read_varint();
      return;
    case TType::kDouble:
      read_double();
      return;
    case TType::kBinary: {
      const uint64_t n = read_varint();
      if (n > remaining()) corrupt("binary length past the end");
      p_ += n;
      return;
    }
    case TType::kList:
    case TType::kSet: {
      const ListHeader l = list_begin();
      for (uint32_t i = 0; i < l.size; ++i) {
        // Inside containers a bool is a full byte, not a header nibble.
        if (l.elem == TType::kTrue || l.elem == TType::kFalse) read_byte();
        else skip(l.elem);
      }
      list_end();
      return;
    }
    case TType::kMap: {
      enter();
      const uint64_t n = read_varint();
      if (n > remaining()) corrupt("map size past the end");
      if (n) {
        const uint8_t kv = read_byte();
        const auto kt = static_cast<TType>(kv >> 4), vt = static_cast<TType>(kv & 0x0f);
        if ((kv >> 4) == 0 || (kv >> 4) > 12 || (kv & 0x0f) == 0 || (kv & 0x0f) > 12) corrupt("bad map types");
        for (uint64_t i = 0; i < n; ++i) {
          if (kt == TType::kTrue || kt == TType::kFalse) read_byte(); else skip(kt);
          if (vt == TType::kTrue || vt == TType::kFalse) read_byte(); else skip(vt);
        }
      }
      --depth_;
      return;
    }
    case TType::kStruct: {
      struct_begin();
      FieldHeader h;
      while (next_field(h)) skip(h.type);
      struct_end();
      return;
    }
    case TType::kStop:
      break;
  }
  corrupt("cannot skip wire type " + std::to_string(static_cast<int>(t)));
}

}  // namespace ftune::parquet

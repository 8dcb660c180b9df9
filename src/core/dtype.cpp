// dtype names and sizes, and the IEEE binary16 <-> binary32 conversions (integer arithmetic
// only, so the result never depends on the floating-point environment's rounding mode).
#include "core/dtype.h"

namespace ftune {

namespace {

constexpr DType kAllDTypes[] = {DType::BOOL, DType::U8,  DType::I8,  DType::I16, DType::U16,
                                DType::F16,  DType::BF16, DType::I32, DType::U32, DType::F32,
                                DType::F64,  DType::I64, DType::U64, DType::F8_E4M3, DType::F8_E5M2};

}  // namespace

size_t dtype_size(DType t) {
  switch (t) {
    case DType::BOOL:
    case DType::U8:
    case DType::I8:
    case DType::F8_E4M3:
    case DType::F8_E5M2: return 1;
    case DType::I16:
    case DType::U16:
    case DType::F16:
    case DType::BF16: return 2;
    case DType::I32:
    case DType::U32:
    case DType::F32: return 4;
    case DType::F64:
    case DType::I64:
    case DType::U64: return 8;
  }
  return 0;  // unreachable for a valid enumerator; 0 makes any size check fail loudly
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::BOOL: return "BOOL";
    case DType::U8: return "U8";
    case DType::I8: return "I8";
    case DType::I16: return "I16";
    case DType::U16: return "U16";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::I32: return "I32";
    case DType::U32: return "U32";
    case DType::F32: return "F32";
    case DType::F64: return "F64";
    case DType::I64: return "I64";
    case DType::U64: return "U64";
    case DType::F8_E4M3: return "F8_E4M3";
    case DType::F8_E5M2: return "F8_E5M2";
  }
  return "?";
}

std::optional<DType> dtype_from_name(std::string_view s) {
  // Exact, case-sensitive match: the format spells dtypes in upper case only.
  for (DType t : kAllDTypes)
    if (s == dtype_name(t)) return t;
  return std::nullopt;
}

float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  uint32_t u;
  if (exp == 0x1f) {
    // Inf stays inf; a NaN keeps its payload and is made quiet so it cannot trap later.
    u = sign | 0x7f800000u | (man << 13) | (man ? 0x400000u : 0u);
  } else if (exp != 0) {
    u = sign | ((exp + (127 - 15)) << 23) | (man << 13);
  } else if (man == 0) {
    u = sign;
  } else {
    // Subnormal half (man * 2^-24) is a normal float: shift the leading 1 up to the hidden bit.
    uint32_t shifts = 0;
    while (!(man & 0x400u)) {
      man <<= 1;
      ++shifts;
    }
    u = sign | ((127 - 15 + 1 - shifts) << 23) | ((man & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const auto sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u)  // NaN: keep the top payload bits, force quiet so it stays a NaN
    return static_cast<uint16_t>(sign | 0x7e00u | ((abs >> 13) & 0x3ffu));
  // 65520 = 65504 + half an ulp: the tie rounds to the even neighbour, which is infinity.
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);
  if (abs >= 0x38800000u) {  // normal half range [2^-14, 65520)
    uint32_t h = (abs - ((127u - 15u) << 23)) >> 13;
    const uint32_t rest = abs & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // a carry may bump the exponent: still right
    return static_cast<uint16_t>(sign | h);
  }
  // Subnormal half: the result is value / 2^-24 rounded to nearest even. Below 2^-25 (and all
  // float subnormals) that is zero.
  const uint32_t e = abs >> 23;
  if (e < 102) return sign;
  const uint32_t m = (abs & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126 - e;  // 14..24
  uint32_t q = m >> shift;
  const uint32_t rem = m & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1);
  if (rem > half || (rem == half && (q & 1u))) ++q;  // q may reach 0x400: the smallest normal
  return static_cast<uint16_t>(sign | q);
}

}  // namespace ftune

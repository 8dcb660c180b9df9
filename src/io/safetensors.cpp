// safetensors reader (mmap; every header is untrusted and validated before any data is
// touched) and writer (byte-compatible with the reference serializer, atomic replace).
#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/ranges.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <string_view>
#include <utility>

#include "core/error.h"

namespace ftune {

static_assert(std::endian::native == std::endian::little,
              "tensor data is stored little-endian and copied as is");

struct SafetensorsFile::Mapping {
  void* addr = nullptr;
  size_t size = 0;
  Mapping() = default;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() {
    if (addr) munmap(addr, size);
  }
};

SafetensorsFile::SafetensorsFile(SafetensorsFile&&) noexcept = default;
SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&&) noexcept = default;
SafetensorsFile::~SafetensorsFile() = default;

namespace {

// ordered_json keeps header order, which tensors() promises.
using ojson = nlohmann::ordered_json;

constexpr uint64_t kMaxHeaderBytes = 100'000'000;
// header object > tensor entry > shape / data_offsets array: anything deeper is malformed, and
// refusing it early keeps a hostile header from building deep (recursively freed) JSON trees.
constexpr int kMaxDepth = 3;
constexpr size_t kMaxQuoted = 160;

// Owns a POSIX file descriptor.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

// Removes a temporary file unless the write that owns it succeeded.
class TmpFile {
 public:
  explicit TmpFile(std::string path) : path_(std::move(path)) {}
  TmpFile(const TmpFile&) = delete;
  TmpFile& operator=(const TmpFile&) = delete;
  ~TmpFile() {
    if (!kept_) ::unlink(path_.c_str());
  }
  void keep() { kept_ = true; }

 private:
  std::string path_;
  bool kept_ = false;
};

// Text taken from a file goes into one-line error messages: escape control characters and cap
// the length so a hostile name cannot break the line or flood the terminal.
std::string printable(std::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (out.size() >= kMaxQuoted && (c & 0xc0) != 0x80) {  // cut between characters, not inside one
      out += "...";
      break;
    }
    if (c == '\n') out += "\\n";
    else if (c == '\t') out += "\\t";
    else if (c == '\r') out += "\\r";
    else if (c < 0x20 || c == 0x7f) out += fmt::format("\\x{:02x}", c);
    else out += static_cast<char>(c);
  }
  return out;
}

std::string brief(const ojson& v) { return printable(v.dump(-1, ' ', false, ojson::error_handler_t::replace)); }

uint64_t load_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// Offset of the first byte that is not part of well-formed UTF-8 (RFC 3629), or of a NUL
// (the JSON library would take a raw NUL for the end of input); npos when clean.
size_t bad_utf8_at(const uint8_t* p, size_t n) {
  size_t i = 0;
  while (i < n) {
    const uint8_t c = p[i];
    if (c != 0 && c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    uint8_t lo = 0x80, hi = 0xbf;  // allowed range of the second byte
    if (c >= 0xc2 && c <= 0xdf) {
      len = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
      len = 3;
      if (c == 0xe0) lo = 0xa0;  // overlong
      if (c == 0xed) hi = 0x9f;  // surrogates
    } else if (c >= 0xf0 && c <= 0xf4) {
      len = 4;
      if (c == 0xf0) lo = 0x90;  // overlong
      if (c == 0xf4) hi = 0x8f;  // beyond U+10FFFF
    } else {
      return i;
    }
    if (n - i < len || p[i + 1] < lo || p[i + 1] > hi) return i;
    for (size_t k = 2; k < len; ++k)
      if ((p[i + k] & 0xc0) != 0x80) return i;
    i += len;
  }
  return std::string_view::npos;
}

// Safetensors dtypes that ftune does not read, so that an error can say "unsupported" rather
// than "unknown" for a well-formed file from a newer writer.
bool is_other_safetensors_dtype(std::string_view s) {
  for (std::string_view k : {"F4", "F6_E2M3", "F6_E3M2", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "C64"})
    if (s == k) return true;
  return false;
}

// Position in the reference implementation's dtype enum, which is declared in increasing
// alignment; its writer sorts by that enum (descending), so ties of equal size follow it too.
int reference_rank(DType t) {
  switch (t) {
    case DType::BOOL: return 0;
    case DType::U8: return 1;
    case DType::I8: return 2;
    case DType::F8_E5M2: return 3;
    case DType::F8_E4M3: return 4;
    case DType::I16: return 5;
    case DType::U16: return 6;
    case DType::F16: return 7;
    case DType::BF16: return 8;
    case DType::I32: return 9;
    case DType::U32: return 10;
    case DType::F32: return 11;
    case DType::F64: return 12;
    case DType::I64: return 13;
    case DType::U64: return 14;
  }
  return -1;
}

// A JSON integer in [0, INT64_MAX]; fractional, negative and oversized numbers are refused.
bool as_index(const ojson& v, uint64_t* out) {
  if (v.is_number_unsigned()) {
    *out = v.get<uint64_t>();
    return *out <= static_cast<uint64_t>(INT64_MAX);
  }
  if (v.is_number_integer()) {
    const int64_t x = v.get<int64_t>();
    if (x < 0) return false;
    *out = static_cast<uint64_t>(x);
    return true;
  }
  return false;
}

// Parses the header text, refusing duplicate keys at every level (the JSON library would
// silently keep the last) and nesting deeper than a header can have.
ojson parse_header(const char* p, size_t n, const std::string& label) {
  std::vector<std::set<std::string>> keys;  // keys seen so far in each open object
  std::string entry;                        // top-level key whose value is being parsed
  auto cb = [&](int depth, ojson::parse_event_t ev, ojson& parsed) {
    switch (ev) {
      case ojson::parse_event_t::object_start:
      case ojson::parse_event_t::array_start:
        if (depth >= kMaxDepth) {
          if (entry.empty()) fail("{}: header nests deeper than a safetensors header can", label);
          fail("{}: tensor '{}' nests deeper than a safetensors header can", label, printable(entry));
        }
        if (ev == ojson::parse_event_t::object_start) keys.emplace_back();
        break;
      case ojson::parse_event_t::object_end:
        if (!keys.empty()) keys.pop_back();
        break;
      case ojson::parse_event_t::key: {
        const auto& k = parsed.get_ref<const std::string&>();
        if (keys.empty()) break;
        const bool fresh = keys.back().insert(k).second;
        if (keys.size() == 1) {
          if (!fresh) {
            if (k == "__metadata__") fail("{}: header has '__metadata__' twice", label);
            fail("{}: tensor '{}' appears twice in the header", label, printable(k));
          }
          entry = k;
        } else if (!fresh) {
          if (entry == "__metadata__") fail("{}: __metadata__ has the key '{}' twice", label, printable(k));
          fail("{}: tensor '{}' has the key '{}' twice", label, printable(entry), printable(k));
        }
        break;
      }
      default: break;
    }
    return true;
  };
  try {
    return ojson::parse(p, p + n, cb);
  } catch (const ojson::exception& e) {
    // Drop the library's "[json.exception...] " tag; keep its position and reason.
    std::string_view what = e.what();
    if (const size_t close = what.find("] "); close != std::string_view::npos) what.remove_prefix(close + 2);
    fail("{}: header is not valid JSON ({})", label, printable(what));
  }
}

// Checks one tensor entry of the header and returns what it describes.
TensorInfo parse_entry(const std::string& name, const ojson& v, const std::string& label) {
  const std::string who = fmt::format("{}: tensor '{}'", label, printable(name));
  if (!v.is_object()) fail("{} is {}, expected an object with dtype, shape and data_offsets", who, brief(v));
  for (auto it = v.begin(); it != v.end(); ++it)
    if (it.key() != "dtype" && it.key() != "shape" && it.key() != "data_offsets")
      fail("{} has the unexpected key '{}' (expected exactly dtype, shape and data_offsets)", who, printable(it.key()));
  for (const char* k : {"dtype", "shape", "data_offsets"})
    if (!v.contains(k)) fail("{} has no '{}' (expected exactly dtype, shape and data_offsets)", who, k);

  TensorInfo t;
  t.name = name;
  const ojson& dt = v.at("dtype");
  if (!dt.is_string()) fail("{} has dtype {}, expected a string such as \"F32\"", who, brief(dt));
  const std::string& dname = dt.get_ref<const std::string&>();
  const auto d = dtype_from_name(dname);
  if (!d) {
    if (is_other_safetensors_dtype(dname)) fail("{} has dtype {}, which ftune does not support", who, dname);
    fail("{} has unknown dtype '{}'", who, printable(dname));
  }
  t.dtype = *d;

  const ojson& sh = v.at("shape");
  if (!sh.is_array()) fail("{} has shape {}, expected an array of non-negative integers", who, brief(sh));
  uint64_t numel = 1;
  t.shape.reserve(sh.size());
  for (const auto& dim : sh) {
    uint64_t x;
    if (!as_index(dim, &x))
      fail("{} has shape {}: {} is not a non-negative integer", who, brief(sh), brief(dim));
    if (__builtin_mul_overflow(numel, x, &numel) || numel > static_cast<uint64_t>(INT64_MAX))
      fail("{} has shape {}, whose element count overflows a 64-bit integer", who, brief(sh));
    t.shape.push_back(static_cast<int64_t>(x));
  }

  const ojson& off = v.at("data_offsets");
  if (!off.is_array() || off.size() != 2 || !as_index(off[0], &t.begin) || !as_index(off[1], &t.end))
    fail("{} has data_offsets {}, expected [begin, end] with non-negative integers", who, brief(off));
  if (t.begin > t.end) fail("{} has data_offsets [{}, {}], which end before they begin", who, t.begin, t.end);
  uint64_t need;
  if (__builtin_mul_overflow(numel, static_cast<uint64_t>(dtype_size(t.dtype)), &need))
    fail("{} has shape {}, whose byte size overflows a 64-bit integer", who, brief(sh));
  if (t.end - t.begin != need)
    fail("{} has data_offsets [{}, {}] but {} {} needs {} bytes", who, t.begin, t.end, dtype_name(t.dtype),
         shape_str(t.shape), need);
  return t;
}

// Writes all of [p, p+n) to fd, retrying short writes and interrupts; false with errno on failure.
bool write_all(int fd, const uint8_t* p, size_t n) {
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

}  // namespace

SafetensorsFile SafetensorsFile::from_bytes(const uint8_t* data, size_t size, const std::string& label) {
  SafetensorsFile f;
  f.path_ = label;
  if (size < 8) fail("{}: file is {} bytes, too short for a safetensors header (8-byte length + JSON)", label, size);
  const uint64_t n = load_u64_le(data);
  if (n > kMaxHeaderBytes)
    fail("{}: header length {} exceeds the limit of {} bytes (not a safetensors file?)", label, n, kMaxHeaderBytes);
  if (n > size - 8) fail("{}: header length {} exceeds the {} bytes after the length field (truncated file?)", label, n, size - 8);
  const uint8_t* hp = data + 8;
  if (n == 0 || hp[0] != '{')
    fail("{}: header does not start with '{{' (not a safetensors file?)", label);
  if (const size_t bad = bad_utf8_at(hp, n); bad != std::string_view::npos) {
    if (hp[bad] == 0) fail("{}: header has a NUL byte at byte {} (only JSON and space padding may follow '{{')", label, bad);
    fail("{}: header is not valid UTF-8 (byte {} of the header is 0x{:02x})", label, bad, hp[bad]);
  }
  const ojson j = parse_header(reinterpret_cast<const char*>(hp), n, label);
  if (!j.is_object()) fail("{}: header is not a JSON object", label);

  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const ojson& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) fail("{}: __metadata__ is {}, expected an object of strings", label, brief(v));
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string())
          fail("{}: __metadata__ value of '{}' is {}, expected a string", label, printable(m.key()), brief(m.value()));
        f.metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    f.index_[name] = f.tensors_.size();
    f.tensors_.push_back(parse_entry(name, v, label));
  }

  // The tensors must tile the data section exactly, in offset order: no holes, no overlaps.
  std::vector<const TensorInfo*> order;
  order.reserve(f.tensors_.size());
  for (const auto& t : f.tensors_) order.push_back(&t);
  std::sort(order.begin(), order.end(),
            [](const TensorInfo* a, const TensorInfo* b) { return std::tie(a->begin, a->end) < std::tie(b->begin, b->end); });
  uint64_t cur = 0;
  const TensorInfo* prev = nullptr;
  for (const TensorInfo* t : order) {
    if (t->begin > cur) {
      fail("{}: tensor '{}' has data_offsets [{}, {}] but the bytes from {} are covered by no tensor (a hole in the data section)",
           label, printable(t->name), t->begin, t->end, cur);
    }
    if (t->begin < cur) {
      fail("{}: tensor '{}' has data_offsets [{}, {}], which overlap tensor '{}' at [{}, {}]", label,
           printable(t->name), t->begin, t->end, printable(prev->name), prev->begin, prev->end);
    }
    cur = t->end;
    prev = t;
  }
  const uint64_t data_size = size - 8 - n;
  if (cur != data_size) {
    fail("{}: file is {} bytes but its header describes {} (8 + {}-byte header + {} data bytes) ({})", label, size,
         8 + n + cur, n, cur, cur > data_size ? "truncated file?" : "trailing bytes after the last tensor");
  }
  f.data_ = hp + n;
  f.data_size_ = data_size;
  return f;
}

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  const Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) fail("{}: cannot open ({})", path, std::strerror(errno));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) fail("{}: cannot stat ({})", path, std::strerror(errno));
  if (!S_ISREG(st.st_mode)) fail("{}: not a regular file", path);
  auto map = std::make_unique<Mapping>();
  const auto size = static_cast<size_t>(st.st_size);
  if (size > 0) {  // mmap refuses length 0; from_bytes rejects a short file before reading it
    void* addr = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd.get(), 0);
    if (addr == MAP_FAILED) fail("{}: cannot map ({})", path, std::strerror(errno));
    map->addr = addr;
    map->size = size;
  }
  SafetensorsFile f = from_bytes(static_cast<const uint8_t*>(map->addr), size, path);
  f.map_ = std::move(map);
  return f;
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

std::span<const uint8_t> SafetensorsFile::bytes(const TensorInfo& t) const {
  // Validation guarantees begin <= end <= data_size_ for every tensor of this file.
  FT_ASSERT(t.begin <= t.end && t.end <= data_size_);
  return {data_ + t.begin, static_cast<size_t>(t.end - t.begin)};
}

Tensor SafetensorsFile::read_f32(const std::string& name) const {
  const TensorInfo* t = find(name);
  if (!t) fail("{}: tensor '{}' is missing", path_, printable(name));
  switch (t->dtype) {
    case DType::F32:
    case DType::F16:
    case DType::BF16:
    case DType::F64: break;
    default:
      fail("{}: tensor '{}' has dtype {}, expected a floating type (F32, F16, BF16 or F64)", path_,
           printable(name), dtype_name(t->dtype));
  }
  Tensor out(t->shape);
  const size_t n = out.data.size();
  if (n == 0) return out;
  // The data section is only byte-aligned in general: read elements through memcpy.
  const uint8_t* src = data_ + t->begin;
  float* dst = out.ptr();
  switch (t->dtype) {
    case DType::F32: std::memcpy(dst, src, n * 4); break;
    case DType::F64:
      for (size_t i = 0; i < n; ++i) {
        double d;
        std::memcpy(&d, src + i * 8, 8);
        dst[i] = static_cast<float>(d);
      }
      break;
    case DType::BF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + i * 2, 2);
        dst[i] = bf16_to_f32(h);
      }
      break;
    case DType::F16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + i * 2, 2);
        dst[i] = f16_to_f32(h);
      }
      break;
    default: break;
  }
  return out;
}

void SafetensorsWriter::add(const std::string& name, DType dtype, std::vector<int64_t> shape, std::vector<uint8_t> bytes) {
  if (name == "__metadata__") fail("safetensors writer: '__metadata__' is reserved and cannot name a tensor");
  uint64_t numel = 1;
  for (int64_t d : shape) {
    if (d < 0 || __builtin_mul_overflow(numel, static_cast<uint64_t>(d), &numel) ||
        numel > static_cast<uint64_t>(INT64_MAX))
      fail("safetensors writer: tensor '{}' has invalid shape {}", printable(name), shape_str(shape));
  }
  uint64_t need;
  if (__builtin_mul_overflow(numel, static_cast<uint64_t>(dtype_size(dtype)), &need) || need != bytes.size())
    fail("safetensors writer: tensor '{}' is {} {}, which needs {} bytes, but {} were given", printable(name),
         dtype_name(dtype), shape_str(shape), numel * dtype_size(dtype), bytes.size());
  for (const auto& e : entries_)
    if (e.name == name) fail("safetensors writer: tensor '{}' was added twice", printable(name));
  entries_.push_back({name, dtype, std::move(shape), std::move(bytes)});
}

void SafetensorsWriter::add_f32(const std::string& name, const Tensor& t, DType dtype) {
  const size_t n = t.data.size();
  std::vector<uint8_t> bytes(n * dtype_size(dtype));
  if (dtype == DType::F32) {
    if (n > 0) std::memcpy(bytes.data(), t.ptr(), n * 4);
  } else if (dtype == DType::BF16 || dtype == DType::F16) {
    for (size_t i = 0; i < n; ++i) {
      const uint16_t h = dtype == DType::BF16 ? f32_to_bf16(t.data[i]) : f32_to_f16(t.data[i]);
      std::memcpy(bytes.data() + i * 2, &h, 2);
    }
  } else {
    fail("safetensors writer: tensor '{}' cannot be stored from fp32 as {} (only F32, BF16, F16)", printable(name),
         dtype_name(dtype));
  }
  add(name, dtype, t.shape, std::move(bytes));
}

// Checks the names and builds the header; `order` is the tensors' order in the data section.
std::string SafetensorsWriter::header(const std::string& path, const std::map<std::string, std::string>& metadata,
                                      std::vector<const Entry*>& order) const {
  // Strings go into JSON, which must be UTF-8; say which one is not instead of writing junk.
  const auto check_text = [&](const std::string& s, const char* what) {
    for (size_t i = 0; i < s.size();) {
      // NUL is legal in a JSON string (escaped); only malformed UTF-8 is refused.
      const size_t bad = bad_utf8_at(reinterpret_cast<const uint8_t*>(s.data()) + i, s.size() - i);
      if (bad == std::string_view::npos) return;
      if (s[i + bad] != '\0') fail("{}: {} '{}' is not valid UTF-8", path, what, printable(s));
      i += bad + 1;
    }
  };
  for (const auto& [k, v] : metadata) {
    check_text(k, "metadata key");
    check_text(v, "metadata value");
  }
  for (const auto& e : entries_) check_text(e.name, "tensor name");

  order.reserve(entries_.size());
  for (const auto& e : entries_) order.push_back(&e);
  std::sort(order.begin(), order.end(), [](const Entry* a, const Entry* b) {
    const int ra = reference_rank(a->dtype), rb = reference_rank(b->dtype);
    return ra != rb ? ra > rb : a->name < b->name;
  });

  std::string header = "{";
  if (!metadata.empty()) header += "\"__metadata__\":" + nlohmann::json(metadata).dump();
  uint64_t off = 0;
  for (const Entry* e : order) {
    if (header.size() > 1) header += ',';
    header += nlohmann::json(e->name).dump();
    header += fmt::format(":{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{},{}]}}", dtype_name(e->dtype),
                          fmt::join(e->shape, ","), off, off + e->bytes.size());
    off += e->bytes.size();
  }
  header += '}';
  header.append((8 - header.size() % 8) % 8, ' ');  // keeps every tensor's data 8-byte aligned
  if (header.size() > kMaxHeaderBytes)
    fail("{}: header would be {} bytes, over the {}-byte limit readers accept", path, header.size(), kMaxHeaderBytes);
  return header;
}

std::string SafetensorsWriter::to_bytes(const std::map<std::string, std::string>& metadata) const {
  std::vector<const Entry*> order;
  const std::string head = header("safetensors image", metadata, order);
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(static_cast<uint64_t>(head.size()) >> (8 * i));
  out += head;
  for (const Entry* e : order)
    if (!e->bytes.empty()) out.append(reinterpret_cast<const char*>(e->bytes.data()), e->bytes.size());
  return out;
}

void SafetensorsWriter::write(const std::string& path, const std::map<std::string, std::string>& metadata) const {
  std::vector<const Entry*> order;
  const std::string header = this->header(path, metadata, order);
  // Write beside the target and rename over it, so the real name only ever holds a whole file.
  const std::string tmp = path + ".tmp";
  Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (fd.get() < 0) fail("{}: cannot create {} ({})", path, tmp, std::strerror(errno));
  TmpFile guard(tmp);
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(static_cast<uint64_t>(header.size()) >> (8 * i));
  bool ok = write_all(fd.get(), len, 8) &&
            write_all(fd.get(), reinterpret_cast<const uint8_t*>(header.data()), header.size());
  for (const Entry* e : order)
    if (ok) ok = write_all(fd.get(), e->bytes.data(), e->bytes.size());
  if (!ok || ::fsync(fd.get()) != 0) fail("{}: cannot write {} ({})", path, tmp, std::strerror(errno));
  if (::close(fd.release()) != 0) fail("{}: cannot write {} ({})", path, tmp, std::strerror(errno));
  if (::rename(tmp.c_str(), path.c_str()) != 0)
    fail("{}: cannot rename {} into place ({})", path, tmp, std::strerror(errno));
  guard.keep();
  // Persist the rename itself; a failure here leaves a complete file either way, so it is not fatal.
  const std::string parent = std::filesystem::path(path).parent_path().string();
  const Fd dir(::open(parent.empty() ? "." : parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir.get() >= 0) ::fsync(dir.get());
}

}  // namespace ftune

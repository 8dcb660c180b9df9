// safetensors reader (mmap, strict validation) and writer (reference conventions, atomic).
#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>

#include "core/error.h"

namespace ftune {

using ojson = nlohmann::ordered_json;
constexpr uint64_t kMaxHeader = 100'000'000;

struct SafetensorsFile::Mapping {
  void* addr = nullptr;
  size_t size = 0;
  ~Mapping() {
    if (addr) munmap(addr, size);
  }
};

SafetensorsFile::SafetensorsFile(SafetensorsFile&&) noexcept = default;
SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&&) noexcept = default;
SafetensorsFile::~SafetensorsFile() = default;

namespace {

// Non-negative integer that fits in int64 (JSON numbers may be negative, fractional or huge).
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

// Parses the header, refusing duplicate keys at any depth (the JSON library would keep the last).
ojson parse_header(const char* p, size_t n, const std::string& label) {
  std::vector<std::set<std::string>> seen;
  std::string dup;
  auto cb = [&](int, ojson::parse_event_t ev, ojson& parsed) {
    switch (ev) {
      case ojson::parse_event_t::object_start: seen.emplace_back(); break;
      case ojson::parse_event_t::object_end:
        if (!seen.empty()) seen.pop_back();
        break;
      case ojson::parse_event_t::key:
        if (!seen.empty() && !seen.back().insert(parsed.get<std::string>()).second && dup.empty())
          dup = parsed.get<std::string>();
        break;
      default: break;
    }
    return true;
  };
  ojson j;
  try {
    j = ojson::parse(p, p + n, cb);
  } catch (const ojson::exception& e) {
    fail("{}: header is not valid JSON ({})", label, e.what());
  }
  if (!dup.empty()) fail("{}: header has the key '{}' twice", label, dup);
  return j;
}

}  // namespace

SafetensorsFile SafetensorsFile::from_bytes(const uint8_t* data, size_t size, const std::string& label) {
  SafetensorsFile f;
  f.path_ = label;
  if (size < 8) fail("{}: file is {} bytes, too short for a safetensors header", label, size);
  uint64_t n;
  std::memcpy(&n, data, 8);
  if (n > kMaxHeader) fail("{}: header length {} exceeds the 100000000-byte limit (not a safetensors file?)", label, n);
  if (n > size - 8) fail("{}: header length {} exceeds the file size {} (truncated file?)", label, n, size);
  const char* hp = reinterpret_cast<const char*>(data + 8);
  if (n < 2 || hp[0] != '{') fail("{}: header does not start with '{{' (not a safetensors file?)", label);
  const ojson j = parse_header(hp, n, label);
  if (!j.is_object()) fail("{}: header is not a JSON object", label);

  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const ojson& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) fail("{}: __metadata__ is not an object", label);
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) fail("{}: __metadata__ value of '{}' is not a string", label, m.key());
        f.metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    if (!v.is_object()) fail("{}: tensor '{}': entry is not an object", label, name);
    if (v.size() != 3 || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets"))
      fail("{}: tensor '{}': entry must have exactly dtype, shape and data_offsets", label, name);
    TensorInfo t;
    t.name = name;
    const ojson& dt = v["dtype"];
    if (!dt.is_string()) fail("{}: tensor '{}': dtype is not a string", label, name);
    auto d = dtype_from_name(dt.get<std::string>());
    if (!d) fail("{}: tensor '{}': unknown dtype '{}'", label, name, dt.get<std::string>());
    t.dtype = *d;
    const ojson& sh = v["shape"];
    if (!sh.is_array()) fail("{}: tensor '{}': shape is not an array", label, name);
    uint64_t numel = 1;
    for (const auto& dim : sh) {
      uint64_t x;
      if (!as_index(dim, &x)) fail("{}: tensor '{}': shape {} has an entry that is not a non-negative integer", label, name, sh.dump());
      if (__builtin_mul_overflow(numel, x, &numel) || numel > static_cast<uint64_t>(INT64_MAX))
        fail("{}: tensor '{}': shape {} overflows", label, name, sh.dump());
      t.shape.push_back(static_cast<int64_t>(x));
    }
    const ojson& off = v["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !as_index(off[0], &t.begin) || !as_index(off[1], &t.end))
      fail("{}: tensor '{}': data_offsets must be two non-negative integers", label, name);
    if (t.begin > t.end) fail("{}: tensor '{}': data_offsets [{}, {}] end before they begin", label, name, t.begin, t.end);
    uint64_t need;
    if (__builtin_mul_overflow(numel, static_cast<uint64_t>(dtype_size(t.dtype)), &need))
      fail("{}: tensor '{}': shape {} overflows", label, name, sh.dump());
    if (t.end - t.begin != need)
      fail("{}: tensor '{}' has data_offsets [{}, {}] but {} {} needs {} bytes", label, name, t.begin, t.end,
           dtype_name(t.dtype), shape_str(t.shape), need);
    f.index_[name] = f.tensors_.size();
    f.tensors_.push_back(std::move(t));
  }

  // The tensors must tile the data section exactly: sorted by offset, no holes, no overlaps.
  std::vector<const TensorInfo*> order;
  for (const auto& t : f.tensors_) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](auto* a, auto* b) { return std::tie(a->begin, a->end) < std::tie(b->begin, b->end); });
  uint64_t cur = 0;
  for (const auto* t : order) {
    if (t->begin != cur)
      fail("{}: tensor '{}' starts at byte {} but the previous tensor ends at {} ({})", label, t->name, t->begin, cur,
           t->begin > cur ? "a hole" : "an overlap");
    cur = t->end;
  }
  const uint64_t data_size = size - 8 - n;
  if (cur != data_size)
    fail("{}: tensors end at byte {} of the data section but it holds {} bytes ({})", label, cur, data_size,
         cur > data_size ? "truncated file?" : "trailing bytes");
  f.data_ = data + 8 + n;
  f.data_size_ = data_size;
  return f;
}

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("{}: cannot open: {}", path, std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail("{}: not a regular file", path);
  }
  auto map = std::make_unique<Mapping>();
  map->size = static_cast<size_t>(st.st_size);
  if (map->size > 0) {
    void* addr = mmap(nullptr, map->size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (addr == MAP_FAILED) {
      ::close(fd);
      fail("{}: cannot map: {}", path, std::strerror(errno));
    }
    map->addr = addr;
  }
  ::close(fd);
  static const uint8_t kEmpty[1] = {0};
  const uint8_t* base = map->addr ? static_cast<const uint8_t*>(map->addr) : kEmpty;
  SafetensorsFile f = from_bytes(base, map->size, path);
  f.map_ = std::move(map);
  return f;
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

std::span<const uint8_t> SafetensorsFile::bytes(const TensorInfo& t) const {
  return {data_ + t.begin, static_cast<size_t>(t.end - t.begin)};
}

Tensor SafetensorsFile::read_f32(const std::string& name) const {
  const TensorInfo* t = find(name);
  if (!t) fail("{}: tensor '{}' is missing", path_, name);
  Tensor out(t->shape);
  const uint8_t* src = data_ + t->begin;
  const int64_t n = out.numel();
  switch (t->dtype) {
    case DType::F32: std::memcpy(out.ptr(), src, static_cast<size_t>(n) * 4); break;
    case DType::F64:
      for (int64_t i = 0; i < n; ++i) {
        double d;
        std::memcpy(&d, src + i * 8, 8);
        out.data[i] = static_cast<float>(d);
      }
      break;
    case DType::BF16:
    case DType::F16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + i * 2, 2);
        out.data[i] = t->dtype == DType::BF16 ? bf16_to_f32(h) : f16_to_f32(h);
      }
      break;
    default: fail("{}: tensor '{}' has dtype {}, expected a floating type", path_, name, dtype_name(t->dtype));
  }
  return out;
}

void SafetensorsWriter::add(const std::string& name, DType dtype, std::vector<int64_t> shape, std::vector<uint8_t> bytes) {
  FT_ASSERT(static_cast<uint64_t>(Tensor::count(shape)) * dtype_size(dtype) == bytes.size());
  for (const auto& e : entries_) FT_ASSERT(e.name != name);
  entries_.push_back({name, dtype, std::move(shape), std::move(bytes)});
}

void SafetensorsWriter::add_f32(const std::string& name, const Tensor& t, DType dtype) {
  const size_t n = static_cast<size_t>(t.numel());
  std::vector<uint8_t> bytes(n * dtype_size(dtype));
  if (dtype == DType::F32) {
    std::memcpy(bytes.data(), t.ptr(), n * 4);
  } else if (dtype == DType::BF16 || dtype == DType::F16) {
    for (size_t i = 0; i < n; ++i) {
      const uint16_t h = dtype == DType::BF16 ? f32_to_bf16(t.data[i]) : f32_to_f16(t.data[i]);
      std::memcpy(bytes.data() + i * 2, &h, 2);
    }
  } else {
    fail("internal error: cannot store fp32 tensor '{}' as {}", name, dtype_name(dtype));
  }
  add(name, dtype, t.shape, std::move(bytes));
}

void SafetensorsWriter::write(const std::string& path, const std::map<std::string, std::string>& metadata) const {
  std::vector<const Entry*> order;
  for (const auto& e : entries_) order.push_back(&e);
  std::sort(order.begin(), order.end(), [](const Entry* a, const Entry* b) {
    const size_t sa = dtype_size(a->dtype), sb = dtype_size(b->dtype);
    return sa != sb ? sa > sb : a->name < b->name;
  });
  std::string header = "{";
  bool first = true;
  if (!metadata.empty()) {
    nlohmann::json m(metadata);
    header += "\"__metadata__\":" + m.dump();
    first = false;
  }
  uint64_t off = 0;
  for (const Entry* e : order) {
    nlohmann::json entry;
    header += (first ? "" : ",") + nlohmann::json(e->name).dump() + ":";
    header += fmt::format("{{\"dtype\":\"{}\",\"shape\":{},\"data_offsets\":[{},{}]}}", dtype_name(e->dtype),
                          nlohmann::json(e->shape).dump(), off, off + e->bytes.size());
    off += e->bytes.size();
    first = false;
  }
  header += "}";
  header.append((8 - header.size() % 8) % 8, ' ');
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) fail("{}: cannot create", tmp);
    const uint64_t n = header.size();
    f.write(reinterpret_cast<const char*>(&n), 8);
    f.write(header.data(), static_cast<std::streamsize>(header.size()));
    for (const Entry* e : order) f.write(reinterpret_cast<const char*>(e->bytes.data()), static_cast<std::streamsize>(e->bytes.size()));
    f.flush();
    if (!f) fail("{}: write failed (disk full?)", tmp);
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) fail("{}: cannot rename into place: {}", path, ec.message());
}

}  // namespace ftune

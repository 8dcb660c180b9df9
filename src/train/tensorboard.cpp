// TFRecord framing and the few protobuf fields of tensorflow.Event that scalars need.
#include "train/tensorboard.h"

#include <fmt/format.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>

#include "core/error.h"

namespace ftune {

namespace {

constexpr std::array<uint32_t, 256> crc32c_table() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;  // reflected Castagnoli polynomial
    t[i] = c;
  }
  return t;
}

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) out += static_cast<char>((v & 0x7F) | 0x80), v >>= 7;
  out += static_cast<char>(v);
}

template <typename T>
void put_fixed(std::string& out, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));  // little-endian on every platform ftune builds for
  out.append(b, sizeof(T));
}

// Field tags: (number << 3) | wire type (0 varint, 1 fixed64, 2 length-delimited, 5 fixed32).
void put_bytes(std::string& out, int field, std::string_view bytes) {
  put_varint(out, static_cast<uint64_t>(field) << 3 | 2);
  put_varint(out, bytes.size());
  out.append(bytes);
}

double wall_time() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

uint32_t crc32c(std::string_view data) {
  static constexpr auto kTable = crc32c_table();
  uint32_t c = 0xFFFFFFFFu;
  for (unsigned char b : data) c = kTable[(c ^ b) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

uint32_t masked_crc32c(std::string_view data) {
  const uint32_t c = crc32c(data);
  return ((c >> 15) | (c << 17)) + 0xA282EAD8u;
}

EventWriter::EventWriter(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) fail("{}: cannot create: {}", dir, ec.message());
  char host[256] = "localhost";
  gethostname(host, sizeof(host) - 1);
  path_ = (std::filesystem::path(dir) /
           fmt::format("events.out.tfevents.{}.{}", static_cast<int64_t>(wall_time()), host))
              .string();
  f_ = std::fopen(path_.c_str(), "ab");
  if (!f_) fail("{}: cannot write: {}", path_, std::strerror(errno));
  std::string e;  // Event{wall_time = 1, file_version = 3}
  put_varint(e, 1 << 3 | 1), put_fixed(e, wall_time());
  put_bytes(e, 3, "brain.Event:2");
  record(e);
}

EventWriter::~EventWriter() {
  if (f_) std::fclose(f_);
}

void EventWriter::record(const std::string& event) {
  std::string len;
  put_fixed(len, static_cast<uint64_t>(event.size()));
  std::string r = len;
  put_fixed(r, masked_crc32c(len));
  r += event;
  put_fixed(r, masked_crc32c(event));
  if (std::fwrite(r.data(), 1, r.size(), f_) != r.size() || std::fflush(f_) != 0)
    fail("{}: cannot write: {}", path_, std::strerror(errno));
}

void EventWriter::scalar(const std::string& tag, int64_t step, double value) {
  std::string v;  // Summary.Value{tag = 1, simple_value = 2}
  put_bytes(v, 1, tag);
  put_varint(v, 2 << 3 | 5), put_fixed(v, static_cast<float>(value));
  std::string summary;  // Summary{value = 1}
  put_bytes(summary, 1, v);
  std::string e;  // Event{wall_time = 1, step = 2, summary = 5}
  put_varint(e, 1 << 3 | 1), put_fixed(e, wall_time());
  put_varint(e, 2 << 3 | 0), put_varint(e, static_cast<uint64_t>(step));
  put_bytes(e, 5, summary);
  record(e);
}

}  // namespace ftune

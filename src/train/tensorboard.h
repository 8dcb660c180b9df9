// TensorBoard event files: the scalars of a run (loss, lr, gradient norm, tokens/s, validation
// loss) as the `events.out.tfevents.*` records TensorBoard reads. Written here because Debian
// packages neither TensorFlow's event writer nor a CRC-32C library; the format is small: TFRecord
// framing (length, masked CRC-32C of the length, data, masked CRC-32C of the data) around
// protobuf-encoded tensorflow.Event messages (event.proto, summary.proto).
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

namespace ftune {

// CRC-32C (Castagnoli), and the masking TFRecord applies to it.
uint32_t crc32c(std::string_view data);
uint32_t masked_crc32c(std::string_view data);

class EventWriter {
 public:
  // Creates dir and a new events file in it; the first record states the file version.
  explicit EventWriter(const std::string& dir);
  ~EventWriter();
  EventWriter(const EventWriter&) = delete;
  EventWriter& operator=(const EventWriter&) = delete;
  // One scalar at a step, flushed at once (TensorBoard follows the file while the run goes).
  void scalar(const std::string& tag, int64_t step, double value);
  const std::string& path() const { return path_; }

 private:
  void record(const std::string& event);
  std::string path_;
  FILE* f_ = nullptr;
};

}  // namespace ftune

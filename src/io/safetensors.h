// safetensors: a validating, memory-mapped reader and an atomic writer.
// Format: u64 LE header length N, N bytes of JSON header, then the data section.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/tensor.h"

namespace ftune {

struct TensorInfo {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte offsets relative to the data section, end exclusive
};

// A parsed, fully validated safetensors file. Construction validates everything (header length
// bound, JSON, dtypes, shapes, offsets tile the data section without holes or overlaps, sizes,
// duplicate names, __metadata__ strings only); any failure throws ftune::Error with one line
// naming the file (and tensor where there is one).
class SafetensorsFile {
 public:
  // mmaps `path` read-only.
  static SafetensorsFile open(const std::string& path);
  // Validates an in-memory image (used by the fuzz tests); `label` names it in errors.
  // The bytes must outlive the returned object.
  static SafetensorsFile from_bytes(const uint8_t* data, size_t size, const std::string& label);

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // in header order
  const TensorInfo* find(const std::string& name) const;               // nullptr if absent
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  std::span<const uint8_t> bytes(const TensorInfo& t) const;
  // Reads a floating tensor (F32/F16/BF16/F64) converted to fp32; throws naming the file and
  // tensor for any other dtype or when the tensor is absent.
  Tensor read_f32(const std::string& name) const;

  SafetensorsFile(SafetensorsFile&&) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept;
  ~SafetensorsFile();

 private:
  SafetensorsFile() = default;
  struct Mapping;
  std::unique_ptr<Mapping> map_;   // owns the mmap when opened from a path
  const uint8_t* data_ = nullptr;  // start of the data section
  uint64_t data_size_ = 0;
  std::string path_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// Collects tensors and writes them in the conventions of the reference writer: header padded
// with spaces to a multiple of 8, compact JSON with __metadata__ first, tensors ordered by
// descending dtype alignment then name. Writes to `path.tmp` and renames over `path`.
class SafetensorsWriter {
 public:
  void add(const std::string& name, DType dtype, std::vector<int64_t> shape, std::vector<uint8_t> bytes);
  // Stores an fp32 tensor as `dtype` (F32, BF16 or F16).
  void add_f32(const std::string& name, const Tensor& t, DType dtype = DType::F32);
  void write(const std::string& path, const std::map<std::string, std::string>& metadata = {}) const;
  // The whole file as it would be written, in memory.
  std::string to_bytes(const std::map<std::string, std::string>& metadata = {}) const;

 private:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    std::vector<uint8_t> bytes;
  };
  std::string header(const std::string& path, const std::map<std::string, std::string>& metadata,
                     std::vector<const Entry*>& order) const;
  std::vector<Entry> entries_;
};

}  // namespace ftune

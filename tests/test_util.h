// Shared helpers for the tests: relative error, random tensors, temp directories.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/rng.h"
#include "io/safetensors.h"
#include "core/tensor.h"

namespace ftune::testing {

// log-softmax of one row of logits at `token`, in double.
inline double log_softmax(const float* l, int64_t V, int32_t token) {
  const double mx = *std::max_element(l, l + V);
  double s = 0;
  for (int64_t i = 0; i < V; ++i) s += std::exp(static_cast<double>(l[i]) - mx);
  return static_cast<double>(l[token]) - mx - std::log(s);
}

// ||a - b|| / ||b|| in double.
template <typename A, typename B>
double rel_err(const A& a, const B& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    const double d = static_cast<double>(a[i]) - static_cast<double>(b[i]);
    num += d * d;
    den += static_cast<double>(b[i]) * static_cast<double>(b[i]);
  }
  return std::sqrt(num / (den > 0 ? den : 1.0));
}

inline std::vector<uint16_t> to_bf16(const std::vector<float>& v) {
  std::vector<uint16_t> o(v.size());
  for (size_t i = 0; i < v.size(); ++i) o[i] = f32_to_bf16(v[i]);
  return o;
}

inline std::vector<float> from_bf16(const std::vector<uint16_t>& v) {
  std::vector<float> o(v.size());
  for (size_t i = 0; i < v.size(); ++i) o[i] = bf16_to_f32(v[i]);
  return o;
}

// An I64 [rows, cols] tensor of a golden file (token ids, labels) as int32 rows.
inline std::vector<std::vector<int32_t>> i64_rows(const SafetensorsFile& f, const std::string& name) {
  const TensorInfo* t = f.find(name);
  if (!t || t->dtype != DType::I64 || t->shape.size() != 2) throw std::runtime_error(name + ": not an I64 matrix");
  const auto bytes = f.bytes(*t);
  const int64_t rows = t->shape[0], cols = t->shape[1];
  std::vector<std::vector<int32_t>> out(rows, std::vector<int32_t>(cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      int64_t v;
      std::memcpy(&v, bytes.data() + (r * cols + c) * 8, 8);
      out[r][c] = static_cast<int32_t>(v);
    }
  return out;
}

// n draws of N(mean, 1).
inline std::vector<float> randn(size_t n, uint64_t seed, float mean = 0.0f) {
  Rng r(seed);
  std::vector<float> v(n);
  for (float& x : v) x = mean + r.normal();
  return v;
}

inline void fill_normal(Tensor& t, uint64_t seed, float std = 1.0f) {
  Rng r(seed);
  for (float& x : t.data) x = std * r.normal();
}

// A fresh empty directory under the system temp dir, removed by the destructor.
class TempDir {
 public:
  explicit TempDir(const std::string& tag) {
    Rng r(reinterpret_cast<uintptr_t>(this) ^ static_cast<uint64_t>(std::time(nullptr)));
    path_ = std::filesystem::temp_directory_path() / ("ftune-test-" + tag + "-" + std::to_string(r.next_u64() % 1000000007));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string str() const { return path_.string(); }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

}  // namespace ftune::testing

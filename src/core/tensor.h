// Host fp32 tensor: the currency of the CPU reference backend. Row-major, owns its data.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

namespace ftune {

struct Tensor {
  std::vector<int64_t> shape;
  std::vector<float> data;

  Tensor() = default;
  explicit Tensor(std::vector<int64_t> s) : shape(std::move(s)), data(count(shape), 0.0f) {}

  static int64_t count(const std::vector<int64_t>& s) {
    int64_t n = 1;
    for (int64_t d : s) n *= d;
    return n;
  }
  int64_t numel() const { return static_cast<int64_t>(data.size()); }
  int64_t dim(size_t i) const { return shape.at(i); }
  int64_t rows() const { return shape.empty() ? 1 : numel() / shape.back(); }
  int64_t cols() const { return shape.empty() ? 1 : shape.back(); }
  float* ptr() { return data.data(); }
  const float* ptr() const { return data.data(); }
  bool empty() const { return data.empty(); }
  void zero() { std::fill(data.begin(), data.end(), 0.0f); }
};

std::string shape_str(const std::vector<int64_t>& shape);

}  // namespace ftune

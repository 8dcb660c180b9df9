// A training state as named arrays and integers: what a backend or an optimizer saves into a
// checkpoint and takes back on resume. Readers fail with the missing or mis-sized name, so a
// checkpoint of another model, adapter or optimizer is refused rather than half loaded.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/error.h"

namespace ftune {

struct StateDict {
  std::map<std::string, std::vector<float>> f32;
  std::map<std::string, std::vector<uint8_t>> u8;
  std::map<std::string, int64_t> ints;

  // The array `name`, which must hold `n` elements (n < 0: any size).
  const std::vector<float>& f32_of(const std::string& name, int64_t n = -1) const { return find(f32, name, n); }
  const std::vector<uint8_t>& u8_of(const std::string& name, int64_t n = -1) const { return find(u8, name, n); }
  int64_t int_of(const std::string& name) const {
    const auto it = ints.find(name);
    if (it == ints.end()) fail("checkpoint: '{}' is missing (a checkpoint of another model or optimizer)", name);
    return it->second;
  }

 private:
  template <typename T>
  static const std::vector<T>& find(const std::map<std::string, std::vector<T>>& m, const std::string& name,
                                    int64_t n) {
    const auto it = m.find(name);
    if (it == m.end()) fail("checkpoint: '{}' is missing (a checkpoint of another model or optimizer)", name);
    if (n >= 0 && it->second.size() != static_cast<size_t>(n))
      fail("checkpoint: '{}' holds {} values where this run has {} (a checkpoint of another model or optimizer)", name,
           it->second.size(), n);
    return it->second;
  }
};

}  // namespace ftune

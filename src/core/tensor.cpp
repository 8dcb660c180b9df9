// Small helpers for Tensor.
#include "core/tensor.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace ftune {

std::string shape_str(const std::vector<int64_t>& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

}  // namespace ftune

// Small elementwise helpers on the GPU (fp32): y += x.
#pragma once
#include <cstdint>

#include "ops/cuda/context.h"

namespace ftune::cuda {

void add_inplace(const Context& ctx, float* y, const float* x, int64_t n);

}  // namespace ftune::cuda

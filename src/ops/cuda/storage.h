// How a device tensor's elements are stored (the math is fp32 either way).
#pragma once

namespace ftune::cuda {

enum class Storage { F32, BF16 };

}  // namespace ftune::cuda

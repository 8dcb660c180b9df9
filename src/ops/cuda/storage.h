// How a device tensor's elements are stored (the math is fp32 either way).
#pragma once

namespace ftune::cuda {

enum class Storage { F32, BF16, F16 };

inline int storage_bytes(Storage s) { return s == Storage::F32 ? 4 : 2; }

}  // namespace ftune::cuda

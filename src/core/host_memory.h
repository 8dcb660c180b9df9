// The host memory a run may still take: MemAvailable of /proc/meminfo (the kernel's estimate of
// what can be allocated without swapping), for the GPU model's refusal of pinned host buffers that
// would not fit and for `ftune plan`'s check of the host it runs on.
#pragma once
#include <cstddef>
#include <string>

namespace ftune {

// Bytes; 0 where it cannot be read (then no limit is applied).
size_t host_memory_available();
// The same from a meminfo text (its "MemAvailable: N kB" line; 0 without one).
size_t mem_available_of(const std::string& meminfo);

}  // namespace ftune

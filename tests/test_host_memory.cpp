// The host memory ftune's plan and GPU model check against: MemAvailable of /proc/meminfo.
#include <gtest/gtest.h>

#include "core/host_memory.h"

namespace ftune {
namespace {

TEST(HostMemory, ReadsMemAvailableInKilobytes) {
  const std::string meminfo =
      "MemTotal:       131961976 kB\nMemFree:         1048576 kB\nMemAvailable:   131447372 kB\nBuffers: 4 kB\n";
  EXPECT_EQ(mem_available_of(meminfo), size_t{131447372} * 1024);
  // MemFree alone is not what can be allocated: without MemAvailable there is no limit (0).
  EXPECT_EQ(mem_available_of("MemTotal: 100 kB\nMemFree: 50 kB\n"), 0u);
  EXPECT_EQ(mem_available_of("MemAvailable: lots\n"), 0u);
  EXPECT_EQ(mem_available_of(""), 0u);
}

TEST(HostMemory, ThisMachineHasSome) {
  const size_t avail = host_memory_available();
  if (avail == 0) GTEST_SKIP() << "no /proc/meminfo here";
  EXPECT_GT(avail, size_t{64} << 20);  // any machine that builds ftune has more than 64 MiB free
}

}  // namespace
}  // namespace ftune

#include "core/host_memory.h"

#include <fstream>
#include <sstream>

namespace ftune {

size_t mem_available_of(const std::string& meminfo) {
  std::istringstream in(meminfo);
  for (std::string line; std::getline(in, line);)
    if (line.rfind("MemAvailable:", 0) == 0) {
      try {
        return static_cast<size_t>(std::stoull(line.substr(13))) * 1024;
      } catch (const std::exception&) {
        return 0;
      }
    }
  return 0;
}

size_t host_memory_available() {
  std::ifstream f("/proc/meminfo");
  std::stringstream s;
  s << f.rdbuf();
  return mem_available_of(s.str());
}

}  // namespace ftune

// NVML through dlopen: the CUDA toolkit here ships no nvml.h and a binary linked against
// libnvidia-ml would not start on machines without the driver (CI), so the few entry points and
// the process record are declared as NVML's C ABI defines them (nvml.h, nvmlProcessInfo_v2_t).
#include "gpu/process_memory.h"

#include <cuda_runtime.h>
#include <dlfcn.h>
#include <unistd.h>

#include <vector>

namespace ftune {

namespace {

struct NvmlProcess {  // nvmlProcessInfo_v2_t
  unsigned int pid;
  unsigned long long used;  // bytes
  unsigned int gpu_instance, compute_instance;
};
using NvmlDevice = void*;
using InitFn = int (*)();
using ByBusFn = int (*)(const char*, NvmlDevice*);
using ProcsFn = int (*)(NvmlDevice, unsigned int*, NvmlProcess*);
constexpr int kSuccess = 0, kInsufficientSize = 7;

}  // namespace

size_t process_device_memory(int device) {
  // Opened once per call: a few microseconds, after each step at most.
  void* lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!lib) return 0;
  size_t bytes = 0;
  auto init = reinterpret_cast<InitFn>(dlsym(lib, "nvmlInit_v2"));
  auto by_bus = reinterpret_cast<ByBusFn>(dlsym(lib, "nvmlDeviceGetHandleByPciBusId_v2"));
  auto procs = reinterpret_cast<ProcsFn>(dlsym(lib, "nvmlDeviceGetComputeRunningProcesses_v3"));
  auto shutdown = reinterpret_cast<InitFn>(dlsym(lib, "nvmlShutdown"));
  char bus[32] = {};
  NvmlDevice dev = nullptr;
  if (init && by_bus && procs && shutdown && init() == kSuccess) {
    if (cudaDeviceGetPCIBusId(bus, sizeof(bus), device) == cudaSuccess && by_bus(bus, &dev) == kSuccess) {
      std::vector<NvmlProcess> list(64);
      unsigned int n = static_cast<unsigned int>(list.size());
      int r = procs(dev, &n, list.data());
      if (r == kInsufficientSize) {
        list.resize(n + 16);
        n = static_cast<unsigned int>(list.size());
        r = procs(dev, &n, list.data());
      }
      const unsigned int me = static_cast<unsigned int>(getpid());
      if (r == kSuccess)
        for (unsigned int i = 0; i < n; ++i)
          if (list[i].pid == me) bytes += list[i].used;
    }
    shutdown();
  }
  dlclose(lib);
  return bytes;
}

}  // namespace ftune

// The device memory this process holds on its GPU, as nvidia-smi reports it per process (NVML's
// compute-process list): the CUDA context, cuBLAS and NCCL buffers and every allocation. Unlike
// cudaMemGetInfo it does not count the other processes on the same GPU, so it measures one rank
// when several ranks share a device.
#pragma once
#include <cstddef>

namespace ftune {

// Bytes this process holds on CUDA device `device`; 0 when NVML (the driver's libnvidia-ml.so.1)
// cannot tell (no driver library, or a platform that hides per-process use).
size_t process_device_memory(int device);

}  // namespace ftune

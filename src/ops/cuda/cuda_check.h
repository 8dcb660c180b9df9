// Checked CUDA and cuBLAS calls: a failure becomes an ftune::Error naming the call and site.
#pragma once
#include <cublasLt.h>
#include <cuda_runtime.h>

#include "core/error.h"

#define FT_CUDA(call)                                                                             \
  do {                                                                                            \
    cudaError_t err_ = (call);                                                                    \
    if (err_ != cudaSuccess)                                                                      \
      ::ftune::fail("CUDA error {} ({}) in {} at {}:{}", static_cast<int>(err_),                  \
                    cudaGetErrorString(err_), #call, __FILE__, __LINE__);                         \
  } while (0)

#define FT_CUBLAS(call)                                                                           \
  do {                                                                                            \
    cublasStatus_t st_ = (call);                                                                  \
    if (st_ != CUBLAS_STATUS_SUCCESS)                                                             \
      ::ftune::fail("cuBLAS error {} in {} at {}:{}", static_cast<int>(st_), #call, __FILE__, __LINE__); \
  } while (0)

// After a kernel launch: launch-configuration errors surface here, at the launch site.
#define FT_CUDA_LAUNCH() FT_CUDA(cudaGetLastError())

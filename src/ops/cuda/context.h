// The CUDA context object: device, stream, cuBLASLt handle and workspace, owned with RAII and
// passed to every launcher (no globals).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "ops/cuda/device_buffer.h"

typedef struct CUstream_st* cudaStream_t;
typedef struct cublasLtContext* cublasLtHandle_t;

namespace ftune::cuda {

struct GemmCache;  // gemm.cu: planned cuBLASLt problems
struct GemmCacheDeleter {
  void operator()(GemmCache* c) const;
};

// Number of CUDA devices visible, 0 when there is no driver or no GPU (never throws).
int device_count();
// Free and total memory of the current device, in bytes; and total - free.
void memory_info(size_t& free, size_t& total);
size_t memory_in_use();

class Context {
 public:
  explicit Context(int device = 0, size_t workspace_bytes = 32u << 20);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  int device() const { return device_; }
  int sm_version() const { return sm_; }  // e.g. 90 for sm_90
  std::string name() const { return name_; }
  cudaStream_t stream() const { return stream_; }
  // A second stream for copies that overlap the compute stream (paged optimizer states).
  cudaStream_t side_stream() const { return side_; }
  cublasLtHandle_t blas() const { return blas_; }
  void* workspace() const { return workspace_.data(); }
  size_t workspace_bytes() const { return workspace_.bytes(); }
  void synchronize() const;
  // Stream-ordered device-to-device copy and zero fill.
  void copy(void* dst, const void* src, size_t bytes) const;
  void zero(void* dst, size_t bytes) const;
  GemmCache& gemm_cache() const;
  // Whether GEMM problems planned from now on time cuBLASLt's candidate algorithms on their first
  // calls and keep the fastest (gemm.cu); off: the heuristic's first choice, bitwise run to run.
  void set_gemm_tuning(bool on) { gemm_tuning_ = on; }
  bool gemm_tuning() const { return gemm_tuning_; }

 private:
  int device_ = 0;
  int sm_ = 0;
  std::string name_;
  cudaStream_t stream_ = nullptr;
  cudaStream_t side_ = nullptr;
  cublasLtHandle_t blas_ = nullptr;
  DeviceBuffer workspace_;
  bool gemm_tuning_ = false;
  mutable std::unique_ptr<GemmCache, GemmCacheDeleter> gemm_cache_;  // declared last: freed first
};

}  // namespace ftune::cuda

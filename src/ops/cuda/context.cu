// CUDA context, device buffers and pinned host buffers.
#include "ops/cuda/context.h"
#include "ops/cuda/cuda_check.h"

namespace ftune::cuda {

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return n;
}

void memory_info(size_t& free, size_t& total) { FT_CUDA(cudaMemGetInfo(&free, &total)); }

size_t memory_in_use() {
  size_t free = 0, total = 0;
  memory_info(free, total);
  return total - free;
}

Context::Context(int device, size_t workspace_bytes) : device_(device) {
  FT_CUDA(cudaSetDevice(device));
  cudaDeviceProp prop{};
  FT_CUDA(cudaGetDeviceProperties(&prop, device));
  sm_ = prop.major * 10 + prop.minor;
  name_ = prop.name;
  FT_CUDA(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  FT_CUDA(cudaStreamCreateWithFlags(&side_, cudaStreamNonBlocking));
  FT_CUBLAS(cublasLtCreate(&blas_));
  workspace_ = DeviceBuffer(workspace_bytes);
}

Context::~Context() {
  if (blas_) cublasLtDestroy(blas_);
  if (side_) cudaStreamDestroy(side_);
  if (stream_) cudaStreamDestroy(stream_);
}

void Context::synchronize() const { FT_CUDA(cudaStreamSynchronize(stream_)); }

void Context::copy(void* dst, const void* src, size_t bytes) const {
  if (bytes) FT_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_));
}

void Context::zero(void* dst, size_t bytes) const {
  if (bytes) FT_CUDA(cudaMemsetAsync(dst, 0, bytes, stream_));
}

DeviceBuffer::DeviceBuffer(size_t bytes) : bytes_(bytes) {
  if (bytes) FT_CUDA(cudaMalloc(&ptr_, bytes));
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_) cudaFree(ptr_);
}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    if (ptr_) cudaFree(ptr_);
    ptr_ = o.ptr_;
    bytes_ = o.bytes_;
    o.ptr_ = nullptr;
    o.bytes_ = 0;
  }
  return *this;
}

void DeviceBuffer::upload_at(size_t offset, const void* host, size_t bytes) {
  FT_ASSERT(offset <= bytes_ && bytes <= bytes_ - offset);
  FT_CUDA(cudaMemcpy(static_cast<char*>(ptr_) + offset, host, bytes, cudaMemcpyHostToDevice));
  // From pageable memory cudaMemcpy may return before its DMA lands, and the context's
  // non-blocking streams do not wait for the legacy stream: finish the copy here.
  FT_CUDA(cudaStreamSynchronize(cudaStreamLegacy));
}

void DeviceBuffer::download_at(size_t offset, void* host, size_t bytes) const {
  FT_ASSERT(offset <= bytes_ && bytes <= bytes_ - offset);
  FT_CUDA(cudaMemcpy(host, static_cast<const char*>(ptr_) + offset, bytes, cudaMemcpyDeviceToHost));
}

PinnedBuffer::PinnedBuffer(size_t bytes) : bytes_(bytes) {
  if (bytes) FT_CUDA(cudaHostAlloc(&ptr_, bytes, cudaHostAllocDefault));
}

PinnedBuffer::~PinnedBuffer() {
  if (ptr_) cudaFreeHost(ptr_);
}

PinnedBuffer& PinnedBuffer::operator=(PinnedBuffer&& o) noexcept {
  if (this != &o) {
    if (ptr_) cudaFreeHost(ptr_);
    ptr_ = o.ptr_, bytes_ = o.bytes_;
    o.ptr_ = nullptr, o.bytes_ = 0;
  }
  return *this;
}

}  // namespace ftune::cuda

// Device and pinned host memory owned by RAII handles, sized in elements (64-bit), never managed
// memory. Growing reallocates only when the request exceeds the capacity, so one engine reuses its
// buffers from layer to layer.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <utility>

#include "kernels/cuda_check.hpp"

namespace duquant::kernels {

template <typename T, cudaError_t (*Allocate)(void**, std::size_t), cudaError_t (*Free)(void*)>
class CudaBuffer {
 public:
  CudaBuffer() = default;
  CudaBuffer(const CudaBuffer&) = delete;
  CudaBuffer& operator=(const CudaBuffer&) = delete;
  CudaBuffer(CudaBuffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  ~CudaBuffer() { Free(p_); }

  // At least `count` elements; contents are not kept.
  T* reserve(std::size_t count, const Stage& stage) {
    if (count > n_) {
      Free(p_);
      p_ = nullptr;
      n_ = 0;
      void* p = nullptr;
      check(Allocate(&p, (count ? count : 1) * sizeof(T)), stage);
      p_ = static_cast<T*>(p);
      n_ = count;
    }
    return p_;
  }
  T* get() const { return p_; }

 private:
  T* p_ = nullptr;
  std::size_t n_ = 0;
};

inline cudaError_t allocate_device(void** p, std::size_t bytes) { return cudaMalloc(p, bytes); }
inline cudaError_t free_device(void* p) { return cudaFree(p); }
inline cudaError_t allocate_pinned(void** p, std::size_t bytes) { return cudaMallocHost(p, bytes); }
inline cudaError_t free_pinned(void* p) { return cudaFreeHost(p); }

template <typename T>
using DeviceBuffer = CudaBuffer<T, allocate_device, free_device>;
template <typename T>
using PinnedBuffer = CudaBuffer<T, allocate_pinned, free_pinned>;

}  // namespace duquant::kernels

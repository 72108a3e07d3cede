// Device and pinned host memory owned by RAII handles, sized in elements (64-bit), never managed
// memory. Growing reallocates only when the request exceeds the capacity, so one engine reuses its
// buffers from layer to layer.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <utility>

#include "kernels/cuda_check.hpp"

namespace duquant::kernels {

template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  ~DeviceBuffer() { cudaFree(p_); }

  // At least `count` elements; contents are not kept.
  T* reserve(std::size_t count, const Stage& stage) {
    if (count > n_) {
      cudaFree(p_);
      p_ = nullptr;
      n_ = 0;
      check(cudaMalloc(reinterpret_cast<void**>(&p_), (count ? count : 1) * sizeof(T)), stage);
      n_ = count;
    }
    return p_;
  }
  T* get() const { return p_; }

 private:
  T* p_ = nullptr;
  std::size_t n_ = 0;
};

template <typename T>
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  ~PinnedBuffer() { cudaFreeHost(p_); }

  T* reserve(std::size_t count, const Stage& stage) {
    if (count > n_) {
      cudaFreeHost(p_);
      p_ = nullptr;
      n_ = 0;
      check(cudaMallocHost(reinterpret_cast<void**>(&p_), (count ? count : 1) * sizeof(T)), stage);
      n_ = count;
    }
    return p_;
  }
  T* get() const { return p_; }

 private:
  T* p_ = nullptr;
  std::size_t n_ = 0;
};

}  // namespace duquant::kernels

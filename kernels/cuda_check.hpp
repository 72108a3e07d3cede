// Status checks of the CUDA runtime, cuBLAS and cuSOLVER: every failure is a duquant::Error of
// kind `device` (exit 7) naming the layer, the stage and the library's own status.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <string>

#include "duquant/error.hpp"

namespace duquant::kernels {

// What a failing call was doing: "layer 'x': rotating the column blocks".
struct Stage {
  const std::string* layer = nullptr;  // null outside a layer (setting a device up)
  const char* what = "";
  std::string text() const { return layer ? fmt::format("layer '{}': {}", *layer, what) : std::string(what); }
};

inline void check(cudaError_t status, const Stage& stage) {
  if (status != cudaSuccess)
    fail(ErrorKind::device, "CUDA: {}: {} ({}, error {})", stage.text(), cudaGetErrorString(status),
         cudaGetErrorName(status), static_cast<int>(status));
}

inline void check(cublasStatus_t status, const Stage& stage) {
  if (status != CUBLAS_STATUS_SUCCESS)
    fail(ErrorKind::device, "cuBLAS: {}: {} (status {})", stage.text(), cublasGetStatusString(status),
         static_cast<int>(status));
}

inline void check(cusolverStatus_t status, const Stage& stage) {
  if (status != CUSOLVER_STATUS_SUCCESS)
    fail(ErrorKind::device, "cuSOLVER: {}: status {}", stage.text(), static_cast<int>(status));
}

}  // namespace duquant::kernels

#include "kernels/cuda_runtime_info.hpp"

#include <cuda_runtime.h>

#include "base/elementwise.hpp"
#include "duquant/error.hpp"
#include "kernels/cuda_check.hpp"

namespace duquant::kernels {
namespace {

__global__ void convert_kernel(bool is_bf16, const std::uint16_t* in, std::size_t count, float* out) {
  const std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < count) out[i] = is_bf16 ? elementwise::bf16_to_f32(in[i]) : elementwise::f16_to_f32(in[i]);
}

}  // namespace

int device_count(std::string& why) {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    why = cudaGetErrorString(status);
    cudaGetLastError();  // clear the sticky error
    return 0;
  }
  if (count == 0) why = "no CUDA device";
  return count;
}

std::string compiled_architectures() { return DUQUANT_CUDA_ARCHS; }

void convert_16bit_to_f32(bool is_bf16, const std::uint16_t* host_in, std::size_t count, float* host_out) {
  std::uint16_t* d_in = nullptr;
  float* d_out = nullptr;
  check(cudaMalloc(&d_in, count * sizeof(std::uint16_t)), Stage{nullptr, "allocating the 16-bit input"});
  const cudaError_t out_status = cudaMalloc(&d_out, count * sizeof(float));
  if (out_status != cudaSuccess) {
    cudaFree(d_in);
    check(out_status, Stage{nullptr, "allocating the float32 output"});
  }
  cudaError_t status = cudaMemcpy(d_in, host_in, count * sizeof(std::uint16_t), cudaMemcpyHostToDevice);
  if (status == cudaSuccess) {
    const unsigned threads = 256;
    const unsigned blocks = static_cast<unsigned>((count + threads - 1) / threads);
    convert_kernel<<<blocks, threads>>>(is_bf16, d_in, count, d_out);
    status = cudaGetLastError();
  }
  if (status == cudaSuccess) status = cudaMemcpy(host_out, d_out, count * sizeof(float), cudaMemcpyDeviceToHost);
  cudaFree(d_in);
  cudaFree(d_out);
  check(status, Stage{nullptr, "converting 16-bit values to float32"});
}

}  // namespace duquant::kernels

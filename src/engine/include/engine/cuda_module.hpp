// The CUDA backend is a shared module, libduquant_cuda.so, loaded only when a command asks about
// devices: cuBLAS, cuSOLVER and the CUDA runtime weigh a quarter of a gigabyte of resident memory
// once loaded, which listing, verifying or inspecting never pays. This is its one entry point.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "engine/layer_engine.hpp"

namespace duquant::kernels {

// Changed whenever CudaModule or what its functions take and return changes: a module built for
// another layout is refused on load (named, with both versions) instead of being called.
inline constexpr std::uint32_t kCudaModuleAbiVersion = 1;

struct CudaModule {
  std::uint32_t abi_version = kCudaModuleAbiVersion;
  std::uint32_t struct_size = sizeof(CudaModule);
  int (*device_count)(std::string& why);
  std::string (*compiled_architectures)();
  std::unique_ptr<LayerEngine> (*make_engine)(int device);
};

}  // namespace duquant::kernels

// Exported by libduquant_cuda.so.
extern "C" const duquant::kernels::CudaModule* duquant_cuda_module();

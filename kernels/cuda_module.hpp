// The CUDA backend is a shared module, libduquant_cuda.so, loaded only when a command asks about
// devices: cuBLAS, cuSOLVER and the CUDA runtime weigh a quarter of a gigabyte of resident memory
// once loaded, which listing, verifying or inspecting never pays. This is its one entry point.
#pragma once

#include <memory>
#include <string>

#include "duquant/layer_engine.hpp"

namespace duquant::kernels {

struct CudaModule {
  int (*device_count)(std::string& why);
  std::string (*compiled_architectures)();
  std::unique_ptr<LayerEngine> (*make_engine)(int device);
};

}  // namespace duquant::kernels

// Exported by libduquant_cuda.so.
extern "C" const duquant::kernels::CudaModule* duquant_cuda_module();

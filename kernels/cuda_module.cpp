#include "engine/cuda_module.hpp"

#include "kernels/cuda_layer_engine.hpp"
#include "kernels/cuda_runtime_info.hpp"

extern "C" __attribute__((visibility("default"))) const duquant::kernels::CudaModule* duquant_cuda_module() {
  static const duquant::kernels::CudaModule module{
      duquant::kernels::kCudaModuleAbiVersion, sizeof(duquant::kernels::CudaModule), &duquant::kernels::device_count,
      &duquant::kernels::compiled_architectures, &duquant::kernels::make_cuda_engine};
  return &module;
}

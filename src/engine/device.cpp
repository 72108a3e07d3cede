#include "engine/device.hpp"

#include <filesystem>

#include "engine/cuda_loader.hpp"

namespace duquant {

DeviceReport probe_devices() {
  DeviceReport r;
#if defined(DUQUANT_HAVE_CUDA)
  r.cuda_built = true;
  r.cuda_archs = DUQUANT_CUDA_ARCHS;
  // Without the driver's device files there is no GPU to find: the module (a quarter of a gigabyte
  // of libraries once mapped) is not loaded just to be told so.
  std::error_code ec;
  if (!std::filesystem::exists("/dev/nvidiactl", ec) && !std::filesystem::exists("/dev/dxg", ec)) {
    r.cuda_status = "no NVIDIA driver (neither /dev/nvidiactl nor /dev/dxg exists)";
    return r;
  }
  const kernels::CudaModule* module = cuda_module(r.cuda_status);
  if (module == nullptr) return r;  // no devices, the reason in cuda_status
  r.cuda_devices = module->device_count(r.cuda_status);
#else
  r.cuda_status = "this build has no CUDA backend (configure with DUQUANT_CUDA=ON)";
#endif
  return r;
}

}  // namespace duquant

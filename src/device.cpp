#include "duquant/device.hpp"

#if defined(DUQUANT_HAVE_CUDA)
#include "kernels/cuda_runtime_info.hpp"
#endif

namespace duquant {

DeviceReport probe_devices() {
  DeviceReport r;
#if defined(DUQUANT_HAVE_CUDA)
  r.cuda_built = true;
  r.cuda_archs = kernels::compiled_architectures();
  r.cuda_devices = kernels::device_count(r.cuda_status);
#else
  r.cuda_status = "this build has no CUDA backend (configure with DUQUANT_CUDA=ON)";
#endif
  return r;
}

}  // namespace duquant

// Which compute devices this build and this machine offer. Whether a GPU exists is decided at run
// time only; nothing it answers changes what a pack contains.
#pragma once

#include <cstdint>
#include <string>

namespace duquant {

struct DeviceReport {
  bool cuda_built = false;  // the binary carries the CUDA backend
  std::string cuda_archs;   // architectures compiled in, e.g. "80;90"
  int cuda_devices = 0;     // usable GPUs found now
  std::string cuda_status;  // why there are none, when there are none
};

DeviceReport probe_devices();

}  // namespace duquant

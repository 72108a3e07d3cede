// The CUDA backend module, loaded on first use (see kernels/cuda_module.hpp).
#pragma once

#include <string>

#if defined(DUQUANT_HAVE_CUDA)
#include "engine/cuda_module.hpp"
#endif

namespace duquant {

#if defined(DUQUANT_HAVE_CUDA)
// The loaded module, or null with the reason in `why`. Thread-safe; loads at most once.
const kernels::CudaModule* cuda_module(std::string& why);
#endif

}  // namespace duquant

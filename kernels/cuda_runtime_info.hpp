// Host-callable entry points of the CUDA backend (compiled by nvcc, called from C++).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace duquant::kernels {

// Number of usable devices; 0 with the reason in `why` when there are none. Any CUDA error
// (no driver, insufficient driver, no device) counts as "no GPU".
int device_count(std::string& why);

// The CUDA architectures this binary was compiled for, e.g. "80;90".
std::string compiled_architectures();

// Converts `count` BF16 (is_bf16) or F16 values to float32 on device 0, with the shared
// per-element functions of duquant/elementwise.hpp. Throws duquant::Error on any CUDA failure.
void convert_16bit_to_f32(bool is_bf16, const std::uint16_t* host_in, std::size_t count, float* host_out);

}  // namespace duquant::kernels

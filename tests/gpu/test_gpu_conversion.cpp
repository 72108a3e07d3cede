// The CUDA backend converts 16-bit floats with the same shared per-element functions as the CPU:
// every one of the 65536 BF16 and F16 inputs must give the same float32 bits on both.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "base/elementwise.hpp"
#include "gpu/gpu_test_util.hpp"
#include "kernels/cuda_runtime_info.hpp"

namespace duquant {
namespace {

void compare_all(bool is_bf16) {
  std::vector<std::uint16_t> in(65536);
  for (std::size_t i = 0; i < in.size(); ++i) in[i] = static_cast<std::uint16_t>(i);
  std::vector<float> gpu(in.size());
  kernels::convert_16bit_to_f32(is_bf16, in.data(), in.size(), gpu.data());
  for (std::size_t i = 0; i < in.size(); ++i) {
    const float cpu = is_bf16 ? elementwise::bf16_to_f32(in[i]) : elementwise::f16_to_f32(in[i]);
    ASSERT_EQ(elementwise::f32_to_bits(gpu[i]), elementwise::f32_to_bits(cpu)) << "input 0x" << std::hex << i;
  }
}

TEST(GpuConversion, Bf16MatchesCpuBitForBit) {
  DQ_REQUIRE_GPU();
  compare_all(true);
}

TEST(GpuConversion, F16MatchesCpuBitForBit) {
  DQ_REQUIRE_GPU();
  compare_all(false);
}

}  // namespace
}  // namespace duquant

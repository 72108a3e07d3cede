// A linear layer's weight read out of the checkpoint: its stored bytes copied once, converted to
// float32, and the range of values duquant packs.
#pragma once

#include <cstddef>
#include <span>
#include <vector>

#include "formats/safetensors_checkpoint.hpp"
#include "select/linear_layers.hpp"

namespace duquant {

// The range of a layer's largest |weight| that is packed (an all-zero layer is packed too); outside
// it the layer is a numeric error (exit 6). Above 1e12, float32 squares and sums over a layer can
// overflow; below 1e-15, squared errors underflow and scales lose precision.
inline constexpr float kLargestWeightMagnitude = 1e12f;
inline constexpr float kSmallestLargestWeight = 1e-15f;

// A copy of the tensor's stored bytes, taken out of the mapping once (F32, F16 or BF16 only;
// anything else is duquant::Error (format) naming the file and the tensor).
std::vector<std::byte> copy_tensor_bytes(const formats::Checkpoint& ckpt, const formats::TensorRef& t);

// The float32 weight from its stored bytes: NaN or Inf is duquant::Error (numeric) naming the layer
// and the first bad [row, column]; so is a largest |weight| outside [kSmallestLargestWeight,
// kLargestWeightMagnitude] (other than an all-zero layer).
std::vector<float> weight_from_bytes(const LinearLayer& layer, std::span<const std::byte> bytes);

// Converts the layer's weight to float32 and checks it: NaN or Inf is duquant::Error (numeric)
// naming the layer and the first bad [row, column]; so is a largest |weight| outside
// [kSmallestLargestWeight, kLargestWeightMagnitude] (other than an all-zero layer).
std::vector<float> load_weight(const formats::Checkpoint& ckpt, const LinearLayer& layer);

}  // namespace duquant

#include "select/layer_weights.hpp"

#include <cmath>
#include <cstdint>
#include <cstring>

#include "duquant/error.hpp"
#include "formats/dtype.hpp"

namespace duquant {

std::vector<float> weight_from_bytes(const LinearLayer& layer, std::span<const std::byte> bytes) {
  std::vector<float> w(layer.weight->numel);
  formats::convert_to_f32(layer.weight->dtype, bytes.data(), layer.weight->numel, w.data());
  {  // One pass that vectorizes: the largest |w| as its bits (an order on non-negative floats that
     // sees infinities and NaNs above every finite value); the checks below find the same layers.
    std::uint32_t top_bits = 0;
    for (std::size_t k = 0; k < w.size(); ++k) {
      std::uint32_t b;
      std::memcpy(&b, &w[k], sizeof b);
      b &= 0x7fffffffu;
      top_bits = b > top_bits ? b : top_bits;
    }
    float top;
    std::memcpy(&top, &top_bits, sizeof top);
    if (top_bits < 0x7f800000u && top <= kLargestWeightMagnitude && !(top > 0 && top < kSmallestLargestWeight))
      return w;  // finite and in range: nothing to name
  }
  std::size_t largest = 0;
  for (std::size_t k = 0; k < w.size(); ++k) {
    if (!std::isfinite(w[k]))
      fail(ErrorKind::numeric, "layer '{}': weight [{}, {}] is {} (stage: reading the weight; shape [{}, {}])",
           layer.name, k / layer.in_features, k % layer.in_features, w[k], layer.out_features, layer.in_features);
    if (std::abs(w[k]) > std::abs(w[largest])) largest = k;
  }
  // Magnitudes float32 math cannot carry: squares and dot products would overflow, or underflow
  // into subnormals where the scales lose their precision. No trained weight comes near either.
  const float top = w.empty() ? 0.0f : std::abs(w[largest]);
  if (top > kLargestWeightMagnitude || (top > 0 && top < kSmallestLargestWeight))
    fail(ErrorKind::numeric,
         "layer '{}': weight [{}, {}] is {:g}, the largest magnitude of the layer, {} (stage: reading "
         "the weight; shape [{}, {}]; duquant packs layers whose largest |weight| lies in [{:g}, {:g}], or all-zero "
         "layers)",
         layer.name, largest / layer.in_features, largest % layer.in_features, w[largest],
         top > kLargestWeightMagnitude ? "too large for float32 sums of squares and products"
                                       : "too small: scales and squared errors would underflow float32",
         layer.out_features, layer.in_features, kSmallestLargestWeight, kLargestWeightMagnitude);
  return w;
}

std::vector<std::byte> copy_tensor_bytes(const formats::Checkpoint& ckpt, const formats::TensorRef& t) {
  DQ_CHECK(formats::converts_to_f32(t.dtype), format,
           "{}: tensor '{}' is {}; only F32, F16 and BF16 convert to float32", ckpt.files().at(t.file).path.string(),
           t.stored_name, formats::dtype_name(t.dtype));
  const std::span<const std::byte> b = ckpt.bytes(t);
  return std::vector<std::byte>(b.begin(), b.end());
}

std::vector<float> load_weight(const formats::Checkpoint& ckpt, const LinearLayer& layer) {
  return weight_from_bytes(layer, copy_tensor_bytes(ckpt, *layer.weight));
}

}  // namespace duquant

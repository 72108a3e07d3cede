// Smoothing scales (the smoothing step of DuQuant, SmoothQuant-style) and folding them into a
// copy of the FP checkpoint (docs/calibration.md).
//
// With smoothing, a layer's runtime contract becomes y = (x / s) · (W·diag(s))ᵀ + b: the packer
// works on W·diag(s), rounded to the checkpoint's dtype (smoothed_weight), and the runtime divides
// activations by s before the pack's input transform. Layers that read the same input share one s.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "duquant/linear_layers.hpp"
#include "duquant/selection.hpp"
#include "formats/safetensors_checkpoint.hpp"

namespace duquant {

// How 1/s can be folded into the module that produces a group's input.
enum class NormKind {
  gemma_rms,  // Gemma RMSNorm, output x̂·(1 + w): w' = (1 + w)/s − 1           (tensor: <norm>.weight)
  layer_norm, // LayerNorm, output x̂·w + b: w' = w/s, b' = b/s                  (<norm>.weight, <norm>.bias)
  ada_rms,    // adaptive RMSNorm, dense(cond) = [scale | shift | gate], output x̂·(1 + scale) + shift:
              // rows of scale: W' = W/s, b' = (1 + b)/s − 1; rows of shift: W' = W/s, b' = b/s;
              // gate rows unchanged                                     (<norm>.dense.weight, .bias)
};

struct SmoothGroup {
  std::string key;                  // the input's producer, e.g. "<block>.input_layernorm"; a
                                    // layer alone in its group has its own name as key
  std::vector<std::string> layers;  // every linear of the checkpoint that reads this input, in
                                    // checkpoint order, selected or not
  std::optional<NormKind> norm;     // set when 1/s can be folded (the norm's tensors exist and fit)
  std::string norm_weight, norm_bias;  // tensor names; norm_bias empty when the kind has none
};

// The groups of the selected layers, in the order of their first selected member: q/k/v of one
// attention block (`….self_attn.{q,k,v}_proj`, norm `….input_layernorm` — Gemma RMSNorm, or
// adaptive when `….input_layernorm.dense` exists; SigLIP `….layer_norm1`), gate/up of one MLP
// (`….mlp.{gate,up}_proj`, norm `….post_attention_layernorm`), SigLIP `….mlp.fc1` (norm
// `….layer_norm2`); every other layer alone, without a norm. Members of a group have the same
// in_features (otherwise duquant::Error, format).
std::vector<SmoothGroup> smoothing_groups(const formats::Checkpoint& ckpt, const std::vector<LinearLayer>& linears,
                                          const std::vector<SelectedLayer>& selected);

// s_j = max(act_absmax_j^α / max(weight_absmax_j, 1e-5)^(1−α), 1e-5), in double, rounded to float32.
std::vector<float> smoothing_scales(std::span<const float> act_absmax, std::span<const float> weight_absmax, double alpha);

// W·diag(s) ([rows, cols] row-major float32), each product rounded to `dtype` (F32, F16 or BF16)
// and returned as float32: the weight the pack quantizes and --fold-smoothing writes.
std::vector<float> smoothed_weight(std::span<const float> w, std::int64_t rows, std::int64_t cols,
                                   std::span<const float> s, formats::DType dtype);

// Writes a copy of the checkpoint (one safetensors file, atomically) where, for every group with
// a norm and an entry in `scales` (key -> s), the norm's tensors are divided by s as NormKind says
// and every member's weight is smoothed_weight(W, s). Every other tensor is copied byte for byte,
// with its name, dtype and shape; the metadata is kept. Groups without a norm must not appear in
// `scales` (duquant::Error, internal).
void write_folded_checkpoint(const formats::Checkpoint& ckpt, const std::vector<SmoothGroup>& groups,
                             const std::map<std::string, std::vector<float>>& scales, const std::filesystem::path& out);

}  // namespace duquant

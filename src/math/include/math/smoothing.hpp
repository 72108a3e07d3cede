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

#include "formats/safetensors_checkpoint.hpp"
#include "select/linear_layers.hpp"
#include "select/selection.hpp"

namespace duquant {

// How 1/s can be folded into the module that produces a group's input.
enum class NormKind {
  gemma_rms,   // Gemma RMSNorm, output x̂·(1 + w): w' = (1 + w)/s − 1           (tensor: <norm>.weight)
  layer_norm,  // LayerNorm, output x̂·w + b: w' = w/s, b' = b/s                  (<norm>.weight, <norm>.bias)
  ada_rms,     // adaptive RMSNorm, dense(cond) = [scale | shift | gate], output x̂·(1 + scale) + shift:
               // rows of scale: W' = W/s, b' = (1 + b)/s − 1; rows of shift: W' = W/s, b' = b/s;
               // gate rows unchanged                                     (<norm>.dense.weight, .bias)
};

struct SmoothGroup {
  std::string key;                     // the input's producer, e.g. "<block>.input_layernorm"; a
                                       // layer alone in its group has its own name as key
  std::vector<std::string> layers;     // every linear of the checkpoint that reads this input, in
                                       // checkpoint order, selected or not
  std::optional<NormKind> norm;        // set when 1/s can be folded (the norm's tensors exist and fit)
  std::string norm_weight, norm_bias;  // tensor names; norm_bias empty when the kind has none (or, for
                                       // layer_norm, when the checkpoint stores no bias)
};

// The groups of the selected layers, in the order of their first selected member: q/k/v of one
// attention block (`….self_attn.{q,k,v}_proj`, norm `….input_layernorm` — Gemma RMSNorm, or
// adaptive when `….input_layernorm.dense` exists; SigLIP `….layer_norm1`), gate/up of one MLP
// (`….mlp.{gate,up}_proj`, norm `….post_attention_layernorm`), SigLIP `….mlp.fc1` (norm
// `….layer_norm2`); every other layer alone, without a norm. Members of a group have the same
// in_features (otherwise duquant::Error, format).
//
// In detail (`<block>` is the name before `.self_attn.` / `.mlp.`, and must not be empty):
//  - q/k/v: key `<block>.layer_norm1` when the checkpoint has `<block>.layer_norm1.weight` or
//    `.bias` (SigLIP), else `<block>.input_layernorm`. gate/up: key `<block>.post_attention_layernorm`,
//    or `<block>.pre_feedforward_layernorm` when the block has one (Gemma 2/3 layout, where
//    post_attention_layernorm normalises the attention output). fc1: key `<block>.layer_norm2`.
//  - The norm kind from the tensors under the key, each F32/F16/BF16 (I = the members' in_features):
//    gemma_rms: `<key>.weight` [I]; ada_rms: `<key>.dense.weight` [3I, C] and `<key>.dense.bias`
//    [3I]; layer_norm (layer_norm1/2 keys): `<key>.weight` [I] and, if present, `<key>.bias` [I].
//    Missing, misshapen or non-float tensors, or both `<key>.weight` and `<key>.dense.*`: no norm
//    (the group still exists; the runtime can still divide its input by s).
//  - Members: every sibling linear (q/k/v, gate/up, fc1) present in `linears`, in `linears` order.
//  - A layer selected twice, or two selected members of one group, yield the group once.
std::vector<SmoothGroup> smoothing_groups(const formats::Checkpoint& ckpt, const std::vector<LinearLayer>& linears,
                                          const std::vector<SelectedLayer>& selected);

// s_j = max(act_absmax_j^α / max(weight_absmax_j, 1e-5)^(1−α), 1e-5), in double, rounded to float32.
// weight_absmax_j is max |W[r, j]| over every member of the group. Sizes must match (Error,
// internal); α must lie in [0, 1] (usage); NaN, infinite or negative maxima are Error, numeric.
std::vector<float> smoothing_scales(std::span<const float> act_absmax, std::span<const float> weight_absmax,
                                    double alpha);

// W·diag(s) ([rows, cols] row-major float32), each product rounded to `dtype` (F32, F16 or BF16)
// and returned as float32: the weight the pack quantizes and --fold-smoothing writes. Sizes must
// match and the dtype be one of the three (otherwise Error, internal).
std::vector<float> smoothed_weight(std::span<const float> w, std::int64_t rows, std::int64_t cols,
                                   std::span<const float> s, formats::DType dtype);

}  // namespace duquant

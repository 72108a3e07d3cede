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
std::vector<float> smoothing_scales(std::span<const float> act_absmax, std::span<const float> weight_absmax, double alpha);

// W·diag(s) ([rows, cols] row-major float32), each product rounded to `dtype` (F32, F16 or BF16)
// and returned as float32: the weight the pack quantizes and --fold-smoothing writes. Sizes must
// match and the dtype be one of the three (otherwise Error, internal).
std::vector<float> smoothed_weight(std::span<const float> w, std::int64_t rows, std::int64_t cols,
                                   std::span<const float> s, formats::DType dtype);

// Writes a copy of the checkpoint (one safetensors file, atomically) where, for every group with
// a norm and an entry in `scales` (key -> s), the norm's tensors are divided by s as NormKind says
// and every member's weight is smoothed_weight(W, s). Every other tensor is copied byte for byte,
// with its name, dtype and shape; the metadata is kept. Groups without a norm must not appear in
// `scales` (duquant::Error, internal).
//
// Details: tensors are written in the input's order (Checkpoint::tensors(): shards by file name,
// then data offset); for a sharded input the metadata is the union of the shards' (the first
// shard wins a key that differs). New values are computed in float32 from the float32 value and
// rounded to the tensor's own dtype; the gate rows of an ada_rms dense keep their bytes. Memory
// stays bounded (tensors are copied from the mapping and released one by one, modified ones are
// recomputed in chunks of rows). Errors (duquant::Error; no file is left under `out`): `out`
// naming an input file or the checkpoint's index (usage); a key of `scales` that is no group, a
// group without a norm, a scale count other than the members' in_features, groups that do not
// match the checkpoint (internal); a scale that is not positive and finite (numeric); a member
// weight that is not F32/F16/BF16 (format) -- all before the output is created; and a finite
// value that would overflow its dtype once folded, e.g. an F16 norm weight divided by a tiny s
// (numeric, found while writing; the partial output is removed).
// `member_weight_digests`, when given, receives the XXH3-128 of every smoothed member weight as
// written (stored name -> hex): what `verify` recognises the folded checkpoint by.
void write_folded_checkpoint(const formats::Checkpoint& ckpt, const std::vector<SmoothGroup>& groups,
                             const std::map<std::string, std::vector<float>>& scales, const std::filesystem::path& out,
                             std::map<std::string, std::string>* member_weight_digests = nullptr);

}  // namespace duquant

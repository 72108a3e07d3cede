// Names and encodings of the pack directory (docs/pack-format.md):
//   <module>.npz                 one per layer, the runtime's own format (reference sections 1-2)
//   quantized.safetensors        codes, scales, perm and rotations of every layer (or shards
//                                quantized-0000i-of-0000n.safetensors + quantized.safetensors.index.json)
//   manifest.json                configuration, checkpoint identity, files, checksums, quality
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "config/quant_config.hpp"

namespace duquant {

inline constexpr std::string_view kManifestName = "manifest.json";
inline constexpr std::string_view kQuantizedName = "quantized.safetensors";
inline constexpr std::string_view kQuantizedIndexName = "quantized.safetensors.index.json";
inline constexpr std::string_view kWorkDirName = ".duquant-work";
inline constexpr std::string_view kPackFormatName = "duquant-pack";
inline constexpr int kPackFormatVersion = 1;

// The runtime's file name for a layer: characters outside [A-Za-z0-9_.-] become '_', then every
// ".." becomes "." (one left-to-right pass, as Python's str.replace), then ".npz" is appended.
std::string pack_file_name(std::string_view module);

// Two layers whose names pack_file_name() maps to one file ("a/b.q_proj" and "a_b.q_proj", or
// "m..q_proj" and "m.q_proj"): the runtime could load only one of them from a pack.
struct PackFileCollision {
  std::string first, second;  // in the order given
  std::string file;
};
// Every later layer whose file name an earlier one already has, paired with that earlier one.
std::vector<PackFileCollision> pack_file_collisions(const std::vector<std::string>& layers);
// "layers 'a/b.q_proj' and 'a_b.q_proj' both map to the npz file 'a_b.q_proj.npz'"
std::string describe(const PackFileCollision& c);
// Throws duquant::Error (format, exit 3) naming the first collision, both layers and the file;
// `what` names the input ("model.safetensors").
void check_pack_file_names(const std::vector<std::string>& layers, const std::string& what);

// The `meta` member's JSON text, exactly as the runtime writes it (json.dumps of its dict).
std::string pack_meta_json(std::uint64_t in_features, std::uint64_t out_features, const QuantConfig& q);

// Python's repr of a float (shortest round-trip digits, always with a '.' or an exponent).
std::string python_float_repr(double v);

// Shard file name i (1-based) of n: "quantized-00001-of-00003.safetensors".
std::string quantized_shard_name(int i, int n);

}  // namespace duquant

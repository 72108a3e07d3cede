// The checks behind `duquant verify`, one function per group (internal to src/).
#pragma once

#include <fmt/format.h>

#include <optional>
#include <string>
#include <vector>

#include "duquant/verify.hpp"
#include "math/duquant_math.hpp"
#include "packfmt/manifest.hpp"
#include "packfmt/pack_reader.hpp"

namespace duquant::verify_detail {

// Adds findings to one layer's verdict.
struct Sink {
  LayerVerdict& v;
  template <typename... Args>
  void add(Level level, const char* reason, fmt::format_string<Args...> f, Args&&... args) {
    v.findings.push_back({level, reason, fmt::format(f, std::forward<Args>(args)...)});
  }
  bool failed(const char* reason) const;
};

// What the layer should look like, from the manifest and the checkpoint when present.
struct Expectation {
  const ManifestLayer* entry = nullptr;  // our manifest's entry
  const Manifest* manifest = nullptr;
  std::optional<std::uint64_t> out_features, in_features;  // from the checkpoint's weight
};

// Members, meta, shapes, perm, rotation blocks and orthogonality, weight_scale. Returns true when
// perm and the rotations are usable for the math checks that follow.
bool check_npz_structure(const NpzLayer& npz, const Expectation& e, Sink& sink);

// quantized.safetensors against itself and the npz: code range, scales, same perm and rotations,
// conformance vectors recomputed from the stored tensors.
void check_quantized(const QuantizedLayerTensors& q, const NpzLayer& npz, RowRot row_rot, int abits, Sink& sink);

// Against the checkpoint's weight `w` (float32) and bias: digest, perm and rotations fitting the
// weight, exact transform, quality, test_y_fp.
struct CheckpointFacts {
  WeightView w;     // the weight the pack was computed from: W·diag(smooth_scale) for smoothed layers
  WeightView w_fp;  // the checkpoint's weight, for test_y_fp
  std::vector<float> bias;
  std::string weight_digest;
  bool folded = false;  // the --fold-smoothing checkpoint of a smoothed layer: w is its weight as stored
};
void check_against_checkpoint(const NpzLayer& npz, const QuantizedLayerTensors* q, const Expectation& e,
                              const CheckpointFacts& ck, int wbits, Sink& sink);

// Against the same layer of a reference pack.
void check_against_reference(const NpzLayer& ours, const QuantizedLayerTensors* q, const NpzLayer& ref,
                             const CheckpointFacts* ck, int wbits, Sink& sink);

// Positions where two permutations differ, and whether every difference is between channels of
// (nearly) equal energy.
struct PermComparison {
  std::size_t differing = 0;
  bool ties_only = true;
  std::size_t first = 0;  // first differing position
};
PermComparison compare_permutations(const std::vector<std::int64_t>& a, const std::vector<std::int64_t>& b,
                                    const std::vector<float>* energy);

}  // namespace duquant::verify_detail

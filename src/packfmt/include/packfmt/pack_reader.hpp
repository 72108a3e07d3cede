// Reading a pack directory back: ours (manifest.json, quantized.safetensors, one npz per layer) or
// one the Python runtime wrote (npz files only).
//
// Decoding is strict (our own npz/npy reader: only simple little-endian dtypes, exact sizes) and
// throws duquant::Error naming the file and member; semantic checks (is perm a permutation, are
// the rotations orthogonal, ...) are left to verify, which reports every problem it finds.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "formats/safetensors_checkpoint.hpp"
#include "math/duquant_math.hpp"

namespace duquant {

// The `meta` member: the six keys the runtime writes.
struct PackMeta {
  std::uint64_t in_features = 0;
  std::uint64_t out_features = 0;
  std::int64_t block_size = 0;
  std::int64_t block_out_size = 0;
  bool enable_permute = false;
  double lambda_smooth = 0;
};

// Parses the meta JSON text: exactly the six keys, with the types the runtime writes
// (integers >= 1 for sizes, a bool, a number). Throws duquant::Error (format) naming `label`.
PackMeta parse_pack_meta(std::string_view text, const std::string& label);

// One layer's npz, decoded. Arrays are kept as read (shapes unchecked beyond what decoding needs).
struct NpzLayer {
  std::string file;                  // file name inside the pack directory
  std::vector<std::string> members;  // keys in archive order
  std::string meta_text;
  PackMeta meta;
  std::vector<std::uint64_t> weight_scale_shape;
  std::vector<float> weight_scale;
  bool has_perm = false;
  std::vector<std::int64_t> perm;
  std::vector<std::int64_t> r_in_blocks, r_out_blocks;
  std::vector<std::pair<std::int64_t, MatrixF>> r_in, r_out;  // (block index, matrix) as found: Rin_<b>
  // Calibration members (docs/calibration.md), empty when absent; shapes as found.
  std::vector<float> act_scale, smooth_scale;
  std::vector<std::uint64_t> act_scale_shape, smooth_scale_shape;
};

// Reads `path` (an .npz). Throws duquant::Error (format/io) naming the file and member.
NpzLayer read_npz_layer(const std::filesystem::path& path);
// The same from the file's bytes, read already (`path` names it in messages).
NpzLayer read_npz_layer(std::vector<std::byte> bytes, const std::filesystem::path& path);

// One layer's tensors in quantized.safetensors, decoded (absent optional tensors stay empty).
struct QuantizedLayerTensors {
  int bits = 0;  // 4 for packed nibbles (U8), else from the manifest
  std::uint64_t out_features = 0, in_features = 0;
  std::vector<std::int8_t> codes;                  // [O * I] signed codes, row-major
  std::vector<float> scales;                       // [O]
  std::vector<std::int64_t> perm;                  // [I] or empty
  std::vector<MatrixF> r_in, r_out;                // per block, cut to the block's width (padding dropped)
  std::vector<float> bias;                         // [O] as float32, or empty
  std::vector<float> test_x, test_y_fp, test_y_q;  // conformance vectors, or empty
  std::vector<float> act_scale, smooth_scale;      // [I] (calibrated / smoothed packs), or empty
  std::uint64_t test_rows = 0;
};

class PackDirectory {
 public:
  // Opens a directory. Throws duquant::Error (io) if it is not a readable directory and
  // (format) if manifest.json exists but is not valid strict JSON — unless `tolerate_bad_manifest`,
  // when the reason is kept in manifest_error() and manifest() is null (verify reports it).
  static PackDirectory open(const std::filesystem::path& dir, bool tolerate_bad_manifest = false);
  const std::string& manifest_error() const noexcept { return manifest_error_; }

  const std::filesystem::path& path() const noexcept { return dir_; }
  // manifest.json (null when the directory has none: a pack the Python runtime wrote).
  const nlohmann::json* manifest() const noexcept { return manifest_ ? &*manifest_ : nullptr; }
  // *.npz file names in the directory, sorted.
  const std::vector<std::string>& npz_files() const noexcept { return npz_files_; }
  // The module name a file name stands for (file name without ".npz"; exact for pi0.5/GR00T
  // names, which only use [A-Za-z0-9_.]).
  static std::string layer_name_of(const std::string& npz_file);
  // The manifest's entry for `layer`, or null.
  const nlohmann::json* manifest_layer(const std::string& layer) const;

  // quantized.safetensors (single file or shards + index), or nullopt when the directory has none.
  // Opened on first use. Throws duquant::Error (format/io) for a broken file.
  const formats::Checkpoint* quantized() const;
  // Decodes `layer`'s tensors from quantized.safetensors (nullopt when it holds none for it).
  // `bits` comes from the manifest entry: 2-4 bit codes are U8 nibbles, 5-8 bit codes I8; a
  // qweight of the other dtype is a format error.
  std::optional<QuantizedLayerTensors> quantized_layer(const std::string& layer, int bits) const;

  // Where `layer`'s tensors sit in quantized.safetensors: the file, their byte count and the
  // XXH3-128 of their bytes in storage order (as the manifest records them), and whether they are
  // back to back in one file. nullopt when the file holds no tensor of the layer.
  struct LayerBytes {
    std::string file;
    std::uint64_t bytes = 0;
    std::string xxh128;
    bool contiguous = true;
    std::vector<std::string> tensors;  // names in storage order
  };
  std::optional<LayerBytes> quantized_layer_bytes(const std::string& layer) const;
  // Drops the pages of `layer`'s tensors from resident memory (they stay readable).
  void release_quantized_layer(const std::string& layer) const;

 private:
  std::filesystem::path dir_;
  std::optional<nlohmann::json> manifest_;
  std::string manifest_error_;
  std::vector<std::string> npz_files_;
  mutable std::optional<formats::Checkpoint> quantized_;
  mutable bool quantized_probed_ = false;
  // Indexes built on first use: verify asks per layer, and a scan per question was O(n^2) over a
  // pack of 100,000 layers. Positions, not pointers, so that a moved PackDirectory stays valid.
  mutable std::optional<std::unordered_map<std::string, std::size_t>>
      manifest_index_;  // name -> first entry in "layers"
  mutable std::optional<std::unordered_map<std::string, std::vector<std::size_t>>> tensors_by_layer_;  // in tensors()
  std::vector<const formats::TensorRef*> layer_tensors(const formats::Checkpoint& q, const std::string& layer) const;
};

// The weight the pack reproduces, brought back to the checkpoint's basis ([O, I] row-major):
// W_hat = unpermute( Rin_bᵀ-blocks applied on the right of (Rout_bᵀ · (codes × scales)) ).
MatrixF dequantized_original_basis(const QuantizedLayerTensors& t);

// For packs without quantized.safetensors (the Python runtime's): the runtime's own quantization
// of the checkpoint weight `w` under the npz's perm and rotations, at `wbits`, in the checkpoint's
// basis. Rotations are used as stored (the runtime does not re-orthogonalise them).
MatrixF runtime_quantized_original_basis(const WeightView& w, const NpzLayer& npz, int wbits);

}  // namespace duquant

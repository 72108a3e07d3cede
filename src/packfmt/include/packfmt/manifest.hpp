// Reading manifest.json back (the file `duquant pack` writes last; docs/pack-format.md).
//
// The manifest is untrusted input: every field is type-checked and a violation is a
// duquant::Error (format) naming the field, e.g. "manifest.json: layers[3].shape: expected an
// array of 2 integers >= 1, found \"x\"".
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "config/quant_config.hpp"
#include "select/checkpoint_names.hpp"

namespace duquant {

struct ManifestFile {
  std::string name;
  std::uint64_t size = 0;
  std::string xxh128;
};

struct ManifestLayer {
  std::string name;
  std::uint64_t out_features = 0, in_features = 0;
  std::string dtype;
  int wbits = 0, abits = 0;
  std::int64_t block = 0, block_out = 0;
  bool bias = false;
  std::string weight_xxh128;
  ManifestFile npz;             // name, size, xxh128 of the layer's npz
  std::string quantized_shard;  // file holding the layer's tensors
  std::uint64_t quantized_bytes = 0;
  std::string quantized_xxh128;                            // digest of the layer's tensor bytes, back to back
  std::optional<double> duquant_rel_error, rtn_rel_error;  // null in the file: no figure
  std::optional<double> duquant_sqnr_db, rtn_sqnr_db;
  std::uint64_t conformance_rows = 0;           // rows of test_x / test_y_*
  std::optional<double> conformance_rel_error;  // ‖test_y_q − test_y_fp‖ / ‖test_y_fp‖
  bool calibrated = false;                      // "calibration" is an object: act_scale expected
  std::uint64_t calib_steps = 0;
  std::optional<double> output_rel_error;  // on held-out calls, null when not measured
  bool smoothed = false;                   // "smoothing" is an object: smooth_scale expected
  bool folded = false;                     // smoothing.folded: made with --fold-smoothing
  std::string folded_weight_xxh128;        // the weight's digest in the folded checkpoint (empty: unknown)
};

// What `duquant import` recorded: the runtime's folder the transforms came from, and the selected
// layers it left out (--skip-stale): name and why.
struct ManifestImport {
  std::string source;
  std::vector<std::pair<std::string, std::string>> skipped;
};

struct Manifest {
  int format_version = 0;
  std::string tool_name;  // empty when the manifest does not name the tool
  std::string tool_version;
  std::string algorithm = "duquant-cpu";  // what computed the stored values (layout.hpp)
  int algorithm_version = 1;
  RunConfig config;
  std::string checkpoint_source;
  struct CheckpointFile {
    std::string name;
    std::uint64_t size = 0, header_bytes = 0;
  };
  std::vector<CheckpointFile> checkpoint_files;
  std::optional<NameMapping> names;  // checkpoint.names: absent in manifests older than the naming contract
  std::vector<ManifestFile> files;
  std::vector<ManifestLayer> layers;
  std::optional<ManifestImport> imported;  // absent: not an imported pack
};

// Reads `path` as strict JSON (at most kMaxManifestBytes, nesting at most kMaxManifestDepth,
// layout.hpp) that must be an object. Throws duquant::Error (io, format) naming the file.
nlohmann::json read_manifest_json(const std::filesystem::path& path);

// Validates and converts a parsed manifest: types, and values within what `duquant pack` accepts
// (layout.hpp's limits: bits 2-8 for weights and 2-16 for activations, blocks 1-4096,
// 0 < act_pct <= 100, ...). `label` names the file in messages.
Manifest parse_manifest(const nlohmann::json& j, const std::string& label);

}  // namespace duquant

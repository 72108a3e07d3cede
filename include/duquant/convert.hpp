// The converter half of duquant (docs/cli.md, "import" and "bake"):
//   run_import  a pack folder the Python runtime wrote (npz files only) -> a complete duquant pack;
//   run_bake    a duquant pack + its checkpoint -> a checkpoint whose packed weights are their
//               dequantized W4 equivalent in the original basis, runnable by any stack.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "duquant/pack.hpp"

namespace duquant {

// ---- import -------------------------------------------------------------------------------------

struct ImportOptions {
  std::filesystem::path source;  // the runtime's pack folder (npz files, no manifest)
  // checkpoint, output, config (selection and quantization: the environment the runtime ran with),
  // no_lock, config_file and the callbacks, as for `pack`; calibration, --resume and --fold-smoothing
  // do not apply (the runtime's npz files are copied as they are).
  PackOptions pack;
  bool skip_stale = false;  // leave out (and list) layers that do not fit the checkpoint, instead of refusing
};

struct ImportSummary {
  PackSummary pack;
  std::size_t source_npz = 0;  // npz files in the source folder
  // Layers left out with --skip-stale: name and why (the first failed check).
  std::vector<std::pair<std::string, std::string>> skipped;
  std::vector<std::string> ignored;  // npz files of layers the selection does not pick
};

// Checks every selected layer's npz against the checkpoint (verify's rules: structure, meta against
// the configuration, perm and rotations fitting the weight, an exact transform), then packs the
// selected layers with the runtime's own perm and rotations: codes and scales as the runtime computes
// them, the npz files copied byte for byte, quantized.safetensors, conformance vectors and a manifest
// whose "import" object records the source. Throws duquant::Error naming the layer for a stale,
// missing or mismatched input (unless skip_stale), before anything is written; on any failure the
// output folder is left as it was found.
ImportSummary run_import(const ImportOptions& options,
                         const std::function<void(const PackProgress&)>& progress = {});

// ---- bake ---------------------------------------------------------------------------------------

enum class BakeDType { same, f32, bf16, f16 };

struct BakeOptions {
  std::filesystem::path pack;        // a duquant pack (manifest.json + quantized.safetensors)
  std::filesystem::path checkpoint;  // the FP checkpoint it was made from (a smoothed pack: its folded one)
  std::filesystem::path output;      // a .safetensors file for a single-file checkpoint, else a folder
  BakeDType dtype = BakeDType::same;
  bool force = false;  // replace an existing output
  std::function<void(const std::string&)> warn;
};

struct BakedLayer {
  std::string name;
  std::string dtype;            // as written
  double rounding_rel = 0;      // ‖W_stored − W_baked‖ / ‖W_baked‖: what the output dtype adds (0 for f32)
  double quantization_rel = 0;  // ‖W_baked − W‖ / ‖W‖ against the checkpoint's weight
};

struct BakeSummary {
  std::vector<BakedLayer> layers;  // in the pack's order
  std::size_t copied_tensors = 0;  // tensors copied byte for byte
  std::size_t files = 0;           // safetensors files written (shards)
  std::size_t other_files = 0;     // non-weight files of a model folder copied (config.json, ...)
  std::uint64_t bytes = 0;
};

BakeSummary run_bake(const BakeOptions& options);

}  // namespace duquant
